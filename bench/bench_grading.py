"""Benchmark of the grader: ``python bench/bench_grading.py [--runs N]``.

What one submission's function checks cost (``make grade --no-notebooks``: the runner starts in
bubblewrap, imports the student's definitions, answers every backpropagation and SGD check)
against the floor of any sandboxed check, a bare ``python -c "import torch"`` in the same
sandbox. The submission is the student fixture written in the skeleton's conventions
(``tests/fixtures/students/skeleton_conventions``). The trusted references are prepared once
before timing (as in a batch, where every submission after the first reuses them).

Also the sandbox's own cost: the same torch import in bubblewrap against a plain subprocess.
Prints ``NAME (...): A s vs B s, ratio R`` (best of ``--runs`` each, interleaved).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grading import grade, sandbox  # noqa: E402
from grading import rubric as rubric_mod  # noqa: E402
from grading.cli import Setup  # noqa: E402

SUBMISSION = ROOT / "tests" / "fixtures" / "students" / "skeleton_conventions"
IMPORT_TORCH = [sys.executable, "-c", "import torch"]


def sandboxed_import(ctx: grade.Context) -> float:
    start = time.monotonic()
    with sandbox.Workspace(SUBMISSION, ctx.course, ctx.data, isolated=True) as ws:
        outcome = sandbox.Process(ws, IMPORT_TORCH, ctx.limits).finish(timeout=120)
    if outcome.returncode != 0:
        raise RuntimeError(f"import torch failed in the sandbox: {outcome.stderr[-2000:]}")
    return time.monotonic() - start


def plain_import() -> float:
    start = time.monotonic()
    subprocess.run(IMPORT_TORCH, check=True)
    return time.monotonic() - start


def checks(ctx: grade.Context) -> float:
    records, seconds, _ = grade.run_checks(SUBMISSION, ctx)
    bad = {k: r["message"] for k, r in records.items() if r["status"] in ("error", "timeout", "not_gradable")}
    if bad:
        raise RuntimeError(f"the checks did not run cleanly: {bad}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each (the best is kept)")
    args = parser.parse_args(argv)
    rubric = rubric_mod.load(None)
    with Setup(rubric, ROOT / "tests_backpropagation.py", notebooks=False) as setup:
        ctx = setup.ctx
        grade._prepare(ctx)
        times = {"checks": [], "sandboxed": [], "plain": []}
        for _ in range(args.runs):
            times["checks"].append(checks(ctx))
            times["sandboxed"].append(sandboxed_import(ctx))
            times["plain"].append(plain_import())
    c, s, p = (min(times[k]) for k in ("checks", "sandboxed", "plain"))
    print(f"grading checks (one submission, every function check, no notebooks) vs a sandboxed torch import: "
          f"{c:.2f} s vs {s:.2f} s, ratio {c / s:.1f}")
    print(f"sandbox cost (torch import in bubblewrap vs a plain subprocess): {s:.2f} s vs {p:.2f} s, "
          f"ratio {s / p:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
