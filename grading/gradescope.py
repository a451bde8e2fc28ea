"""Gradescope: the autograder package (``make gradescope``) and the grading it runs per submission.

``python -m grading.gradescope build ZIP`` writes the package Gradescope's autograder
specification asks for: ``setup.sh`` and ``run_autograder`` at the root of the zip, the grader,
the harness and the data layer beside them (they land in ``/autograder/source``). Gradescope
builds one image from it and runs ``run_autograder`` for every submission in a container of its
own, so a course of hundreds of students is graded in parallel on Gradescope's machines.

``python -m grading.gradescope grade SUBMISSION RESULTS_JSON`` (what ``run_autograder`` calls)
grades ``/autograder/submission`` like ``make grade`` and writes ``/autograder/results/results.json``
in the specification's format: the score, and one test per check with its name, score,
max_score, status, output and visibility. ``AUTOGRADER_ROOT`` replaces ``/autograder`` (to run the
package locally).

What runs where (:func:`isolation`): with bubblewrap, as ``make grade``. Where it cannot start in
Gradescope's container and the grader is root (Gradescope runs ``run_autograder`` as root), the
students' code runs as a separate unprivileged user (:data:`grading.sandbox.STUDENT_UID`) that
cannot write the results folder, with the same rlimits, a private home and temporary folder, and
every process of that user is killed before the results are written. With neither (not root),
or with ``INF265_REQUIRE_SANDBOX=1`` and no bubblewrap, the submission is not graded, unless the
instructor sets ``INF265_ALLOW_UNISOLATED=1``: then the code runs with the grader's rights, and the
results' output (which students see) and the run's log (which only instructors see) say so.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from inf265 import ROOT
from inf265.results import atomic_write_bytes

from . import rubric as rubric_mod
from . import inbox, sandbox
from .cli import DEFAULT_HARNESS, Setup

#: what goes into /autograder/source, relative to the project root (folders recursively, *.py, *.toml)
SOURCES = ("grading", "inf265", "tests_backpropagation.py", "harness_core.py", "tests_gradient_descent.py",
           "requirements.txt")

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (network available).
set -euxo pipefail
cd /autograder/source
if ! command -v python3.11 >/dev/null; then
  apt-get update
  apt-get install -y software-properties-common
  add-apt-repository -y ppa:deadsnakes/ppa
  apt-get update
  apt-get install -y python3.11 python3.11-venv
fi
python3.11 -m venv /autograder/venv
/autograder/venv/bin/python -m pip install --upgrade pip
/autograder/venv/bin/python -m pip install -r requirements.txt
# the packages students may import (grading/rubric.toml [environment] packages)
/autograder/venv/bin/python -m pip install $(/autograder/venv/bin/python -m grading.rubric --packages)
# the data the checks need (the MNIST test split; CIFAR-10 for notebooks that load it), downloaded once
DATA_DIR=/autograder/source/data /autograder/venv/bin/python -m inf265.data
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission; it writes $ROOT/results/results.json.
# AUTOGRADER_ROOT (default /autograder) and AUTOGRADER_PYTHON let it run on any folder laid out the same way.
set -uo pipefail
root=${AUTOGRADER_ROOT:-/autograder}
cd "$root/source"
export DATA_DIR=${DATA_DIR:-$root/source/data} PYTHONPATH="$root/source"
exec "${AUTOGRADER_PYTHON:-$root/venv/bin/python}" -P -m grading.gradescope grade "$root/submission" \\
    "$root/results/results.json"
"""


def _files() -> list[Path]:
    out = []
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".py", ".toml", ".cfg")
                          and "__pycache__" not in p.parts)
        else:
            out.append(path)
    return out


