"""Benchmark of the grader: ``python bench/bench_grading.py [--runs N]``.

What one submission's function checks cost (``make grade --no-notebooks``: the runner starts in
bubblewrap, imports the student's definitions, answers every backpropagation and SGD check)
against the floor of any sandboxed check, a bare ``python -c "import torch"`` in the same
sandbox. The submission is the student fixture written in the skeleton's conventions
(``tests/fixtures/students/skeleton_conventions``). The trusted references are prepared once
before timing (as in a batch, where every submission after the first reuses them).

Also the sandbox's own cost: the same torch import in bubblewrap against a plain subprocess.
Prints ``NAME (...): A s vs B s, ratio R`` (best of ``--runs`` each, interleaved).

Then the throughput of ``python -m grading`` on a class (``--class-size`` copies of the
fixture, as separate students): wall time per student with the checks alone and with both
notebooks re-executed, at ``--jobs 1`` and ``--jobs N`` (N = this machine's cores), and what it
makes of a class of 200 on 8 cores (assuming the per-student time scales with cores/jobs).
``--no-notebooks`` leaves out the runs with notebooks (minutes on a small machine).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
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


def per_student(size: int, jobs: int, notebooks: bool) -> float:
    """Wall seconds per student of ``python -m grading`` on a class of ``size`` copies of the fixture."""
    with tempfile.TemporaryDirectory(prefix="inf265-bench-class-") as tmp:
        klass = Path(tmp) / "class"
        for i in range(size):
            shutil.copytree(SUBMISSION, klass / f"student{i:03d}")
        args = [sys.executable, "-m", "grading", str(klass), "--out", str(Path(tmp) / "out"), "--jobs", str(jobs)]
        start = time.monotonic()
        run = subprocess.run(args + ([] if notebooks else ["--no-notebooks"]), cwd=ROOT, capture_output=True,
                             text=True)
        took = time.monotonic() - start
    if run.returncode != 0:
        raise RuntimeError(f"grading the class failed ({run.returncode}): {run.stderr[-2000:]}")
    return took / size


def throughput(size: int, notebooks: bool) -> None:
    cores = os.cpu_count() or 1
    for label, with_nb in (("checks alone", False), ("checks and both notebooks", True)):
        if with_nb and not notebooks:
            continue
        one, many = per_student(size, 1, with_nb), per_student(size, cores, with_nb)
        hour = 200 * many * cores / 8 / 60
        print(f"grading per student ({label}, class of {size}): --jobs 1 {one:.1f} s vs --jobs {cores} {many:.1f} s, "
              f"ratio {one / many:.2f}; a class of 200 on 8 cores: about {hour:.0f} min")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each (the best is kept)")
    parser.add_argument("--class-size", type=int, default=4, help="students in the throughput runs (0: none)")
    parser.add_argument("--no-notebooks", action="store_true", help="throughput of the checks alone")
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
    if args.class_size > 0:
        throughput(args.class_size, not args.no_notebooks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
