"""Execute notebooks top to bottom, in place, atomically: ``python -m inf265.execute NB ...``.

Each notebook runs in a fresh kernel from its own folder. What it saves with
:func:`inf265.results.save_json` / :func:`~inf265.results.save_figure` goes to a private staging
folder (the kernel is told where by the environment variable ``INF265_RESULTS_STAGING``); only
when every cell has run are the staged files moved into ``results/`` and the executed notebook
written back, one right after the other, each file atomically. A failing cell, an interruption
(Ctrl-C / SIGINT, SIGTERM) or a dead kernel leaves the notebook and its results exactly as they
were, removes the staging folder, and says so in one line (the failing cell's case adds the cell
and its error). No timing metadata is recorded, so outputs stay comparable by nbval.

:func:`run` is the executor underneath, shared with the grader: it runs an in-memory notebook in
a kernel and returns ``None`` or a :class:`Failure` (which cell, and why).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

from . import ROOT
from .results import RESULTS, STAGING_ENV, atomic_write_bytes, publish

SOURCE_LINES = 6
"""How many lines of a failing cell's source a :class:`Failure` keeps."""

# nbclient and jupyter_client log what we report ourselves ("Kernel died while waiting ...").
_QUIET = logging.getLogger("inf265.execute.nbclient")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def code_cell_number(nb, cell) -> int | None:
    """The cell's number among the code cells, from 1, as Jupyter users count them (None if absent)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    return code.index(cell) + 1 if cell in code else None


# ----------------------------------------------------------------------------------- the executor
@dataclass(frozen=True)
class Failure:
    """Why a notebook did not run to the end.

    ``kind``: ``"error"`` (a cell raised), ``"timeout"`` (a cell ran longer than ``timeout``
    seconds), ``"dead"`` (the kernel died: killed, crashed, out of memory) or ``"start"`` (the
    kernel could not be started). ``cell`` is the code cell's number from 1 (``None`` when no cell
    was running), ``index`` its index among all cells, ``source`` its first lines.
    """

    kind: str
    cell: int | None = None
    index: int | None = None
    source: str = ""
    ename: str = ""
    evalue: str = ""
    timeout: float | None = None

    def where(self) -> str:
        return f"code cell {self.cell} (cell index {self.index})" if self.cell else "before the first cell"


class _Client(NotebookClient):
    """nbclient's client, telling ``on_output`` the size in bytes of each output it receives (and the
    index of the cell it belongs to), and
    keeping at most ``keep`` bytes of outputs per cell (``None``: all). Past that the outputs are
    dropped, with one note saying so: nbclient appends each chunk of a stream to the previous
    text, so a cell printing without end would otherwise cost quadratic time and unbounded memory."""

    def __init__(self, nb, on_output: Callable[[int, int], None] | None = None, keep: int | None = None, **kw):
        super().__init__(nb, **kw)
        self._on_output, self._keep, self._kept = on_output, keep, {}

    def output(self, outs, msg, display_id, cell_index):
        size = len(json.dumps(msg.get("content", {})).encode("utf-8"))
        if self._on_output is not None:
            self._on_output(size, cell_index)
        if self._keep is not None:
            kept = self._kept.get(cell_index, 0)
            self._kept[cell_index] = kept + size
            if kept + size > self._keep:
                if kept <= self._keep:
                    outs.append(nbformat.v4.new_output(
                        "stream", name="stderr", text=f"[... outputs beyond {self._keep} bytes dropped ...]\n"))
                return None
        return super().output(outs, msg, display_id, cell_index)

    def handle_comm_msg(self, outs, msg, cell_index):
        if self._on_output is not None:  # widget and comm messages count towards the outputs too
            size = len(json.dumps(msg.get("content", {})).encode("utf-8")) + sum(
                len(memoryview(b)) for b in msg.get("buffers") or ())
            self._on_output(size, cell_index)
        try:
            return super().handle_comm_msg(outs, msg, cell_index)
        except (TypeError, ValueError, KeyError, AttributeError):  # a malformed widget message: not a crash of ours
            return None


def run(nb, timeout: float | None = 1800, *, kernel: str = "python3", km=None, cwd: Path | None = None,
        env: dict | None = None, on_start: Callable | None = None, on_output: Callable[[int, int], None] | None = None,
        keep_output: int | None = None, startup_timeout: float = 60) -> Failure | None:
    """Execute the notebook ``nb`` (a NotebookNode, filled in place) in a fresh kernel.

    Stops at the first failing cell. ``km``: a kernel manager to use (default: a new one for
    ``kernel``); ``cwd``/``env``: the kernel's folder and environment; ``on_start(client)`` is
    called once the kernel is ready, ``on_output(n_bytes, cell_index)`` for every output; ``keep_output``: bytes of
    outputs kept per cell (default all). The kernel is shut
    down in every case. Returns ``None`` when every cell ran, else a :class:`Failure`.
    """
    resources = {"metadata": {"path": str(cwd)}} if cwd is not None else {}
    client = _Client(nb, on_output=on_output, keep=keep_output, timeout=timeout, kernel_name=kernel, km=km, log=_QUIET,
                     record_timing=False, shutdown_kernel="immediate", startup_timeout=startup_timeout,
                     # ipykernel 7 warns about local TCP on every start; errors still show.
                     extra_arguments=["--IPKernelApp.log_level=ERROR"], resources=resources)
    current = {}

    def remember(cell, cell_index, **_):
        current["cell"], current["index"] = cell, cell_index

    client.on_cell_execute = remember
    if on_start is not None:
        client.on_notebook_start = lambda **_: on_start(client)
    try:
        client.execute(cleanup_kc=True, **({"env": env} if env is not None else {}))
    except CellTimeoutError:
        return _failure(nb, current, "timeout", timeout=timeout)
    except DeadKernelError as exc:
        return _failure(nb, current, "dead", evalue=str(exc))
    except CellExecutionError as exc:
        return _failure(nb, current, "error", ename=exc.ename, evalue=exc.evalue)
    except Exception as exc:  # noqa: BLE001 - the kernel did not start, or died while starting
        return _failure(nb, {}, "start", ename=type(exc).__name__, evalue=str(exc))
    return None


def _failure(nb, current: dict, kind: str, **details) -> Failure:
    cell = current.get("cell")
    if cell is None:
        return Failure(kind, **details)
    source = "\n".join(cell.source.splitlines()[:SOURCE_LINES])
    return Failure(kind, code_cell_number(nb, cell), current.get("index"), source, **details)


# ----------------------------------------------------------------------------- make run: in place
class NotebookFailed(RuntimeError):
    """A notebook did not complete; the message names it and says it was left unchanged."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the current notebook was stopped and left unchanged."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """Inside this context SIGINT and SIGTERM are recorded (``.signum``), not raised: the code
    running at that moment is never cut in the middle (e.g. between writing two files).
    Only in the main thread (elsewhere signals cannot be caught and nothing is installed)."""

    CAUGHT = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _record(self, signum, _frame):
        self.signum = self.signum or signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in self.CAUGHT}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def check(self) -> None:
        if self.signum:
            raise Interrupted(self.signum)


