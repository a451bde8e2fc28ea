"""Execute notebooks top to bottom, in place, atomically: ``python -m inf265.execute NB ...``.

Each notebook runs in a fresh kernel from its own folder. What it saves with
:func:`inf265.results.save_json` / :func:`~inf265.results.save_figure` goes to a private staging
folder (the kernel is told where by the environment variable ``INF265_RESULTS_STAGING``); only
when every cell has run are the staged files moved into ``results/`` and the executed notebook
written back, one right after the other, each file atomically. A failing cell, an interruption
(Ctrl-C / SIGINT, SIGTERM) or a dead kernel leaves the notebook and its results exactly as they
were, removes the staging folder, and says so in one line (the failing cell's case adds the cell
and its error). No timing metadata is recorded, so outputs stay comparable by nbval.

:func:`run` (:mod:`inf265.executor`) is the executor underneath, shared with the grader and the
students' ``tools/check.py``; it prints each cell as it runs (its number among all cells, its
first line) and its time when done.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

from . import ROOT
from .executor import SOURCE_LINES, Failure, Progress, code_cell_number, run  # noqa: F401 - the grader's imports
from .results import RESULTS, STAGING_ENV, atomic_write_bytes, publish

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
    return f"{name}: {failure.describe()}; {name} and its results were left unchanged."


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
            signals: _Signals | None = None, progress: Progress | None = None) -> None:
    """Execute ``path`` in place; its saved results go to ``results`` (default ``results/``).

    Raises :class:`NotebookFailed` (the cell and the error, or a dead kernel) or
    :class:`Interrupted` (SIGINT or SIGTERM, recorded by ``signals``, by default caught here);
    in both cases the notebook and ``results`` are unchanged. ``progress``: each cell's line as it runs.
    """
    if signals is None:
        with _Signals() as signals:
            return _execute(Path(path), timeout, kernel, Path(results), signals, progress)
    return _execute(Path(path), timeout, kernel, Path(results), signals, progress)


def _execute(path: Path, timeout: int, kernel: str, results: Path, signals: _Signals,
             progress: Progress | None) -> None:
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix=f"inf265-results-{path.stem}-") as staging:
        failure = _run_stoppable(nb, signals, timeout=timeout, kernel=kernel, cwd=path.resolve().parent,
                                 progress=progress,
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
                execute(nb, timeout=args.timeout, results=results, signals=signals, progress=Progress())
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
