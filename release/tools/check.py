"""Check your notebooks before handing them in: ``make check``.

    python tools/check.py --timeout SECONDS [NOTEBOOK ...]     (from the project folder)

1. The public self-checks, on the functions your notebooks define (read from the notebooks
   without running their other cells): ``tests_backpropagation.main_test`` on ``backpropagation``
   (toy data) and ``tests_gradient_descent.main_test`` on ``train_manual_update``.
2. Each notebook run top to bottom in a fresh kernel, as the grader runs it: every cell must end
   within SECONDS, the grader's limit per cell. The notebooks run in memory: your files and
   results/ are left as they are.

Exit status 0 when everything passed, 1 otherwise. The grader runs more checks than these.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

FOLDER = Path.cwd()
sys.path.insert(0, str(FOLDER))  # the project's inf265 and tests_*.py, as the notebooks import them

import nbformat  # noqa: E402
import torch  # noqa: E402

from inf265.execute import run  # noqa: E402
from inf265.nbdefs import load_needed  # noqa: E402
from inf265.results import STAGING_ENV  # noqa: E402

NOTEBOOKS = ("backpropagation.ipynb", "gradient_descent.ipynb")


def check_backpropagation(defs) -> None:
    from tests_backpropagation import main_test
    model = defs.MyNet([2, 3, 2])
    try:  # a stub still there says so itself, before the harness reports every check as failed
        defs.backpropagation(model, torch.zeros(1, 2), model(torch.zeros(1, 2)).detach())
    except NotImplementedError:
        raise
    except Exception:  # noqa: BLE001 - any other problem: the harness's report says what it is
        pass
    main_test(defs.backpropagation, model, data="toy")


def check_gradient_descent(defs) -> None:
    from tests_gradient_descent import main_test
    main_test(defs.train_manual_update)


#: notebook -> (the names its self-check needs, the self-check)
SELF_CHECKS = {"backpropagation.ipynb": (("MyNet", "backpropagation"), check_backpropagation),
               "gradient_descent.ipynb": (("train_manual_update",), check_gradient_descent)}


def self_check(path: Path) -> str | None:
    """Run the notebook's public self-check; None when it passed, else what went wrong."""
    wanted, check = SELF_CHECKS[path.name]
    defs = load_needed(path, wanted, name=f"check_{path.stem}")
    missing = [name for name in wanted if not hasattr(defs, name)]
    if missing:
        why = "; ".join(f"code cell {s['cell']}: {s['error']}" for s in defs.__nbdefs_skipped__[:3])
        return f"{path.name} defines no {', '.join(missing)}" + (f" ({why})" if why else "")
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # as the notebooks do (section 3.3 of the project text)
    try:
        check(defs)
    except NotImplementedError as exc:
        return f"not written yet: {exc}"
    except AssertionError:
        return "a check FAILED (see the FAILED lines above)"
    except Exception as exc:  # noqa: BLE001 - the student's code may raise anything
        return f"{type(exc).__name__}: {exc}"
    finally:
        torch.set_default_dtype(dtype)
    return None


def execute(path: Path, timeout: float) -> str | None:
    """Run the notebook top to bottom with ``timeout`` seconds per cell; None when every cell ran."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="inf265-check-") as staging:  # its results files: discarded
        failure = run(nb, timeout=math.ceil(timeout), cwd=FOLDER,  # (nbclient counts whole seconds)
                      env={**os.environ, STAGING_ENV: staging})
    if failure is None:
        return None
    if failure.kind == "timeout":
        return (f"{failure.where()} ran longer than {timeout:g} s, the grader's limit per cell: the grader "
                "stops it there too; make that cell faster (fewer epochs or configurations per cell)")
    if failure.kind == "error":
        last = (failure.evalue.strip().splitlines() or [""])[-1]
        code = [line for line in failure.source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        shown = f" (`{code[0].strip()}`)" if code else ""
        return f"{failure.where()}{shown} raised {failure.ename}: {last}"
    if failure.kind == "dead":
        return f"the kernel died during {failure.where()} (out of memory?)"
    return f"the kernel could not start ({failure.ename}: {failure.evalue})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", default=list(NOTEBOOKS), help="default: both notebooks")
    parser.add_argument("--timeout", type=float, required=True, help="seconds per cell (the grader's limit)")
    args = parser.parse_args(argv)
    if not 0 < args.timeout < math.inf:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    paths = [FOLDER / name for name in args.notebooks]
    unknown = [p.name for p in paths if p.name not in SELF_CHECKS]
    absent = [str(p) for p in paths if not p.is_file()]
    if unknown or absent:
        parser.error(f"unknown notebook {', '.join(unknown)} (use {' and '.join(NOTEBOOKS)})" if unknown
                     else f"{', '.join(absent)} not found: run make check from the project folder")
    problems = []
    print(">> 1. public self-checks")
    for path in paths:
        problem = self_check(path)
        print(f"{path.name}: {'public self-check passed' if problem is None else problem}", flush=True)
        problems += [f"{path.name}: {problem}"] if problem else []
    print(f"\n>> 2. the notebooks, top to bottom, at most {args.timeout:g} s per cell (the grader's limit)")
    for path in paths:
        start = time.perf_counter()
        problem = execute(path, args.timeout)
        seconds = time.perf_counter() - start
        print(f"{path.name}: " + (f"ran top to bottom in {seconds:.0f} s" if problem is None else problem), flush=True)
        problems += [f"{path.name}: {problem}"] if problem else []
    if problems:
        print(f"\n{len(problems)} problem(s) to fix before handing in:\n  " + "\n  ".join(problems))
        return 1
    print("\npublic checks passed, and the notebooks ran top to bottom within the grader's limit per cell "
          "(the grader runs more checks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