def _kill_kernel(client) -> bool:
    """Kill the client's kernel and its children (its process group); False if not started yet."""
    try:
        pid = client.km.provisioner.process.pid
    except AttributeError:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)  # the kernel leads its own session (jupyter_client)
    except ProcessLookupError:
        pass
    return True


def _run_stoppable(nb, signals: _Signals, **kw) -> Failure | None:
    """:func:`run` in a worker thread, so that a signal (recorded by ``signals``) can stop it:
    the kernel is killed, nbclient sees it die and shuts down cleanly, then Interrupted is raised."""
    state = {}
    kw["on_start"] = lambda client: state.setdefault("client", client)
    worker = threading.Thread(target=lambda: state.update(failure=run(nb, **kw)), daemon=True)
    worker.start()
    killed_at = None
    while worker.is_alive():
        worker.join(0.1)
        if signals.signum and killed_at is None and "client" in state and _kill_kernel(state["client"]):
            killed_at = time.monotonic()
        if killed_at is not None and time.monotonic() - killed_at > 15:
            break  # nbclient did not notice the dead kernel: give up waiting (daemon thread)
    signals.check()
    return state.get("failure")


def _describe(name: str, failure: Failure) -> str:
    unchanged = f"{name} and its results were left unchanged."
    if failure.kind == "error":
        first = failure.source.splitlines()[:3]
        last = (failure.evalue.strip().splitlines() or [""])[-1]
        return (f"{name}: {failure.where()} failed:\n    " + "\n    ".join(first) +
                f"\n  -> {failure.ename}: {last}\n{unchanged}")
    if failure.kind == "timeout":
        return f"{name}: {failure.where()} ran longer than {failure.timeout:g} s and was stopped; {unchanged}"
    if failure.kind == "dead":
        return f"{name}: the kernel died during {failure.where()} (killed, or out of memory?); {unchanged}"
    return f"{name}: the kernel could not be started ({failure.ename}: {failure.evalue}); {unchanged}"


