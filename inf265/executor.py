"""Run a notebook in memory, top to bottom in a fresh kernel, cell by cell.

:func:`run` returns ``None`` when every cell ran, else a :class:`Failure` (which cell, and why);
with ``progress`` it prints one line per cell as it runs: the cell's number among all cells, as
JupyterLab counts them from the top, its first source line, and its time once done::

    cell  7/25  def backpropagation(model, y_true, y_pred):  0.4 s

It needs only nbformat and nbclient. The course runs its own notebooks and its grader with this same
file; in your project folder it is ``tools/executor.py``, which ``tools/check.py`` runs notebooks with.
"""
from __future__ import annotations

import atexit
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

SOURCE_LINES = 6
"""How many lines of a failing cell's source a :class:`Failure` keeps."""

SHOWN = 60
"""Characters of a cell's first line shown in progress lines and messages."""

# nbclient and jupyter_client log what we report ourselves ("Kernel died while waiting ...").
_QUIET = logging.getLogger("executor.nbclient")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def code_cell_number(nb, cell) -> int | None:
    """The cell's number among the code cells, from 1 (None if absent)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    return code.index(cell) + 1 if cell in code else None


def first_line(source: str, width: int = SHOWN) -> str:
    """The first line of ``source`` that is neither blank nor a comment (else its first line), shortened."""
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    line = next((x for x in lines if not x.startswith("#")), lines[0] if lines else "")
    return line if len(line) <= width else line[:width - 3] + "..."


def diagnosis(evalue: str) -> str:
    """The line of an error message a student acts on: the harness's cause line (its first line that
    names a likely cause, else its first check line ``- ...``), or else the message's last line."""
    lines = [line.strip() for line in evalue.strip().splitlines() if line.strip()]
    for wanted in (lambda x: "likely cause" in x, lambda x: x.startswith("- ")):
        found = next((x for x in lines if wanted(x)), None)
        if found is not None:
            return found.removeprefix("- ")
    return lines[-1] if lines else ""


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
        """The cell as JupyterLab shows it: its number among all cells from the top, and its first line."""
        if self.index is None:
            return "before the first cell"
        return f"cell {self.index + 1} (`{first_line(self.source)}`)"

    def diagnosis(self) -> str:
        """The error's line to act on (:func:`diagnosis`), after its exception's name."""
        return f"{self.ename}: {diagnosis(self.evalue)}" if self.ename else diagnosis(self.evalue)

    def describe(self) -> str:
        """One line: where the run stopped, and why."""
        if self.kind == "error":
            return f"{self.where()} raised {self.diagnosis()}"
        if self.kind == "timeout":
            return f"{self.where()} ran longer than {self.timeout:g} s and was stopped"
        if self.kind == "dead":
            return f"the kernel died during {self.where()} (killed, or out of memory?)"
        return f"the kernel could not be started ({self.ename}: {self.evalue})"


class Progress:
    """One line per cell on ``stream``: ``cell N/TOTAL  first line`` when it starts, its time when done."""

    def __init__(self, stream: TextIO | None = None, indent: str = "  "):
        self.stream, self.indent = stream or sys.stdout, indent
        self._started = None

    def start(self, nb, index: int) -> None:
        width = len(str(len(nb.cells)))
        print(f"{self.indent}cell {index + 1:>{width}}/{len(nb.cells)}  {first_line(nb.cells[index].source)}",
              end="", file=self.stream, flush=True)
        self._started = time.perf_counter()

    def done(self, outcome: str = "") -> None:
        if self._started is None:
            return
        seconds = time.perf_counter() - self._started
        print(f"  {seconds:.1f} s{outcome}", file=self.stream, flush=True)
        self._started = None


class _Client(NotebookClient):
    """nbclient's client, telling ``on_output`` the size in bytes of each output it receives (and the
    index of the cell it belongs to), and keeping at most ``keep`` bytes of outputs per cell
    (``None``: all). Past that the outputs are dropped, with one note saying so: nbclient appends
    each chunk of a stream to the previous text, so a cell printing without end would otherwise
    cost quadratic time and unbounded memory."""

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
        keep_output: int | None = None, startup_timeout: float = 60, progress: Progress | None = None
        ) -> Failure | None:
    """Execute the notebook ``nb`` (a NotebookNode, filled in place) in a fresh kernel.

    Stops at the first failing cell. ``km``: a kernel manager to use (default: a new one for
    ``kernel``); ``cwd``/``env``: the kernel's folder and environment; ``on_start(client)`` is
    called once the kernel is ready, ``on_output(n_bytes, cell_index)`` for every output;
    ``keep_output``: bytes of outputs kept per cell (default all); ``progress``: a
    :class:`Progress` told when each cell starts and ends. The kernel is shut down in every case.
    Returns ``None`` when every cell ran, else a :class:`Failure`.
    """
    resources = {"metadata": {"path": str(cwd)}} if cwd is not None else {}
    client = _Client(nb, on_output=on_output, keep=keep_output, timeout=timeout, kernel_name=kernel, km=km, log=_QUIET,
                     record_timing=False, shutdown_kernel="immediate", startup_timeout=startup_timeout,
                     # progress bars are widgets with random ids: their state is not worth saving
                     store_widget_state=False,
                     # ipykernel 7 warns about local TCP on every start; errors still show.
                     extra_arguments=["--IPKernelApp.log_level=ERROR"], resources=resources)
    current = {}

    def started(cell, cell_index, **_):
        current["cell"], current["index"] = cell, cell_index
        if progress is not None:
            progress.start(nb, cell_index)

    def executed(execute_reply, **_):
        if progress is not None:
            failed = execute_reply.get("content", {}).get("status") == "error"
            progress.done("  error" if failed else "")

    client.on_cell_execute, client.on_cell_executed = started, executed
    if on_start is not None:
        client.on_notebook_start = lambda **_: on_start(client)
    try:
        client.execute(cleanup_kc=True, **({"env": env} if env is not None else {}))
    except CellTimeoutError:
        return _failure(nb, current, progress, "timeout", timeout=timeout)
    except DeadKernelError as exc:
        return _failure(nb, current, progress, "dead", evalue=str(exc))
    except CellExecutionError as exc:
        return _failure(nb, current, progress, "error", ename=exc.ename, evalue=exc.evalue)
    except Exception as exc:  # noqa: BLE001 - the kernel did not start, or died while starting
        return _failure(nb, {}, progress, "start", ename=type(exc).__name__, evalue=str(exc))
    finally:
        # nbclient registers its kernel's clean-up to run at exit, and forgets to take it back when
        # the kernel failed to start: at exit it would then fail on the kernel manager it already reset
        atexit.unregister(client._cleanup_kernel)
    return None


def _failure(nb, current: dict, progress: Progress | None, kind: str, **details) -> Failure:
    if progress is not None:
        progress.done({"timeout": "  stopped: time limit", "dead": "  stopped"}.get(kind, ""))
    cell = current.get("cell")
    if cell is None:
        return Failure(kind, **details)
    source = "\n".join(cell.source.splitlines()[:SOURCE_LINES])
    return Failure(kind, code_cell_number(nb, cell), current.get("index"), source, **details)
