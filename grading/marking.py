"""What a person grades: the rubric's manual criteria, a marking sheet, and the filled sheet merged back.

The rubric's ``[manual.<id>]`` tables (``title``, ``points``: the maximum) declare the criteria
(default: the report's questions (a)-(g), clarity of the code, reporting, as the project text
names them). The grader writes ``OUT/marking_sheet.csv``: a row per student, the student's report,
a column per criterion (marks already given are kept), a comment. Given back filled::

    python -m grading.marking OUT FILLED_SHEET.csv

checks every mark (a number between 0 and the criterion's points), keeps the sheet as
``OUT/marks.csv`` and rewrites the gradebook, the LMS file and the summary page from the reports
already there: nothing is re-run, and a mark can be changed as often as needed. Without a sheet,
``python -m grading.marking OUT`` only rebuilds the class's files (e.g. after copying in reports
graded on other machines).
"""
from __future__ import annotations

import csv
import io
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from . import rubric as rubric_mod

SHEET = "marking_sheet.csv"
MARKS = "marks.csv"
FIXED = ("student", "lms_user_id", "report")


class MarksError(ValueError):
    """The filled sheet cannot be merged; the message names the row and column to fix."""


@dataclass
class Criterion:
    id: str
    title: str
    points: float


def criteria(rubric) -> list[Criterion]:
    out = []
    for cid, spec in (rubric.extras.get("manual") or {}).items():
        if not isinstance(spec, dict):
            raise rubric_mod.RubricError(f"{rubric.path}: [manual.{cid}] must be a table (title, points)")
        out.append(Criterion(cid, str(spec.get("title", cid)),
                             rubric_mod._number(spec.get("points", 0), f"manual.{cid}.points", Path(rubric.path))))
    return out


def read(path: Path, rubric) -> dict[str, dict]:
    """``{student: {criterion: mark or None, "comment": str}}`` from a filled sheet, every mark checked."""
    crits = {c.id: c for c in criteria(rubric)}
    try:
        rows = list(csv.DictReader(path.open(encoding="utf-8-sig", newline="")))
    except OSError as exc:
        raise MarksError(f"cannot read the marking sheet {path}: {exc}") from None
    if rows and "student" not in rows[0]:
        raise MarksError(f"{path}: no 'student' column; fill in the sheet the grader wrote ({SHEET})")
    out = {}
    for n, row in enumerate(rows, start=2):
        marks: dict = {"comment": (row.get("comment") or "").strip()}
        for cid, crit in crits.items():
            value = (row.get(cid) or "").strip()
            if not value:
                marks[cid] = None
                continue
            try:
                mark = float(value.replace(",", "."))
            except ValueError:
                raise MarksError(f"{path}, line {n}, column {cid}: {value!r} is not a number") from None
            if not 0 <= mark <= crit.points:
                raise MarksError(f"{path}, line {n}, column {cid}: {mark:g} is outside 0..{crit.points:g} "
                                 f"(the rubric's [manual.{cid}] points)")
            marks[cid] = mark
        out[row["student"].strip()] = marks
    return out


def sheet(reports: list[dict], rubric, marks: dict[str, dict]) -> str:
    """The marking sheet: a row per student, its report's path, the marks given so far."""
    crits = criteria(rubric)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*FIXED, *(c.id for c in crits), "comment"])
    for r in sorted(reports, key=lambda r: r["student"]):
        given = marks.get(r["student"], {})
        writer.writerow([r["student"], r.get("lms_user_id", ""), f"{r['student']}/report.md",
                         *("" if given.get(c.id) is None else f"{given[c.id]:g}" for c in crits),
                         given.get("comment", "")])
    return out.getvalue()


def main(argv=None) -> int:
    """``python -m grading.marking OUT [FILLED_SHEET.csv [RUBRIC]]``: merge a filled sheet (or, without
    one, rebuild the class's files from the reports in OUT)."""
    from . import outputs

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2, 3):
        print("usage: python -m grading.marking OUT [FILLED_SHEET.csv [RUBRIC]]", file=sys.stderr)
        return 2
    out_root = Path(argv[0]).resolve()
    filled = Path(argv[1]) if len(argv) > 1 else None
    try:
        rubric = rubric_mod.load(argv[2] if len(argv) > 2 else None)
        if filled is not None:
            read(filled, rubric)
    except (MarksError, rubric_mod.RubricError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not any(out_root.glob("*/report.json")):
        print(f"error: {out_root} holds no grading report (OUT/<student>/report.json): give the grader's --out folder",
              file=sys.stderr)
        return 2
    if filled is not None and filled.resolve() != (out_root / MARKS).resolve():
        shutil.copyfile(filled, out_root / MARKS)
    for line in outputs.finish(out_root, rubric):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
