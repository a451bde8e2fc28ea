"""The runner's request loop: read a request, run the handler, send the reply (see :mod:`grading.runner`)."""
from __future__ import annotations

import contextlib
import io
import os
import sys
import traceback

import torch

from grading.channel import ChannelError, Reader, encode, write

from . import load, sgd

OUTPUT_LIMIT = 8000


class BoundedOutput(io.TextIOBase):
    """What the student's code prints during a request: the first and last characters only, so that
    printing gigabytes costs no memory."""

    def __init__(self, keep: int = OUTPUT_LIMIT // 2):
        self.keep, self.head, self.tail, self.cut = keep, [], "", 0
        self.head_size = 0

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        text = str(text)
        room = self.keep - self.head_size
        if room > 0:
            self.head.append(text[:room])
            self.head_size += len(text[:room])
            text = text[room:]
        if text:
            joined = self.tail + text
            self.cut += max(0, len(joined) - self.keep)
            self.tail = joined[-self.keep:]
        return len(text)

    def getvalue(self) -> str:
        middle = f"\n[... {self.cut} characters cut ...]\n" if self.cut else ""
        return "".join(self.head) + middle + self.tail


def _short(text: str) -> str:
    return text if len(text) <= OUTPUT_LIMIT else text[:OUTPUT_LIMIT // 2] + "\n[... cut ...]\n" + text[-OUTPUT_LIMIT // 2:]


def _where(exc: BaseException) -> str:
    """The innermost frame of the student's notebook in the traceback, as `in f (cell definitions)`."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith("<") and "definitions" in frame.filename:
            return f" (in {frame.name}, line {frame.lineno} of {frame.filename.strip('<>')})"
    return ""


def handle(state: dict, header: dict, tensors: dict):
    op = header.get("op")
    if op == "load":
        return load.load(state, header), {}
    module = state.get("modules", {}).get(header.get("notebook"))
    if module is None:
        return {"status": "error", "error": f"{header.get('notebook')} was not loaded"}, {}
    if op == "probe_models":
        return sgd.probe_models(module, [tensors[f"w{i}"] for i in range(6)], tensors["x"])
    if op == "train":
        return sgd.run_training(module, header, tensors)
    if op == "backprop":
        from . import backprop
        return backprop.run(module, header, tensors)
    return {"status": "error", "error": f"unknown request {op!r}"}, {}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    requests, replies = int(argv[0]), int(argv[1])
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    sys.path.append(os.getcwd())  # the student's own helper modules, after ours (python -P)
    reader, state = Reader(requests), {}
    while True:
        try:
            header, tensors = reader.receive()
        except ChannelError:
            return 0
        if header.get("op") == "exit":
            return 0
        out = BoundedOutput()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                reply, reply_tensors = handle(state, header, tensors)
            reply.setdefault("status", "ok")
        except BaseException as exc:  # noqa: BLE001 - student code may raise anything, SystemExit too
            reply_tensors = {}
            kind = "exit" if isinstance(exc, SystemExit) else "error"
            reply = {"status": kind, "error": f"{type(exc).__name__}: {str(exc)[:1000]}{_where(exc)}",
                     "error_type": type(exc).__name__,
                     "traceback": _short("".join(traceback.format_exception(exc)))}
        reply["id"] = header.get("id")
        reply["output"] = _short(out.getvalue())
        _reply(replies, reply, reply_tensors)


def _reply(fd: int, reply: dict, tensors: dict) -> None:
    """Send the reply; one that cannot be encoded (what the student's code returned) becomes an error
    reply for this request, never a dead runner."""
    try:
        message = encode(reply, tensors)
    except BaseException as exc:  # noqa: BLE001 - objects built by student code
        message = encode({"status": "error", "id": reply.get("id"), "output": reply.get("output", ""),
                          "error": f"the reply could not be encoded ({type(exc).__name__}: {str(exc)[:300]})",
                          "error_type": "ReplyError"})
    write(fd, message)


if __name__ == "__main__":
    sys.exit(main())
