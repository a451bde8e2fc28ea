"""Re-executing a student's notebook top to bottom: the kernel sandboxed, the verdict decided here.

The grader drives the kernel with nbclient (:func:`inf265.execute.run`, the executor ``make run``
uses), from its own process; only the kernel runs in the sandbox. It talks to it over IPC
sockets in the workspace's private folder (the sandbox has no network), so what the notebook
does cannot reach the grader's process, and the verdict (which cell failed, and why) is taken
from the kernel's replies by the grader. Outputs beyond the output limit end the run.
"""
from __future__ import annotations

import os
import re
import socket
import stat
import sys
import time
from pathlib import Path

import nbformat
import zmq
from jupyter_client import AsyncKernelManager
from jupyter_client.asynchronous import AsyncKernelClient

from inf265 import ROOT
from inf265.execute import SOURCE_LINES, Failure, code_cell_number, run

from . import sandbox


KEEP_OUTPUT = 256 * 1024  # bytes of outputs per cell kept in the executed notebook of the report


class _Checked:
    """Connects only to a socket the kernel made, never through a link, and never again.

    The kernel's sockets are made in a folder the sandbox can write: before each connection the
    grader waits for the path to be a socket itself (``lstat``: not a symbolic link the sandbox
    planted to a host socket), and ZeroMQ's reconnection is off, so that a socket the kernel
    replaces later is never connected to.
    """

    def _create_connected_socket(self, channel, identity=None):
        url = self._make_url(channel)
        if url.startswith("ipc://"):
            _wait_for_socket(url[len("ipc://"):], time.monotonic() + 120)
        self.context.setsockopt(zmq.RECONNECT_IVL, -1)
        return super()._create_connected_socket(channel, identity)


def _wait_for_socket(path: str, deadline: float) -> None:
    """Return once ``path`` is a socket (not a link) that accepts connections.

    A socket file exists from the kernel's ``bind``, a moment before its ``listen``: a connection in
    between is refused, and with reconnection off ZeroMQ would never try again (the kernel then
    never answers). So the socket is first tried with a plain connection, closed at once."""
    while True:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise RuntimeError(f"the kernel's socket {os.path.basename(path)} was replaced by something else "
                                   f"(a link or a file): not connected")
            if _listening(path):
                return
        if time.monotonic() > deadline:
            raise RuntimeError("the kernel did not open its sockets in time")
        time.sleep(0.05)


def _listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
        return False
    finally:
        probe.close()


class _Client(_Checked, AsyncKernelClient):
    """A kernel client without the heartbeat channel: whether the kernel lives is asked of its process
    (what nbclient does), and jupyter_client's heartbeat thread can hang forever when stopped after
    the kernel was killed (seen with a flooding notebook)."""

    def start_channels(self, shell=True, iopub=True, stdin=True, hb=True, control=True):
        super().start_channels(shell=shell, iopub=iopub, stdin=stdin, hb=False, control=control)


class SandboxedKernel(_Checked, AsyncKernelManager):
    """An ipykernel started inside ``ws``'s sandbox, reached over IPC sockets in ``ws.ipc``; its
    connection file is in ``ws.connection``, read-only inside."""

    client_factory = _Client

    def configure(self, ws: sandbox.Workspace, limits: sandbox.Limits, log: Path) -> "SandboxedKernel":
        self.ws, self.limits, self.log_path = ws, limits, log
        self.transport, self.ip = "ipc", str(ws.ipc / "kernel")
        self.connection_file = str(ws.connection / "kernel.json")
        return self

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        cmd[0] = sys.executable  # the grader's interpreter: the same venv inside the sandbox
        if self.ws.run_as:  # the student's user reads it (in a folder it cannot write)
            os.chown(self.connection_file, *self.ws.run_as)
        return sandbox.limited(self.ws.argv(cmd, self.ws.env(), binds=(self.ws.ipc,), ro_binds=(self.ws.connection,)),
                               self.limits, self.ws.box, self.ws.run_as)

    async def _async_pre_start_kernel(self, **kw):
        kw["env"] = {**self.ws.env(), "PYTHONPATH": str(ROOT)} if self.ws.isolated else self.ws.env()
        kw["cwd"] = str(self.ws.cwd)
        self._log_handle = open(self.log_path, "wb")
        kw["stdout"] = kw["stderr"] = self._log_handle
        return await super()._async_pre_start_kernel(**kw)


