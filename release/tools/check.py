"""Check your notebooks before handing them in (``make check``), or run them in place (``make run``).

    python tools/check.py [--timeout SECONDS] [--save] [NOTEBOOK ...]     (from the project folder)

Each notebook runs top to bottom in a fresh kernel, as the grader runs it: every cell must end
within SECONDS, the grader's limit per cell. Each cell is shown as it runs (its number among all
cells, counted from the top as in JupyterLab, and its first line) with its time when done. The
notebooks' own test cells are the public self-checks (``tests_backpropagation.main_test`` on your
``backpropagation``, ``tests_gradient_descent.main_test`` on your ``train_manual_update``): they
must have run and passed. Without ``--save`` your files are not changed; with it, each notebook
that ran to the end is saved with its outputs (what you hand in).

Exit status 0 when everything passed, 1 otherwise; the last line says which, or names the first
problem: the notebook, the cell and the error's line to act on. The grader runs more checks.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

# jsonschema (under nbformat) imports rfc3987_syntax when jupyterlab brought it: it compiles a
# grammar for seconds at every start, for a format nbformat never checks
sys.modules.setdefault("rfc3987_syntax", None)

import nbformat  # noqa: E402

from executor import Progress, run  # noqa: E402 - tools/executor.py, beside this file

NOTEBOOKS = ("backpropagation.ipynb", "gradient_descent.ipynb")
GRADERS_LIMIT = "{{CELL_TIMEOUT}}"  # seconds per cell: the grader's limit
TIMEOUT = float(GRADERS_LIMIT) if GRADERS_LIMIT[0].isdigit() else None  # None: --timeout is required
#: notebook -> (what its self-check prints when it passes, how many times at least, what it is)
SELF_CHECKS = {"backpropagation.ipynb": ("ALL TESTS PASSED", 2, "the course's tests of backpropagation (toy, MNIST)"),
               "gradient_descent.ipynb": ("public checks passed", 1, "the public self-check of train_manual_update")}


def _printed(nb) -> str:
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") or str(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def check(path: Path, timeout: float, save: bool) -> str | None:
    """Run the notebook; None when every cell ran and its self-check passed, else the problem in one line."""
    nb = nbformat.read(path, as_version=4)
    failure = run(nb, timeout=math.ceil(timeout), cwd=path.parent, progress=Progress())  # nbclient: whole seconds
    if failure is not None:
        problem = failure.describe()
        if failure.kind == "timeout":
            problem += f" (the grader's limit per cell is {timeout:g} s: make that cell faster)"
        return problem
    marker, times, what = SELF_CHECKS.get(path.name, ("", 0, ""))
    if _printed(nb).count(marker) < times:
        return f"every cell ran, but {what} did not print '{marker}': keep the notebook's test cells and run them"
    if save:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".ipynb", delete=False, encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(f.name, path)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", default=list(NOTEBOOKS), help="default: both notebooks")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, required=TIMEOUT is None,
                        help=f"seconds per cell (default: the grader's limit, {TIMEOUT})")
    parser.add_argument("--save", action="store_true", help="save each notebook that ran to the end, with its outputs")
    args = parser.parse_args(argv)
    if not 0 < args.timeout < math.inf:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    paths = [Path(name) for name in args.notebooks]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        parser.error(f"{', '.join(absent)} not found: run this from your project folder (where the notebooks are)")
    problems = []
    for path in paths:
        print(f">> {path.name}: running it top to bottom, at most {args.timeout:g} s per cell", flush=True)
        start = time.perf_counter()
        problem = check(path.resolve(), args.timeout, args.save)
        if problem is None:
            saved = ", saved with its outputs" if args.save else ""
            print(f"   {path.name}: every cell ran in {time.perf_counter() - start:.0f} s{saved}", flush=True)
        else:
            print(f"   {path.name}: {problem}", flush=True)
            problems.append(f"{path.name}, {problem}")
    if problems:
        more = f" ({len(problems) - 1} more above)" if len(problems) > 1 else ""
        print(f"\nto fix{more}: {problems[0]}")
        return 1
    print("\npublic checks passed (the notebooks ran top to bottom within the grader's limit per cell; "
          "the grader runs more checks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
