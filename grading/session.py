"""The trusted side of the channel: one sandboxed runner, asked for data, its replies checked.

:class:`Runner` starts ``python -m grading.runner`` in a :class:`~grading.sandbox.Workspace`,
sends requests and returns replies whose id matches a fresh random id of the request, read
within a CPU-time limit (and a wall-clock backstop). Anything else ends the runner and raises
:class:`RunnerFailure` with a status (``error``, ``timeout``) and a message for the report; the
caller starts a fresh runner for the checks after it.
"""
from __future__ import annotations

import math
import os
import secrets
import sys
import time

import torch

from . import sandbox
from .channel import ChannelError, Reader, send


class RunnerFailure(RuntimeError):
    """``halts``: why the function's later checks are not run (it would do the same again: loop
    forever, flood, fork, write into the channel, end the process); ``None`` when they still run."""

    def __init__(self, status: str, message: str, details: dict | None = None, halts: str | None = None):
        super().__init__(message)
        self.status, self.message, self.details, self.halts = status, message, details or {}, halts


class Runner:
    """A runner process in ``ws``; ``with Runner(...) as r: r.request("load", {...})``."""

    def __init__(self, ws: sandbox.Workspace, limits: sandbox.Limits):
        self.ws, self.limits, self.proc, self.dead = ws, limits, None, None

    def __enter__(self) -> "Runner":
        req_r, self.req_w = os.pipe()
        self.rep_r, rep_w = os.pipe()
        command = [sys.executable, "-P", "-m", "grading.runner", str(req_r), str(rep_w)]
        self.proc = sandbox.Process(self.ws, command, self.limits, pass_fds=(req_r, rep_w))
        os.close(req_r)
        os.close(rep_w)
        self.reader = Reader(self.rep_r)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> sandbox.Outcome | None:
        if self.proc is None:
            return None
        for fd in (self.req_w, self.rep_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.proc.kill()
        outcome, self.proc = self.proc.finish(5), None
        self.outcome = outcome
        return outcome

    def output(self) -> str:
        """What the runner printed outside the requests (C-level output, crashes), for the report."""
        outcome = getattr(self, "outcome", None)
        return (outcome.stdout + outcome.stderr).strip() if outcome else ""

    def request(self, op: str, header: dict, tensors: dict | None = None, cpu_seconds: float = 60.0,
                what: str = "") -> tuple[dict, dict]:
        """Send one request; the validated reply ``(header, tensors)``, or RunnerFailure."""
        if self.dead:
            raise RunnerFailure("skipped", f"not run: {self.dead}")
        rid = secrets.token_hex(16)
        start_cpu, start = self.proc.cpu_seconds(), time.monotonic()
        wall = max(3 * cpu_seconds, cpu_seconds + 30)
        state = {"cpu": False}

        def alive() -> bool:
            if self.proc.cpu_seconds() - start_cpu > cpu_seconds:
                state["cpu"] = True
                return False
            return self.proc.alive()

        try:
            send(self.req_w, {"op": op, "id": rid, **header}, tensors)
            reply, reply_tensors = self.reader.receive(deadline=start + wall, alive=alive)
        except (ChannelError, TimeoutError, OSError) as exc:
            raise self._failed(exc, state["cpu"], cpu_seconds, what) from None
        if reply.get("id") != rid:
            self._end("the channel is out of step")
            raise RunnerFailure("error", "malformed reply: it answers another request (something else was "
                                         "written to the channel)")
        return reply, reply_tensors

    def _end(self, why: str) -> None:
        self.dead = why
        self.close()

    def _failed(self, exc: Exception, over_cpu: bool, cpu_seconds: float, what: str) -> RunnerFailure:
        proc = self.proc
        limit_message = proc.limit_message if proc is not None else ""
        outcome = self.close()
        where = f" in {what}" if what else ""
        if over_cpu or isinstance(exc, TimeoutError):
            self.dead = f"{what or 'the student code'} exceeded the time limit in an earlier check"
            return RunnerFailure("timeout", f"stopped after the time limit of {cpu_seconds:g} s of CPU time"
                                            f"{where} (an infinite loop, or far too slow)",
                                 halts="exceeded the time limit")
        if outcome is not None and outcome.limit:
            self.dead = f"the runner was stopped: {outcome.limit_message}"
            status = "error"
            # memory depends on the net's size, so a smaller net's check still runs; the other limits do not
            halts = None if outcome.limit == "memory" else f"was stopped at a limit ({outcome.limit_message})"
            return RunnerFailure(status, f"stopped: {outcome.limit_message}{where}",
                                 {"output": (outcome.stdout + outcome.stderr)[-2000:]}, halts=halts)
        text = (outcome.stdout + outcome.stderr) if outcome else ""
        self.dead = "the runner ended in an earlier check"
        if sandbox.is_memory_error(text):
            return RunnerFailure("error", f"stopped: {sandbox.memory_message(self.limits)}{where}")
        if isinstance(exc, ChannelError) and "malformed" in str(exc):
            return RunnerFailure("error", f"{exc}{where}", halts="wrote into the grader's channel")
        code = outcome.returncode if outcome else None
        return RunnerFailure("error", f"the runner process ended during this check{where} (exit status {code}): "
                                      f"the student's code exited the process (os._exit) or crashed Python"
                             + (f"; {limit_message}" if limit_message else ""),
                             {"output": text[-2000:]} if text.strip() else {}, halts="ended the process")


# --------------------------------------------------------------------------------------------
# validating what the runner returned
# --------------------------------------------------------------------------------------------
class BadReply(ValueError):
    """A reply that does not have the shape the request asked for; the message says what is wrong."""


def tensor(tensors: dict, name: str, shape: tuple[int, ...], what: str, dtypes=(torch.float64,),
           finite: bool = True) -> torch.Tensor:
    """The named tensor of a reply, checked: present, dtype, shape and finite values."""
    if name not in tensors:
        raise BadReply(f"{what}: missing from the reply")
    t = tensors[name]
    if t.dtype not in dtypes:
        raise BadReply(f"{what}: dtype {str(t.dtype).removeprefix('torch.')}, expected "
                       f"{' or '.join(str(d).removeprefix('torch.') for d in dtypes)}")
    if tuple(t.shape) != tuple(shape):
        raise BadReply(f"{what}: shape {tuple(t.shape)}, expected {tuple(shape)}")
    if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise BadReply(f"{what}: contains NaN or infinity")
    return t


def text(value, limit: int = 4000) -> str:
    """A string from a reply, shortened; anything else becomes its repr."""
    s = value if isinstance(value, str) else repr(value)
    return s if len(s) <= limit else s[: limit // 2] + " [...] " + s[-limit // 2:]


def number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadReply(f"{what}: not a finite number ({value!r})")
    return float(value)
