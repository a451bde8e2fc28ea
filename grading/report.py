"""Per-student reports: ``report.json`` (everything) and ``report.md`` (for a human)."""
from __future__ import annotations

import json
from pathlib import Path

_MARK = {"pass": "PASS", "partial": "PARTIAL", "fail": "FAIL", "error": "ERROR", "timeout": "TIMEOUT",
         "skipped": "SKIPPED"}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    lines = [f"# {report['title']}", "",
             f"Student: **{report['student']}**  ", f"Score: **{report['score']:g} / {report['max_score']:g}**", "",
             f"Loading: {report['loading']}.  ", f"Harness: {report['harness']}.  ",
             f"Limits: {report['limits']['check_timeout']:g} s per check, "
             f"{report['limits']['cell_timeout']:g} s per notebook cell.", "",
             "| Check | Result | Points | Diagnostic |", "|---|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {_cell(c['title'])} (`{c['id']}`) | {_MARK.get(c['status'], c['status'])} | "
                     f"{c['points']:g} / {c['max_points']:g} | {_cell(c['message'])} |")
    problems = [c for c in report["checks"] if c["status"] not in ("pass", "skipped")]
    if problems:
        lines += ["", "## Details of the checks that did not pass", ""]
        for c in problems:
            lines += [f"### {c['title']} (`{c['id']}`): {_MARK.get(c['status'], c['status'])}", "", c["message"], ""]
            d = c["details"]
            if d.get("cell_source"):
                lines += [f"Code cell {d.get('cell')}:", "", "```python", d["cell_source"], "```", ""]
            for key in ("harness_report", "error", "output", "traceback", "stderr"):
                if d.get(key):
                    lines += [f"{key.replace('_', ' ').capitalize()}:", "", "```", d[key].rstrip(), "```", ""]
            if d.get("executed_notebook"):
                lines += [f"Executed notebook: `{d['executed_notebook']}`", ""]
    lines += ["", f"Graded in {report['seconds']:.1f} s.", ""]
    return "\n".join(lines)


def write_reports(report: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