def build(zip_path: Path) -> Path:
    """The autograder zip (reproducible: fixed timestamps and order)."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=zip_path.parent, suffix=".tmp", delete=False) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for name, text, mode in (("setup.sh", SETUP_SH, 0o755), ("run_autograder", RUN_AUTOGRADER, 0o755)):
                info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
                info.external_attr = (0o100000 | mode) << 16
                z.writestr(info, text)
            for path in _files():
                info = zipfile.ZipInfo(str(path.relative_to(ROOT)), date_time=(2026, 1, 1, 0, 0, 0))
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, path.read_bytes())
    os.replace(tmp.name, zip_path)
    return zip_path


def results(report: dict) -> dict:
    """A grading report as Gradescope's results.json."""
    if report.get("not_gradable"):
        return {"score": 0, "output": f"Not graded: {report['not_gradable']}", "tests": [],
                "stdout_visibility": "hidden"}
    tests = []
    for number, c in enumerate(report["checks"], start=1):
        output = c["message"]
        if c["status"] not in ("pass", "skipped") and c["details"].get("harness_report"):
            output += "\n\n" + str(c["details"]["harness_report"])[:4000]
        tests.append({"name": f"{c['title']} [{c['id']}]", "number": str(number), "score": c["points"],
                      "max_score": c["max_points"], "status": "passed" if c["status"] == "pass" else "failed",
                      "output": output, "visibility": "visible",
                      "tags": [c["task"], c["scope"]]})
    summary = ("Tasks: " + ", ".join(f"{t}: {s}" for t, s in report["tasks"].items()) + "\n"
               f"Sandbox: {report['sandbox']}\nChecks of the functions took {report['checks_seconds']:.1f} s.")
    return {"score": report["score"], "execution_time": round(report["seconds"]), "output": summary,
            "stdout_visibility": "hidden", "tests": tests}


SEPARATE_USER = ("bubblewrap cannot start in this container: the student's code ran as a separate unprivileged "
                 "user (uid {uid}) that cannot write the results, with resource limits and a private temporary "
                 "folder; every process of that user was ended before the results were written (it had this "
                 "container's network and could read its world-readable files)")
UNISOLATED = ("NOT ISOLATED: bubblewrap cannot start here and the grader is not root, so the student's code ran "
              "with the grader's own rights (its files, the results folder, the network); the instructor allowed "
              "this with INF265_ALLOW_UNISOLATED=1")
REFUSED = ("Not graded: the autograder cannot isolate students' code in this container, and grading without "
           "isolation was not allowed. Your instructor needs to fix the autograder; nothing of your submission "
           "was run.")


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def isolation() -> tuple[str, str | None]:
    """``("bwrap" | "user" | "none" | "refused", why bwrap cannot start)``: what runs students' code here."""
    try:
        sandbox.probe()
        return "bwrap", None
    except sandbox.SandboxUnavailable as exc:
        why = str(exc)
    if _flag("INF265_REQUIRE_SANDBOX"):
        return "refused", why
    if os.geteuid() == 0:
        if not sandbox.reachable_by_others(Path(sys.executable)):
            return "refused", (f"{why}\nand the students' user cannot run {sys.executable} (a folder above it is "
                               f"not open to other users; setup.sh installs the environment in /autograder/venv)")
        return "user", why
    return ("none" if _flag("INF265_ALLOW_UNISOLATED") else "refused"), why


def grade(submission: Path, results_path: Path) -> int:
    start = time.monotonic()
    rubric = rubric_mod.load()
    mode, why = isolation()
    if why:  # the run's log: instructors only
        print(f"bubblewrap cannot start here: {why}", file=sys.stderr)
    if mode == "refused":
        print(f"refusing to grade: {REFUSED} (set INF265_ALLOW_UNISOLATED=1 to grade without isolation, or run "
              f"the autograder as root to use a separate user)", file=sys.stderr)
        _write(results_path, {"score": 0, "tests": [], "output": REFUSED})
        return 1
    run_as = (sandbox.STUDENT_UID, sandbox.STUDENT_UID) if mode == "user" else None
    line = {"user": SEPARATE_USER.format(uid=sandbox.STUDENT_UID), "none": UNISOLATED}.get(mode)
    if mode == "user" and results_path.parent.is_dir():  # the results folder: not the student's user's to write
        os.chmod(results_path.parent, results_path.parent.stat().st_mode & ~0o022)
    if line:
        print(f"warning: {line}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="inf265-gradescope-") as out, \
            Setup(rubric, DEFAULT_HARNESS.resolve(), isolated=mode == "bwrap", run_as=run_as, line=line) as setup:
        # a zipped project folder, notebooks one level down or renamed: found as make grade finds them
        sub = inbox.single(submission, Path(out) / "stage")
        report = setup.grade_submission(sub, Path(out) / "report")
    if run_as:
        sandbox.kill_user(run_as[0])
    data = results(report)
    data["execution_time"] = round(time.monotonic() - start)
    _write(results_path, data)
    print(json.dumps({k: v for k, v in data.items() if k != "tests"}, indent=2))
    return 0


def _write(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "build":
        print(f"wrote {build(Path(argv[1]))}")
        return 0
    if len(argv) == 3 and argv[0] == "grade":
        return grade(Path(argv[1]), Path(argv[2]))
    print("usage: python -m grading.gradescope build ZIP | grade SUBMISSION RESULTS_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
