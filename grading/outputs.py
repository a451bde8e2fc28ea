"""The class's files, written from the reports in the output folder (nothing is re-run):

- ``grades.csv``: the gradebook (:func:`grading.report.gradebook`), with the totals;
- ``canvas_grades.csv``: Canvas's gradebook import (``Student``, ``ID``, ``SIS User ID``,
  ``SIS Login ID``, ``Section`` and the assignment's column, as Canvas's own export has them);
- ``marking_sheet.csv``: the manual criteria to fill in (:mod:`grading.marking`);
- ``similarity.json``: the similar pairs (:mod:`grading.similarity`);
- ``index.html``: the summary page (:mod:`grading.summary`).

The total of a student: the checks' score, plus the deliverables' points, plus the manual marks,
minus the late deduction (never below 0).
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from inf265.results import atomic_write_bytes

from . import marking, report, similarity, summary

CANVAS_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")


def total(rep: dict, crits: list) -> tuple[float | None, float]:
    """(the student's total, the maximum)."""
    maximum = rep["max_score"] + sum(d["max_points"] for d in rep.get("deliverables", [])) + \
        sum(c.points for c in crits)
    if rep.get("score") is None:
        return None, maximum
    marks = rep.get("manual") or {}
    got = rep["score"] + sum(d["points"] for d in rep.get("deliverables", [])) + \
        sum(marks.get(c.id) or 0 for c in crits) - (rep.get("late_deduction") or 0)
    return round(max(0.0, got), 4), maximum


def canvas(reports: list[dict], assignment: str, points_possible: float) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CANVAS_COLUMNS, assignment])
    writer.writerow(["    Points Possible", "", "", "", "", f"{points_possible:g}"])
    for r in sorted(reports, key=lambda r: r["student"]):
        writer.writerow([r.get("lms_name") or r["student"], r.get("lms_user_id", ""), "", "", "",
                         "" if r.get("total") is None else f"{r['total']:g}"])
    return out.getvalue()


def finish(out_root: Path, rubric) -> list[str]:
    """Every class file from the reports in ``out_root``; returns the lines to print."""
    reports = report.read_all(out_root)
    crits = marking.criteria(rubric)
    marks = marking.read(out_root / marking.MARKS, rubric) if (out_root / marking.MARKS).is_file() else {}
    maximum = rubric.total
    for r in reports:
        r["manual"] = {k: v for k, v in marks.get(r["student"], {}).items() if k != "comment"}
        r["comment"] = marks.get(r["student"], {}).get("comment", "")
        r["total"], maximum = total(r, crits)
    write = lambda name, text: atomic_write_bytes(out_root / name, text.encode("utf-8"))  # noqa: E731
    write("grades.csv", report.gradebook(reports, tuple(c.id for c in crits)))
    lms = rubric.extras.get("lms") or {}
    write("canvas_grades.csv", canvas(reports, str(lms.get("assignment", rubric.title)), maximum))
    write(marking.SHEET, marking.sheet(reports, rubric, marks))
    threshold = float((rubric.extras.get("similarity") or {}).get("threshold", 0.8))
    pairs = similarity.class_pairs(out_root, [r["student"] for r in reports], threshold)
    write("similarity.json", json.dumps(pairs, indent=1) + "\n")
    write("index.html", summary.page(reports, pairs, rubric, crits, maximum))
    rel = lambda name: os.path.relpath(out_root / name)  # noqa: E731
    return [f"gradebook: {rel('grades.csv')} (Canvas import: {rel('canvas_grades.csv')})",
            f"summary page: {rel('index.html')}; marking sheet: {rel(marking.SHEET)}"
            + (f"; {len(pairs)} similar pair(s) flagged" if pairs else "")]