def _tidy(nb):
    """Drop what would make every run differ: widget state, and the split of a cell's printing
    into stream chunks (it depends on flush timing)."""
    nb.metadata.pop("widgets", None)
    nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
    return nb


def _kernel_env(staging: str) -> dict:
    """The kernel's environment: ours, the staging folder, and the project on the import path
    (so that a notebook outside the project folder can import inf265 too)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, STAGING_ENV: staging, "PYTHONPATH": path}


def execute(path: Path, timeout: int = 1800, kernel: str = "python3", results: Path = RESULTS,
            signals: _Signals | None = None) -> None:
    """Execute ``path`` in place; its saved results go to ``results`` (default ``results/``).

    Raises :class:`NotebookFailed` (the cell and the error, or a dead kernel) or
    :class:`Interrupted` (SIGINT or SIGTERM, recorded by ``signals``, by default caught here);
    in both cases the notebook and ``results`` are unchanged.
    """
    if signals is None:
        with _Signals() as signals:
            return _execute(Path(path), timeout, kernel, Path(results), signals)
    return _execute(Path(path), timeout, kernel, Path(results), signals)


def _execute(path: Path, timeout: int, kernel: str, results: Path, signals: _Signals) -> None:
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix=f"inf265-results-{path.stem}-") as staging:
        failure = _run_stoppable(nb, signals, timeout=timeout, kernel=kernel, cwd=path.resolve().parent,
                                 env=_kernel_env(staging))
        if failure is not None:
            raise NotebookFailed(_describe(path.name, failure))
        text = nbformat.writes(_tidy(nb)).encode("utf-8") + b"\n"
        # The run completed. A signal arriving from here on is only recorded (our handlers never
        # raise): the results and the notebook are written together, and main() stops before the
        # next notebook.
        publish(Path(staging), results)
        atomic_write_bytes(path, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results (default: results/)")
    args = parser.parse_args(argv)
    notebooks, results = [nb.resolve() for nb in args.notebooks], args.results.resolve()
    os.chdir(ROOT)
    with _Signals() as signals:
        for nb in notebooks:
            start = time.perf_counter()
            print(f">> executing {nb.name}", flush=True)
            try:
                signals.check()
                execute(nb, timeout=args.timeout, results=results, signals=signals)
            except NotebookFailed as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            except Interrupted as exc:
                newline = "\n" if sys.stderr.isatty() else ""  # after the terminal's ^C
                print(f"{newline}interrupted ({exc}): {nb.name} and its results were left unchanged",
                      file=sys.stderr, flush=True)
                return 128 + exc.signum
            print(f"   done in {time.perf_counter() - start:.1f} s", flush=True)
        if signals.signum:  # arrived while the last notebook was being written: it completed
            print(f"interrupted ({signal.Signals(signals.signum).name}) after {notebooks[-1].name} and its "
                  f"results were written", file=sys.stderr)
            return 128 + signals.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
