"""The grader on student-like submissions (tests/fixtures/students/): the instructor's verdicts.

Each fixture is written the way real students of this assignment write (their names, argument
orders, globals, helpers, downloads, split functions, class names, batch conventions), and
``verdicts.toml`` holds the verdict an instructor gives it, checked independently of the grader.
All are graded in one run of ``python -m grading`` (notebooks re-executed, two at a time); the
grader must give each task's verdict, the statuses the instructor is sure of, and messages that
name the real bug or environment problem. The gradebook must say the same.
"""
from __future__ import annotations

import csv
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


@pytest.fixture(scope="module")
def graded(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("students-out")
    env = dict(os.environ, DATA_DIR=str(Path(shared_data).resolve()))
    folders = [STUDENTS / name for name in VERDICTS]
    run = subprocess.run([sys.executable, "-m", "grading", *map(str, folders), "--out", str(out), "--jobs", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    reports = {name: json.loads((out / name / "report.json").read_text()) for name in VERDICTS}
    return {"run": run, "reports": reports, "out": out}


def test_the_batch_is_graded(graded):
    run = graded["run"]
    # not-gradable fixtures (missing packages here) make the exit status 1; nothing crashed
    assert run.returncode == (1 if any("not_gradable" in str(v) for v in VERDICTS.values()) else 0), run.stderr
    assert "Traceback" not in run.stderr, run.stderr


@pytest.mark.parametrize("name", list(VERDICTS))
def test_the_verdicts_are_the_instructors(graded, name):
    report, expected = graded["reports"][name], VERDICTS[name]
    checks = {c["id"]: c for c in report["checks"]}
    summary = {c["id"]: (c["status"], c["message"][:160]) for c in report["checks"]}
    for task in ("backpropagation", "train_manual_update"):
        assert report["tasks"][task] == expected[task], (name, task, expected["why"], summary)
    for check_id, status in expected.get("statuses", {}).items():
        assert checks[check_id]["status"] == status, (name, check_id, summary[check_id])
    for check_id, words in expected.get("messages", {}).items():
        assert words in checks[check_id]["message"].lower(), (name, check_id, words, summary[check_id])


def test_beyond_the_course_checks_never_change_a_course_verdict(graded):
    for name, report in graded["reports"].items():
        for c in report["checks"]:
            if c["scope"] == "beyond":
                assert c["max_points"] == 0, (name, c["id"])


def test_the_gradebook_has_every_student(graded):
    rows = list(csv.DictReader((graded["out"] / "grades.csv").open()))
    assert [r["student"] for r in rows] == sorted(VERDICTS)
    assert list(rows[0])[:5] == ["student", "score", "max_score", "backpropagation", "train_manual_update"]
    for row in rows:
        report = graded["reports"][row["student"]]
        assert float(row["score"]) == report["score"] and float(row["max_score"]) == report["max_score"]
        assert row["backpropagation"] == VERDICTS[row["student"]]["backpropagation"]
        assert row["train_manual_update"] == VERDICTS[row["student"]]["train_manual_update"]
        assert sum(float(row[c["id"]]) for c in report["checks"]) == pytest.approx(report["score"])


def test_every_report_prints_the_time_of_its_checks(graded):
    """Printed in every report; the 10 s target itself is measured by ``make bench`` on a quiet machine."""
    for name, report in graded["reports"].items():
        md = (graded["out"] / name / "report.md").read_text()
        assert f"took **{report['checks_seconds']:.1f} s**" in md
