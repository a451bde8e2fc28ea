"""The pipe between the trusted grader and the untrusted runner: framed messages, validated on receipt.

A message is ``MAGIC``, an 8-byte big-endian length, a JSON header, then the raw bytes of the
tensors the header lists (``{"name", "dtype", "shape"}``, little-endian, C order). Nothing is
unpickled: the receiver checks the magic, the sizes (at most ``max_bytes`` in all), the dtypes
(a short allow-list) and the shapes before it builds a tensor, and :class:`ChannelError` says what
was wrong. Both sides import this module; the runner's copy is the one under /course.
"""
from __future__ import annotations

import json
import math
import os
import re
import select
import time

import torch

MAGIC = b"INF265-RUNNER-1\n"
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
          "int8": torch.int8, "bool": torch.bool, "uint8": torch.uint8, "complex64": torch.complex64,
          "complex128": torch.complex128}
MAX_BYTES = 256 << 20
MAX_HEADER = 4 << 20
MAX_DEPTH = 32      # nesting of a header's JSON (lists and objects)


class ChannelError(RuntimeError):
    """The other side sent something that is not a valid message (or nothing in time)."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a dense, contiguous CPU tensor of a dtype of :data:`DTYPES`, with its shape: any tensor a
    student's code may produce (0-dim, empty, a view, sparse, a subclass, an unusual dtype) can be sent.
    Values of other dtypes are converted to float64 (complex ones to complex128)."""
    t = t.detach()
    if type(t) is not torch.Tensor:
        t = torch.Tensor._make_subclass(torch.Tensor, t)
    if t.layout is not torch.strided:
        t = t.to_dense()
    t = t.to("cpu")
    if _dtype_name(t.dtype) not in DTYPES:
        t = t.to(torch.complex128 if t.is_complex() else torch.float64)
    return t.contiguous()


def _raw(t: torch.Tensor) -> bytes:
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def encode(header: dict, tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    """One message: ``header`` (JSON-serialisable) and named tensors (sent as raw bytes, see :func:`plain`)."""
    tensors = tensors or {}
    specs, blobs = [], []
    for name, t in tensors.items():
        t = plain(t)
        specs.append({"name": name, "dtype": _dtype_name(t.dtype), "shape": list(t.shape)})
        blobs.append(_raw(t))
    head = json.dumps({**header, "tensors": specs}, allow_nan=True).encode("utf-8")
    return MAGIC + len(head).to_bytes(8, "big") + head + b"".join(blobs)


def send(fd: int, header: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
    write(fd, encode(header, tensors))


def write(fd: int, message: bytes) -> None:
    data = memoryview(message)
    while data:
        n = os.write(fd, data)
        data = data[n:]


class Reader:
    """Reads messages from ``fd``, each within ``deadline()`` (a monotonic time, or None to wait)."""

    def __init__(self, fd: int, max_bytes: int = MAX_BYTES):
        self.fd, self.max_bytes, self.buffer = fd, max_bytes, bytearray()

    def _fill(self, n: int, deadline: float | None, alive=None) -> None:
        while len(self.buffer) < n:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if deadline is not None and wait == 0:
                raise TimeoutError("no reply in time")
            ready, _, _ = select.select([self.fd], [], [], min(wait, 0.2) if wait is not None else 0.2)
            if not ready:
                if alive is not None and not alive():
                    raise ChannelError("the runner ended without replying")
                continue
            chunk = os.read(self.fd, min(1 << 20, n - len(self.buffer)))
            if not chunk:
                raise ChannelError("the runner closed the channel without replying")
            self.buffer += chunk

    def _take(self, n: int, deadline, alive) -> bytes:
        self._fill(n, deadline, alive)
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def receive(self, deadline: float | None = None, alive=None) -> tuple[dict, dict[str, torch.Tensor]]:
        """The next message as ``(header, tensors)``; raises ChannelError if it is malformed."""
        if self._take(len(MAGIC), deadline, alive) != MAGIC:
            raise ChannelError("malformed reply: it does not start with the channel's marker (something "
                               "else was written to the channel)")
        size = int.from_bytes(self._take(8, deadline, alive), "big")
        if size > MAX_HEADER:
            raise ChannelError(f"malformed reply: header of {size} bytes (at most {MAX_HEADER})")
        raw = self._take(size, deadline, alive)
        if _depth(raw) > MAX_DEPTH:
            raise ChannelError(f"malformed reply: header nested more than {MAX_DEPTH} levels deep")
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ChannelError(f"malformed reply: header is not JSON ({str(exc)[:200]})") from None
        if not isinstance(header, dict) or not isinstance(header.get("tensors", []), list):
            raise ChannelError("malformed reply: header is not a JSON object with a list of tensors")
        tensors, total = {}, 0
        for spec in header.pop("tensors", []):
            name, shape, dtype = _valid_spec(spec)
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            total += nbytes
            if total > self.max_bytes:
                raise ChannelError(f"malformed reply: more than {self.max_bytes} bytes of tensors")
            raw = self._take(nbytes, deadline, alive)
            t = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
            tensors[name] = t.view(dtype).reshape(shape).clone() if nbytes else torch.empty(shape, dtype=dtype)
        return header, tensors


#: JSON strings and runs of characters that are neither brackets nor quotes (removed to see the nesting)
_NOT_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[^\[\]{}"]+')


def _depth(raw: bytes) -> int:
    """The deepest nesting of lists and objects in JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    for c in _NOT_STRUCTURE.sub(b"", raw):
        depth += 1 if c in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _valid_spec(spec) -> tuple[str, list[int], torch.dtype]:
    if not isinstance(spec, dict):
        raise ChannelError("malformed reply: a tensor description is not an object")
    name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("dtype")
    if not isinstance(name, str) or len(name) > 200:
        raise ChannelError("malformed reply: a tensor has no valid name")
    if dtype not in DTYPES:
        raise ChannelError(f"malformed reply: tensor {name!r} has dtype {dtype!r}, not one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 31 for n in shape):
        raise ChannelError(f"malformed reply: tensor {name!r} has an invalid shape {shape!r}")
    return name, shape, DTYPES[dtype]


def pack(obj, tensors: dict | None = None, prefix: str = "t") -> tuple[object, dict[str, torch.Tensor]]:
    """``obj`` (dicts, lists, tuples, str, numbers, bools, None, tensors) as JSON data plus named tensors."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}{len(tensors)}"
        tensors[name] = obj
        return {"__tensor__": name}, tensors
    if isinstance(obj, dict):
        return {str(k): pack(v, tensors, prefix)[0] for k, v in obj.items()}, tensors
    if isinstance(obj, (list, tuple)):
        return [pack(v, tensors, prefix)[0] for v in obj], tensors
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj, tensors
    return repr(obj), tensors


def unpack(obj, tensors: dict[str, torch.Tensor], depth: int = 0):
    """The inverse of :func:`pack`, on data that came through the channel (validated by the caller)."""
    if depth > MAX_DEPTH:
        raise ChannelError("malformed reply: data nested too deeply")
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            name = obj["__tensor__"]
            if name not in tensors:
                raise ChannelError(f"malformed reply: it refers to a tensor {name!r} it did not send")
            return tensors[name]
        return {k: unpack(v, tensors, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v, tensors, depth + 1) for v in obj]
    return obj