def environment_problem(ename: str, evalue: str) -> str | None:
    """'needs ...' when a cell failed for a reason of this machine, not of the student's code."""
    if ename == "ModuleNotFoundError":
        name = re.search(r"No module named '([^']+)'", evalue)
        return f"needs the Python module {name.group(1) if name else evalue} (not installed here)"
    if ename == "DataError" or "Dataset not found" in evalue or "download" in evalue.lower() and "Errno" in evalue:
        return f"needs data the grader does not have ({evalue.strip().splitlines()[0][:200]})"
    return None


def execute(ws: sandbox.Workspace, name: str, cell_timeout: float, limits: sandbox.Limits, out_path: Path) -> dict:
    """Run ``name`` in the workspace; the notebook check's record. The executed notebook goes to ``out_path``."""
    path = ws.cwd / name
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # noqa: BLE001 - not a notebook at all
        return {"status": "error", "message": f"{name} is not a readable notebook: {type(exc).__name__}: {exc}"}
    code_cells = sum(c.cell_type == "code" for c in nb.cells)
    km = SandboxedKernel(kernel_name="python3").configure(ws, limits, ws.top / f"{name}.kernel.log")
    watch = {}

    def started(client):
        pid = client.km.provisioner.process.pid
        tree = sandbox.Tree(pid, ws.isolated)
        watch["w"] = sandbox.Watch(tree, limits, lambda: sandbox.kill_tree(tree, pid), box=ws.box)

    def output(n_bytes: int, cell_index: int) -> None:
        if "w" in watch and watch["w"].limit is None:
            watch["cell"] = cell_index  # the cell whose outputs cross the limit, if they do
            watch["w"].count_output(n_bytes)

    start = time.monotonic()
    failure = run(nb, timeout=cell_timeout, km=km, on_start=started,
                  on_output=lambda n, cell: output(n, cell),
                  keep_output=KEEP_OUTPUT, startup_timeout=120)
    w = watch.get("w")
    if w is not None:
        w.stop()
    seconds = round(time.monotonic() - start, 2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out_path))
    record = {"code_cells": code_cells, "seconds": seconds}
    if failure is None:
        return record | {"status": "pass", "message": f"all {code_cells} code cells ran without error"}
    if w is not None and w.limit == "output" and watch.get("cell") is not None:  # outputs arrive late: name their cell
        cell = nb.cells[watch["cell"]]
        failure = Failure("dead", code_cell_number(nb, cell), watch["cell"], "\n".join(cell.source.splitlines()[:SOURCE_LINES]))
    return record | _failure_record(failure, code_cells, limits, w)


def _failure_record(failure: Failure, code_cells: int, limits: sandbox.Limits, watch) -> dict:
    where = f"code cell {failure.cell} of {code_cells}: " if failure.cell else ""
    later = f" ({code_cells - failure.cell} later code cell(s) not run)" if failure.cell and \
        code_cells > failure.cell else ""
    record = {"cell": failure.cell, "cell_source": failure.source, "cells_not_run":
              (code_cells - failure.cell) if failure.cell else None}
    if watch is not None and watch.limit:
        return record | {"status": "error", "message": f"{where}stopped: {watch.message}{later}"}
    if failure.kind == "timeout":
        return record | {"status": "timeout",
                         "message": f"{where}exceeded the time limit of {failure.timeout:g} s per cell (stopped){later}"}
    if failure.kind == "dead":
        text = failure.evalue or "the kernel died"
        if sandbox.is_memory_error(text):
            return record | {"status": "error", "message": f"{where}stopped: {sandbox.memory_message(limits)}{later}"}
        return record | {"status": "error", "message": f"{where}the kernel died (sys.exit / os._exit, a crash, or "
                                                        f"a resource limit){later}"}
    if failure.kind == "error":
        first = (failure.evalue.strip().splitlines() or [""])[0][:300]
        record["error"] = f"{failure.ename}: {failure.evalue}"[:4000]
        if sandbox.is_memory_error(f"{failure.ename} {failure.evalue}"):
            return record | {"status": "error", "message": f"{where}{sandbox.memory_message(limits)}{later}"}
        need = environment_problem(failure.ename, failure.evalue)
        if need:
            return record | {"status": "not_gradable", "message": f"not gradable here: {need} ({where.rstrip(': ')})"}
        message = f"{where}{failure.ename}: {first}"
        checks = [line.strip()[2:] for line in failure.evalue.splitlines() if line.strip().startswith("- ")]
        if checks:  # the harness's report: its first failed check, with the likely cause
            message += f" ... {checks[0][:400]}"
        elif "likely cause:" in failure.evalue and "likely cause:" not in first:
            message += " ... likely cause: " + failure.evalue.split("likely cause:", 1)[1].strip().splitlines()[0][:300]
        return record | {"status": "error", "message": message + later}
    return record | {"status": "error", "message": f"could not execute the notebook: {failure.evalue}"}

