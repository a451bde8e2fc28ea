"""The grader on student-like submissions (tests/fixtures/students/): the instructor's verdicts.

Each fixture is written the way real students of this assignment write (their names, argument
orders, globals, helpers, downloads, split functions, class names, batch conventions), and
``verdicts.toml`` holds the verdict an instructor gives it, checked independently of the grader.
All are graded in one run of ``python -m grading --no-notebooks`` (the task verdicts come from the
checks of the functions), and those whose verdict is about a notebook re-run (a correct one, and
the ones a missing package or module stops) again with their notebooks re-executed; the grader
must give each task's verdict, the statuses the instructor is sure of, and messages that name the
real bug or environment problem. The gradebook must say the same.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDENTS = ROOT / "tests" / "fixtures" / "students"
VERDICTS = tomllib.loads((STUDENTS / "verdicts.toml").read_text())


NOTEBOOK_CHECKS = ("notebook_backpropagation", "notebook_gradient_descent")
#: the packages whose absence some verdicts are about ("not gradable here: needs sklearn")
ABSENT_PACKAGES = {"sklearn": "sklearn", "seaborn": "seaborn"}


def _needs_absent(name) -> str | None:
    """The package a fixture's not-gradable verdict needs absent, when it is installed here (the verdict
    then does not apply on this machine), else None."""
    words = " ".join(VERDICTS[name].get("messages", {}).values())
    for word, module in ABSENT_PACKAGES.items():
        if word in words and importlib.util.find_spec(module) is not None:
            return module
    return None

def _notebook_statuses(name):
    return {s for c, s in VERDICTS[name].get("statuses", {}).items() if c in NOTEBOOK_CHECKS}


#: the fixtures whose notebooks are re-executed (each costs a kernel run per notebook): every one a
#: missing package or module stops (a package installed here does not), and the first whose own
#: main_test cell fails (a correct one, skeleton_conventions, is re-executed in test_grading.py's batch)
RERUN = [n for n in VERDICTS if "not_gradable" in _notebook_statuses(n) and not _needs_absent(n)] + \
    [next(n for n in VERDICTS if "error" in _notebook_statuses(n) and "not_gradable" not in _notebook_statuses(n))]


def _grade(folders, out, env, *args):
    return subprocess.run([sys.executable, "-m", "grading", *map(str, folders), "--out", str(out), "--jobs", "2",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def graded(tmp_path_factory, shared_data):
    out, rerun_out = tmp_path_factory.mktemp("students-out"), tmp_path_factory.mktemp("students-rerun")
    env = dict(os.environ, DATA_DIR=str(Path(shared_data).resolve()))
    run = _grade([STUDENTS / name for name in VERDICTS], out, env, "--no-notebooks")
    rerun = _grade([STUDENTS / name for name in RERUN], rerun_out, env)
    reports = {name: json.loads((out / name / "report.json").read_text()) for name in VERDICTS}
    for name in RERUN:
        reports[name] = json.loads((rerun_out / name / "report.json").read_text())
    return {"run": run, "rerun": rerun, "reports": reports, "out": out}


def test_the_batch_is_graded(graded):
    # not-gradable fixtures (missing packages here) make the exit status 1; nothing crashed
    for run in (graded["run"], graded["rerun"]):
        assert run.returncode in (0, 1), run.stderr
        assert "Traceback" not in run.stderr, run.stderr
    assert graded["rerun"].returncode == 1  # the missing packages and module


@pytest.mark.parametrize("name", list(VERDICTS))
def test_the_verdicts_are_the_instructors(graded, name):
    report, expected = graded["reports"][name], VERDICTS[name]
    if _needs_absent(name):
        # installed here (the rubric's [environment] packages are): graded like any other, and right, as its
        # "why" says; the verdicts.toml statuses are those of a machine without the package
        statuses = {c["id"]: c["status"] for c in report["checks"]}
        assert report["tasks"] == {"backpropagation": "pass", "train_manual_update": "pass"}, (name, statuses)
        assert "not_gradable" not in statuses.values(), (name, statuses)
        return
    checks = {c["id"]: c for c in report["checks"]}
    summary = {c["id"]: (c["status"], c["message"][:160]) for c in report["checks"]}
    for task in ("backpropagation", "train_manual_update"):
        assert report["tasks"][task] == expected[task], (name, task, expected["why"], summary)
    rerun = name in RERUN
    for check_id, status in expected.get("statuses", {}).items():
        if check_id in NOTEBOOK_CHECKS and not rerun:
            assert checks[check_id]["status"] == "skipped"  # not re-executed in this run
            continue
        assert checks[check_id]["status"] == status, (name, check_id, summary[check_id])
    for check_id, words in expected.get("messages", {}).items():
        if check_id in NOTEBOOK_CHECKS and not rerun:
            continue
        assert words in checks[check_id]["message"].lower(), (name, check_id, words, summary[check_id])


def test_beyond_the_course_checks_never_change_a_course_verdict(graded):
    for name, report in graded["reports"].items():
        for c in report["checks"]:
            if c["scope"] == "beyond":
                assert c["max_points"] == 0, (name, c["id"])


def test_the_gradebook_has_every_student(graded):
    rows = list(csv.DictReader((graded["out"] / "grades.csv").open()))  # (the run without notebooks)
    assert [r["student"] for r in rows] == sorted(VERDICTS)
    assert list(rows[0])[:5] == ["student", "score", "max_score", "backpropagation", "train_manual_update"]
    for row in rows:
        if _needs_absent(row["student"]):
            continue
        report = json.loads((graded["out"] / row["student"] / "report.json").read_text())
        assert float(row["score"]) == report["score"] and float(row["max_score"]) == report["max_score"]
        assert row["backpropagation"] == VERDICTS[row["student"]]["backpropagation"]
        assert row["train_manual_update"] == VERDICTS[row["student"]]["train_manual_update"]
        assert sum(float(row[c["id"]]) for c in report["checks"]) == pytest.approx(report["score"])


def test_every_report_prints_the_time_of_its_checks(graded):
    """Printed in every report; the 10 s target itself is measured by ``make bench`` on a quiet machine."""
    for name in VERDICTS:
        report = json.loads((graded["out"] / name / "report.json").read_text())
        md = (graded["out"] / name / "report.md").read_text()
        assert f"took **{report['checks_seconds']:.1f} s**" in md
