"""Execute notebooks top to bottom, in place, atomically: ``python -m inf265.execute NB ...``.

Each notebook runs in a fresh kernel from the project root (the folder the notebooks live in).
Only a notebook that ran without error is written back, through a temporary file renamed over
the original; a failing or interrupted run leaves the committed notebook untouched and prints
which cell failed. No timing metadata is recorded, so outputs stay comparable by nbval.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert.preprocessors import CoalesceStreamsPreprocessor
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from . import ROOT
from .results import atomic_write_bytes


def code_cell_number(nb, cell) -> int | None:
    """The cell's number among the code cells, from 1, as Jupyter users count them (None if absent)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    return code.index(cell) + 1 if cell in code else None


def execute(path: Path, timeout: int = 1800, kernel: str = "python3") -> None:
    """Execute ``path`` in place; raise RuntimeError naming the failing cell otherwise."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    # log_level=ERROR: ipykernel 7 warns about local TCP on every start; errors still show.
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, record_timing=False,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    failed = {}

    def remember(cell, cell_index, **_):
        failed["cell"], failed["index"] = cell, cell_index

    client.on_cell_execute = remember
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as exc:
        cell = failed.get("cell")
        where = f"code cell {code_cell_number(nb, cell)} (cell index {failed.get('index')})" if cell else "a cell"
        first = "\n".join(cell.source.splitlines()[:3]) if cell else ""
        summary = str(exc).strip().splitlines()
        last = next((l for l in reversed(summary) if l.strip()), "")
        raise RuntimeError(f"{path.name}: {where} failed:\n    {first}\n  -> {last}\n"
                           f"{path.name} was left unchanged.") from None
    # Execution-only metadata would make every run differ; keep the notebook as authored.
    nb.metadata.pop("widgets", None)
    # How a cell's printing is split into stream chunks depends on flush timing: merge them.
    nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
    atomic_write_bytes(path, nbformat.writes(nb).encode("utf-8") + b"\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    for nb in args.notebooks:
        start = time.perf_counter()
        print(f">> executing {nb}", flush=True)
        try:
            execute(nb, timeout=args.timeout)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\ninterrupted: {nb} was left unchanged", file=sys.stderr)
            return 130
        print(f"   done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
