"""Grade student submissions: ``python -m grading SUBMISSION [SUBMISSION ...]`` (``make grade``).

The submissions are found by :mod:`grading.inbox` (Canvas's bulk zip or folder, class folders,
students' zips). For each student's ``backpropagation.ipynb`` and ``gradient_descent.ipynb``:

1. a sandboxed runner loads what the graded functions need from the notebooks and answers the
   grader's requests (gradients, trained parameters); the grader compares them with its own
   references (autograd, finite differences, ``torch.optim.SGD``) and decides;
2. each notebook is re-executed top to bottom in a sandboxed kernel, a time limit per cell;
3. the hand-in is checked against the project text's rules (:mod:`grading.deliverables`,
   :mod:`grading.policy`);
4. ``<out>/<student>/report.md`` and ``report.json`` (each check, its verdict, diagnostic and
   points) and the executed notebooks are written, and the class's files for all of them
   (:mod:`grading.outputs`: ``grades.csv``, ``canvas_grades.csv``, ``marking_sheet.csv``, ``index.html``).

Exit status: 0 when every submission was graded; 1 when some folder or check was not gradable
here (listed in the reports); 2 on a usage error or when the sandbox cannot start.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from inf265 import ROOT

from . import course, deliverables, grade, inbox, outputs, progress, report, sandbox, similarity
from . import policy as late
from . import rubric as rubric_mod

DEFAULT_OUT = ROOT / "grading-out"
DEFAULT_HARNESS = ROOT / "tests_backpropagation.py"
NO_SANDBOX = ("NOT SANDBOXED (--no-sandbox): the students' code ran with the grader's user rights, its "
              "network and its files; the verdicts are still decided outside the students' processes")


def expand(patterns: list[str]) -> list[Path]:
    """Folders from the command line; a pattern that is not a path is expanded as a glob."""
    out = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if not os.path.exists(pattern) and glob.has_magic(pattern) else []
        out += [Path(m) for m in matches] or [Path(pattern)]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m grading", description=__doc__.splitlines()[0])
    p.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                   help="students' folders, a folder of them (any depth), zips, Canvas's Download Submissions zip "
                        "or its folder (or glob patterns such as 'submissions/*')")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="reports go to OUT/<student folder name>/, the gradebook to OUT/grades.csv (default grading-out/)")
    p.add_argument("--rubric", type=Path, default=None, help="rubric TOML (default: grading/rubric.toml)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per notebook cell (default: the rubric's)")
    p.add_argument("--check-timeout", type=float, default=None,
                   help="CPU seconds per request to a student's function (default: the rubric's)")
    p.add_argument("--memory-gib", type=float, default=None, help="memory limit per sandboxed process (default 4)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="grade this many submissions at the same time")
    p.add_argument("--harness", type=Path, default=DEFAULT_HARNESS, help="the official tests_backpropagation.py")
    p.add_argument("--no-notebooks", action="store_true",
                   help="only the checks of the functions: do not re-execute the notebooks")
    p.add_argument("--submitted-at", type=Path, default=None, metavar="CSV",
                   help="submission times (columns student,submitted_at) for the rubric's late policy")
    p.add_argument("--canvas", action="store_true",
                   help="submission times from Canvas's API (CANVAS_URL, CANVAS_TOKEN, CANVAS_COURSE_ID, "
                        "CANVAS_ASSIGNMENT_ID from the environment)")
    p.add_argument("--no-sandbox", action="store_true",
                   help="run students' code without bubblewrap isolation (the risk is written into every report)")
    return p


class Setup:
    """What grading needs once per run: the rubric, limits, the sandbox check and the course folder.

    ``with Setup(...) as setup: setup.grade(folder, out_dir)`` grades one folder into a report
    (a folder that is not a submission gets a "not gradable" report; a failure of ours on one
    folder too, so that a batch always goes on).
    """

    def __init__(self, rubric, harness: Path, check_timeout=None, cell_timeout=None, memory_gib=None,
                 isolated: bool = True, notebooks: bool = True, run_as: tuple[int, int] | None = None,
                 line: str | None = None):
        self.rubric = rubric
        self.line = line or ((f"{sandbox.probe()}: no network, own PID namespace, read-only system, a private copy "
                              f"of the submission") if isolated else NO_SANDBOX)
        limits = sandbox.Limits(memory=int((memory_gib or rubric.memory_gib) * sandbox.GiB),
                                processes=rubric.processes)
        data = os.environ.get("DATA_DIR", "").strip()
        data_dir = Path(data).expanduser().resolve() if data else ROOT / "data"
        self.course = course.build(harness)
        self.ctx = grade.Context(course=self.course, data=data_dir if data_dir.is_dir() else None, harness=harness,
                                 rubric=rubric, limits=limits, check_cpu=check_timeout or rubric.check_timeout,
                                 cell_timeout=cell_timeout or rubric.cell_timeout, isolated=isolated,
                                 notebooks=notebooks, run_as=None if isolated else run_as)
        self.limits_info = {"check_cpu": self.ctx.check_cpu, "cell_timeout": self.ctx.cell_timeout,
                            "resources": limits.describe()}

    def __enter__(self) -> "Setup":
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.course, ignore_errors=True)

    def grade_submission(self, sub: inbox.Submission, out_dir: Path, policy=None, times=None) -> dict:
        """One submission from the inbox: graded, with what the inbox, the deliverables and the late
        policy say written into its report."""
        if sub.problem:
            rep = report.not_gradable(sub.name, sub.source, sub.problem, self.rubric, self.line)
        else:
            rep = self.grade(sub.folder, out_dir, sub.name)
        rep.update(submission=sub.source, lms_user_id=sub.lms_user_id, lms_name=sub.lms_name, late=sub.late,
                   files=sub.files, inbox_notes=sub.notes)
        if not sub.problem and sub.folder.is_dir():
            deliverables.apply(rep, sub.folder, sub.files_root, sub.files, out_dir, self.rubric)
            similarity.save(sub.folder, out_dir)
        late.apply(rep, policy, times or {})
        report.write(rep, out_dir)
        return rep

    def grade(self, folder: Path, out_dir: Path, name: str | None = None) -> dict:
        start, name = time.monotonic(), name or folder.resolve().name
        try:
            grade.check_folder(folder)
        except grade.NotGradable as exc:
            rep = report.not_gradable(name, str(folder), str(exc), self.rubric, self.line)
            report.write(rep, out_dir)
            return rep
        if out_dir.exists():
            shutil.rmtree(out_dir)  # an earlier report of this student: replaced
        try:
            graded = grade.grade(folder.resolve(), self.ctx, out_dir)
        except Exception as exc:  # noqa: BLE001 - a bug of ours must not stop the batch
            rep = report.not_gradable(name, str(folder), f"the grader failed on this folder: "
                                                         f"{type(exc).__name__}: {exc}", self.rubric, self.line)
        else:
            rep = report.build(name, str(folder), graded, self.rubric, self.line, self.limits_info,
                               time.monotonic() - start)
        report.write(rep, out_dir)
        return rep


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        rubric = rubric_mod.load(args.rubric)
    except rubric_mod.RubricError as exc:
        return _usage_error(str(exc))
    for value, name in ((args.timeout, "--timeout"), (args.check_timeout, "--check-timeout"),
                        (args.memory_gib, "--memory-gib")):
        if value is not None and value <= 0:
            return _usage_error(f"{name} must be a positive number, got {value:g}")
    if args.jobs < 1:
        return _usage_error(f"--jobs must be at least 1, got {args.jobs}")
    if not args.harness.is_file():
        return _usage_error(f"the harness {args.harness} does not exist; pass --harness FILE")
    folders = expand(args.submissions)
    out_root = args.out.resolve()
    for folder in folders:
        if folder.exists() and (out_root == folder.resolve() or folder.resolve() in out_root.parents):
            return _usage_error(f"--out {args.out} is inside the submission {folder}; the grader never writes into "
                                f"a submission: choose another folder")
    try:
        policy = late.LatePolicy.from_rubric(rubric)
        times = late.read_times(args.submitted_at, policy.deadline.tzinfo if policy else None) \
            if args.submitted_at else {}
        if args.canvas:
            times |= late.canvas_times()
    except late.PolicyError as exc:
        return _usage_error(str(exc))
    with tempfile.TemporaryDirectory(prefix="inf265-inbox-") as stage:
        submissions = inbox.collect(folders, Path(stage))
        for sub in submissions:
            existing = out_root / sub.name
            if existing.exists() and not (existing / "report.json").is_file() and any(existing.iterdir()):
                return _usage_error(f"{existing} exists and is not a grading report folder (no report.json); the "
                                    f"grader would replace it: choose another --out folder")
        try:
            setup = Setup(rubric, args.harness.resolve(), args.check_timeout, args.timeout, args.memory_gib,
                          isolated=not args.no_sandbox, notebooks=not args.no_notebooks)
        except sandbox.SandboxUnavailable as exc:
            return _usage_error(f"refusing to grade: students' code cannot be isolated here.\n{exc}")
        reports = []
        with setup, progress.Bar(len(submissions)) as bar:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                for rep in pool.map(lambda sub: setup.grade_submission(sub, out_root / sub.name, policy, times),
                                    submissions):
                    reports.append(rep)
                    bar.done(_lines(rep, out_root))
    out_root.mkdir(parents=True, exist_ok=True)
    for line in outputs.finish(out_root, rubric):
        print(line)
    if args.no_sandbox:
        print(f"warning: {NO_SANDBOX}", file=sys.stderr)
    bad = [r["student"] for r in reports if r.get("not_gradable") or "not_gradable" in r["tasks"].values()
           or any(c["status"] == "not_gradable" for c in r["checks"])]
    if bad:
        print(f"not gradable here (see their reports): {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def _lines(rep: dict, out_root: Path) -> list[str]:
    """What the batch prints for one finished student."""
    if rep.get("not_gradable"):
        return [f"{rep['student']}: NOT GRADABLE: {rep['not_gradable']}"]
    late_note = f", late: -{rep['late_deduction']:g}" if rep.get("late_deduction") else \
        (", LATE (no time given)" if rep.get("late") else "")
    lines = [f"{rep['student']}: {rep['score']:g} / {rep['max_score']:g} (checks {rep['checks_seconds']:.1f} s, "
             f"total {rep['seconds']:.1f} s{late_note})"]
    for c in rep["checks"]:
        message = c["message"].splitlines()[0][:150] if c["message"] else ""
        lines.append(f"  {report.MARK.get(c['status'], c['status']):12} {c['points']:>5g}/{c['max_points']:<3g} "
                     f"{c['id']:26} {message}")
    lines.append(f"  report: {os.path.relpath(out_root / rep['student'] / 'report.md')}")
    return lines
