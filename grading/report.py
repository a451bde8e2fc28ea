"""The grader's outputs: ``report.json`` and ``report.md`` per student, and the gradebook ``grades.csv``.

report.md quotes what came from a submission (messages with its exceptions, its code, its folder
name), never renders it: a quote is one line in a code span (:func:`code`), a block is fenced
longer than any fence inside it (:func:`block`), so no text of a student can make a heading, a
score line, a table row or a link of the report.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from . import deliverables, registry
from .checks.static import where
from .rubric import Rubric

MARK = {"pass": "PASS", "partial": "PARTIAL", "fail": "FAIL", "error": "ERROR", "timeout": "TIMEOUT",
        "skipped": "SKIPPED", "not_gradable": "NOT GRADABLE"}
#: gradebook columns for the two tasks of the course (course-scope checks only)
TASKS = ("backpropagation", "train_manual_update")
#: gradebook columns after the checks' points (grading.inbox, grading.policy, grading.deliverables)
EXTRA_COLUMNS = ("lms_user_id", "late", "late_deduction", "deliverables")


def build(student: str, submission: str, graded: dict, rubric: Rubric, sandbox_line: str, limits: dict,
          seconds: float) -> dict:
    """The report of one graded submission (``graded`` from :func:`grading.grade.grade`)."""
    checks = []
    for spec in registry.CHECKS:
        rec = graded["records"][spec.id]
        details = dict(rec.get("details") or {})
        fraction = details.get("fraction")
        checks.append({
            "id": spec.id, "title": rubric.titles[spec.id], "task": spec.task, "scope": spec.scope,
            "status": rec["status"], "points": rubric.score(spec.id, rec["status"], fraction),
            "max_points": rubric.points[spec.id], "message": rec.get("message", ""), "seconds": rec.get("seconds"),
            "details": details,
        })
    return {
        "student": student, "submission": submission, "title": rubric.title, "rubric": rubric.path,
        "sandbox": sandbox_line, "limits": limits, "step_seconds": graded["steps"],
        "checks_seconds": graded["steps"].get("checks"), "integrity": graded.get("integrity", {}),
        "runner_output": graded.get("notes", []), "checks": checks,
        "tasks": {task: task_status(checks, task) for task in TASKS},
        "score": round(sum(c["points"] for c in checks), 4), "max_score": rubric.total, "seconds": round(seconds, 1),
    }


def task_status(checks: list[dict], task: str) -> str:
    """``pass`` when every course check of the task passed, ``not_gradable`` when one could not be judged here."""
    mine = [c for c in checks if c["task"] == task and c["scope"] == "course"]
    if any(c["status"] == "not_gradable" for c in mine):
        return "not_gradable"
    return "pass" if mine and all(c["status"] == "pass" for c in mine) else "fail"


def not_gradable(student: str, submission: str, why: str, rubric: Rubric, sandbox_line: str) -> dict:
    """The report of a folder that is not a submission at all."""
    return {"student": student, "submission": submission, "title": rubric.title, "sandbox": sandbox_line,
            "not_gradable": why, "checks": [], "tasks": {t: "not_gradable" for t in TASKS},
            "score": None, "max_score": rubric.total}


def code(text, limit: int = 2000) -> str:
    """``text`` as one line in a Markdown code span (a table cell's ``|`` escaped)."""
    one = " ".join(str(text).split())
    one = one if len(one) <= limit else one[:limit] + " [...]"
    if not one:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", one)), default=0) + 1)
    return f"{fence} {one.replace('|', chr(92) + '|')} {fence}"


def inline(text) -> str:
    """``text`` as one line of plain Markdown text: the characters that could start code, emphasis,
    a link or HTML are escaped."""
    return re.sub(r"([\\`*\[\]<>|])", r"\\\1", " ".join(str(text).split()))


def block(text, info: str = "") -> list[str]:
    """``text`` as a fenced block whose fence no line of it can close."""
    body = str(text).rstrip()
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    return [fence + info, body, fence]


def markdown(report: dict) -> str:
    lines = [f"# {report['title']}", "", f"Student: **{inline(report['student'])}**  "]
    if report.get("not_gradable"):
        return "\n".join(lines + [f"**Not gradable**: {code(report['not_gradable'])}", "",
                                  f"Sandbox: {report['sandbox']}", *deliverables.markdown(report), ""])
    lines += [f"Score: **{report['score']:g} / {report['max_score']:g}**  ",
              "Tasks: " + ", ".join(f"{t} **{s}**" for t, s in report["tasks"].items()), "",
              f"Sandbox: {report['sandbox']}.  ",
              f"Limits: {report['limits']['check_cpu']:g} s of CPU per check, {report['limits']['cell_timeout']:g} s "
              f"per notebook cell, {report['limits']['resources']}.  ",
              f"Checks of the student's functions (without re-running the notebooks) took "
              f"**{report['checks_seconds']:.1f} s**; the whole grading {report['seconds']:.1f} s." + notebook_times(report),
              "",
              "| Check | Result | Points | Diagnostic |", "|---|---|---|---|"]
    for c in report["checks"]:
        scope = " (beyond the course)" if c["scope"] == "beyond" else ""
        lines.append(f"| {' '.join(c['title'].split()).replace('|', chr(92) + '|')}{scope} (`{c['id']}`) | {MARK.get(c['status'], c['status'])} | "
                     f"{c['points']:g} / {c['max_points']:g} | {code(c['message'])} |")
    lines += deliverables.markdown(report)
    found = {nb: f for nb, f in report.get("integrity", {}).items() if f}
    if found:
        lines += ["", "## Integrity", ""]
        for nb, findings in found.items():
            lines += [f"- {nb}, {code(where(f))}, line {f['line']}: {code(f['what'])} ({code(f['code'])})"
                      for f in findings[:20]]
    problems = [c for c in report["checks"] if c["status"] not in ("pass", "skipped")]
    if problems:
        lines += ["", "## Details of the checks that did not pass", ""]
        for c in problems:
            lines += [f"### {c['title']} (`{c['id']}`): {MARK.get(c['status'], c['status'])}", "",
                      f"Diagnostic: {code(c['message'], 8000)}", ""]
            d = c["details"]
            if d.get("cell_source"):
                lines += [f"Code cell {code(d.get('cell'))}:", "", *block(d["cell_source"], "python"), ""]
            for key in ("harness_report", "error", "output", "traceback"):
                if d.get(key):
                    lines += [f"{key.replace('_', ' ').capitalize()}:", "", *block(d[key]), ""]
            if d.get("executed_notebook"):
                lines += [f"Executed notebook: {code(d['executed_notebook'])}", ""]
    return "\n".join(lines) + "\n"


def notebook_times(report: dict) -> str:
    """How long each re-executed notebook ran (from the report's step times)."""
    steps = report.get("step_seconds") or {}
    times = [f"{cid.removeprefix('notebook_')}.ipynb {steps[cid]:.1f} s" for cid in sorted(steps)
             if cid.startswith("notebook_") and isinstance(steps[cid], (int, float))]
    return f"  \nNotebooks re-executed in: {', '.join(times)}." if times else ""


def write(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")


def read_all(out_root: Path) -> list[dict]:
    """The reports already in an output folder (``<out>/<student>/report.json``); unreadable ones skipped."""
    out = []
    for path in sorted(Path(out_root).glob("*/report.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "student" in data and "checks" in data and "tasks" in data:
            out.append(data)
    return out


def gradebook(reports: list[dict], manual: tuple[str, ...] = ()) -> str:
    """``grades.csv``: one row per student; task verdicts, then the points of every check, then the
    inbox's and the policies' columns: the LMS user id, late, the late deduction, the deliverables'
    points, the ``manual`` criteria's marks and the total (:func:`grading.outputs.total`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["student", "score", "max_score", *TASKS, *registry.IDS, *EXTRA_COLUMNS, *manual, "total"])
    for r in sorted(reports, key=lambda r: r["student"]):
        points = {c["id"]: c["points"] for c in r["checks"]}
        marks = r.get("manual") or {}
        deduction = r.get("late_deduction")
        writer.writerow([r["student"], "" if r["score"] is None else f"{r['score']:g}", f"{r['max_score']:g}",
                         *(r["tasks"][t] for t in TASKS), *(f"{points[i]:g}" if i in points else "" for i in registry.IDS),
                         r.get("lms_user_id", ""), "yes" if r.get("late") else "no",
                         "" if deduction is None else f"{deduction:g}",
                         f"{sum(d['points'] for d in r.get('deliverables', [])):g}",
                         *("" if marks.get(m) is None else f"{marks[m]:g}" for m in manual),
                         "" if r.get("total") is None else f"{r['total']:g}"])
    return out.getvalue()
