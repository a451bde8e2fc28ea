"""Runs INSIDE the sandbox: execute one notebook top to bottom in a fresh kernel.

``python -P -m grading.notebooks NOTEBOOK CELL_TIMEOUT OUT_NOTEBOOK OUT_JSON KERNEL_PID_FILE``
(started by :mod:`grading.cli`). Stops at the first cell that raises, exceeds the per-cell
time limit or kills the kernel, and writes what happened to OUT_JSON (code cells numbered from 1,
as Jupyter shows them in order) and the executed notebook, outputs so far, to OUT_NOTEBOOK.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from grading.guard import ROOTS_ENV
from inf265.execute import code_cell_number
from grading.sandbox import KERNEL_ROOTS_ENV


def _error_output(cell):
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return out.get("ename", ""), out.get("evalue", "")
    return "", ""


def execute(path: Path, cell_timeout: float, out_nb: Path, pid_file: Path) -> dict:
    # The kernel (student code) runs under the sandbox guard; this process (grader code) does not.
    roots = os.environ.pop(KERNEL_ROOTS_ENV, "")
    if roots:
        os.environ[ROOTS_ENV] = roots
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", allow_errors=False,
                            record_timing=False, shutdown_kernel="immediate", startup_timeout=60,
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    current = {}

    def on_cell_execute(cell, cell_index, **_):
        current["cell"], current["index"] = cell, cell_index
        if "pid" not in current:
            try:
                current["pid"] = client.km.provisioner.process.pid
                pid_file.write_text(str(current["pid"]))
            except AttributeError:
                pass

    client.on_cell_execute = on_cell_execute
    status, message = "pass", ""
    try:
        client.execute()
    except CellTimeoutError:
        status, message = "timeout", f"exceeded the time limit of {cell_timeout:g} s per cell (stopped)"
    except DeadKernelError as exc:
        status, message = "error", f"the kernel died (sys.exit/os._exit or a crash): {str(exc).strip()[:200]}"
    except CellExecutionError as exc:
        cell = current.get("cell")
        ename, evalue = _error_output(cell) if cell is not None else ("", "")
        status = "error"
        first = (evalue.strip().splitlines() or [""])[0]
        message = f"{ename}: {first[:300]}" if ename else str(exc).strip().splitlines()[-1][:300]
        if "likely cause:" in evalue and "likely cause:" not in first:  # the harness's diagnosis
            message += " ... likely cause: " + evalue.split("likely cause:", 1)[1].strip().splitlines()[0][:300]
        if evalue.strip() != first:
            current["error"] = f"{ename}: {evalue}"
    except Exception as exc:  # kernel failed to start, malformed notebook ...
        status, message = "error", f"could not execute the notebook: {type(exc).__name__}: {exc}"
    result = {"status": status, "message": message, "code_cells": len(code)}
    cell = current.get("cell")
    if status != "pass" and cell is not None:
        number = code_cell_number(nb, cell)
        result.update({"cell": number, "cell_index": current.get("index"),
                       "cell_source": "\n".join(cell.source.splitlines()[:6]),
                       "cells_not_run": len(code) - number if number else None})
    if current.get("error"):
        result["error"] = current["error"]
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, str(out_nb))
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path, cell_timeout, out_nb, out_json, pid_file = Path(argv[0]), float(argv[1]), Path(argv[2]), Path(argv[3]), Path(argv[4])
    result = execute(path, cell_timeout, out_nb, pid_file)
    out_json.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
