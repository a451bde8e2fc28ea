"""What the project text asks students to hand in, checked and reported (rubric ``[deliverables]``).

- ``executed``: both notebooks handed in executed, with their outputs visible;
- ``no_errors``: no error among those outputs;
- ``pdf_report``: a PDF report that is not an export of the notebooks (no ``In [n]:`` prompts,
  not mostly the notebooks' code);
- ``readme``: a README.txt when other files come with the notebooks and the report;
- ``reproducible``: nbval's comparison inside the box: each handed-in notebook's stored outputs
  against its sandboxed re-execution (``OUT/<student>/executed/``), sanitised with
  ``grading/nbval_sanitize.cfg``; which cells reproduce and which differ.

Each is a record with its points from the rubric (default 0: flagged for the instructor only).
Nothing here runs students' code: the notebooks are read as JSON, and the PDFs' text with pypdf, in a
child process under the static reading's limits (memory, CPU), so that no hand-in can take the
grader's own memory; a file reached through a link is never read (it counts as missing).
"""
from __future__ import annotations

import configparser
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from . import inbox

TITLES = {"executed": "Notebooks handed in executed, outputs visible",
          "no_errors": "No error in the handed-in outputs",
          "pdf_report": "A PDF report (not an export of the notebooks)",
          "readme": "README.txt explaining additional files",
          "reproducible": "Handed-in outputs reproduced by the re-execution (nbval)"}
SANITIZE = Path(__file__).resolve().parent / "nbval_sanitize.cfg"
PROMPT = re.compile(r"(In|Out)\s*\[\s*\d*\s*\]\s*:")


def _plain_file(path: Path) -> bool:
    """A regular file, neither it nor its folder a link (what a link points to is never read)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode) and not stat.S_ISLNK(os.lstat(path.parent).st_mode)
    except OSError:
        return False


def _code_cells(path: Path) -> list[dict] | None:
    if not _plain_file(path) or inbox.unreadable(path):
        return None
    nb = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    return [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def executed(folder: Path) -> tuple[bool, bool, str]:
    """(executed with outputs, free of errors, what was found)."""
    ok, clean, parts = True, True, []
    for name in inbox.NOTEBOOKS.values():
        cells = _code_cells(folder / name)
        if cells is None:
            ok = False
            parts.append(f"{name}: missing or unreadable")
            continue
        code = [c for c in cells if _source(c).strip()]
        run = [c for c in code if c.get("execution_count")]
        shown = [c for c in code if c.get("outputs")]
        errors = [i for i, c in enumerate(cells, 1) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
        if not shown or len(run) < len(code):
            ok = False
        clean = clean and not errors
        parts.append(f"{name}: {len(run)} of {len(code)} code cells executed, {len(shown)} with outputs"
                     + (f", errors in code cell(s) {', '.join(map(str, errors))}" if errors else ""))
    return ok, clean, "; ".join(parts)


def pdf_report(folder: Path, root: Path, files: list[str]) -> tuple[bool, str]:
    pdfs = [f for f in files if f.lower().endswith(".pdf")]
    if not pdfs:
        return False, "no PDF report handed in"
    code = {line.strip() for name in inbox.NOTEBOOKS.values() for c in (_code_cells(folder / name) or [])
            for line in _source(c).splitlines() if len(line.strip()) > 25}
    verdicts = []
    for rel in pdfs:
        text = _pdf_text(root / rel)
        if text is None:
            verdicts.append((False, f"{rel}: not a readable PDF"))
            continue
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        copied = sum(line in code for line in lines)
        export = bool(PROMPT.search(text)) or (lines and copied / len(lines) > 0.3)
        verdicts.append((not export, f"{rel}: {'looks like an export of the notebooks' if export else 'a report'}"
                                     f" ({len(lines)} lines of text, {copied} of them notebook code)"))
    return any(v for v, _ in verdicts), "; ".join(m for _, m in verdicts)


def _pdf_text(path: Path) -> str | None:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if not _plain_file(path):
        return None
    try:
        reader = PdfReader(path)
        return "\n".join((page.extract_text() or "") for page in reader.pages[:40])
    except (PdfReadError, OSError, ValueError, KeyError):  # a broken PDF is a finding, not a crash
        return None


def readme(files: list[str]) -> tuple[bool, str]:
    others = [f for f in files if not inbox.part_of(Path(f).name) and not f.lower().endswith(".pdf")
              and not Path(f).name.lower().startswith("readme")]
    if not others:
        return True, "no other files handed in (none needed)"
    has = any(Path(f).name.lower() == "readme.txt" for f in files)
    listing = ", ".join(others[:10]) + (" ..." if len(others) > 10 else "")
    return has, f"other files: {listing}; README.txt {'present' if has else 'missing'}"


def _sanitizers() -> list[tuple[re.Pattern, str]]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(SANITIZE, encoding="utf-8")
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


def _outputs(cell: dict, sanitizers) -> str:
    parts = []
    for o in cell.get("outputs", []):
        kind = o.get("output_type")
        if kind == "stream":
            parts.append(str("".join(o.get("text", "")) if isinstance(o.get("text"), list) else o.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            text = o.get("data", {}).get("text/plain", "")
            parts.append("".join(text) if isinstance(text, list) else str(text))
        elif kind == "error":
            parts.append(f"{o.get('ename')}: {o.get('evalue')}")
    out = "\n".join(parts)
    for regex, replace in sanitizers:
        out = regex.sub(replace, out)
    return out.strip()


def reproducible(folder: Path, out_dir: Path) -> tuple[bool | None, str]:
    """nbval's comparison: stored outputs against the sandboxed re-execution, per code cell."""
    sanitizers, parts, ok, compared = _sanitizers(), [], True, False
    for name in inbox.NOTEBOOKS.values():
        stored, fresh = _code_cells(folder / name), _code_cells(out_dir / "executed" / name)
        if stored is None or fresh is None:
            continue
        with_outputs = [i for i, c in enumerate(stored) if c.get("outputs")]
        if not with_outputs:
            parts.append(f"{name}: no stored outputs to compare")
            ok = False
            continue
        compared = True
        differ = [i + 1 for i in with_outputs
                  if i >= len(fresh) or _outputs(stored[i], sanitizers) != _outputs(fresh[i], sanitizers)]
        ok = ok and not differ
        parts.append(f"{name}: {len(with_outputs) - len(differ)} of {len(with_outputs)} code cells reproduce"
                     + (f"; differ: code cell(s) {', '.join(map(str, differ[:20]))}" if differ else ""))
    if not compared and not parts:
        return None, "not compared (the notebooks were not re-executed: --no-notebooks, or unreadable)"
    return ok, "; ".join(parts)


def check(folder: Path, root: Path, files: list[str], out_dir: Path) -> dict[str, tuple[bool | None, str]]:
    ran, clean, found = executed(folder)
    return {"executed": (ran, found), "no_errors": (clean, found), "pdf_report": pdf_report(folder, root, files),
            "readme": readme(files), "reproducible": reproducible(folder, out_dir)}


NAMES = re.compile(r"^[\s*#>_-]*(?:names?|authors?|students?|group(?: members)?|written by|by)[\s*_]*[:\-][\s*_]*"
                   r"(?P<names>.+)$", re.I | re.M)


def pair_names(folder: Path, root: Path, files: list[str]) -> list[str]:
    """The pair's names as they wrote them: an "Authors: A and B" line in the notebooks' markdown,
    else on the PDF report's first page; [] when neither says."""
    texts = []
    for name in inbox.NOTEBOOKS.values():
        path = folder / name
        if _plain_file(path) and not inbox.unreadable(path):
            nb = json.loads(path.read_text(encoding="utf-8", errors="replace"))
            texts += ["".join(c["source"]) if isinstance(c.get("source"), list) else str(c.get("source", ""))
                      for c in nb.get("cells", [])[:5] if c.get("cell_type") == "markdown"]
    for rel in [f for f in files if f.lower().endswith(".pdf")][:2]:
        text = _pdf_text(root / rel)
        texts.append((text or "")[:2000])
    for text in texts:
        found = NAMES.search(text)
        if found:
            parts = re.split(r"\s*(?:,|;|&|\band\b|\bog\b)\s*", found["names"].strip(" *_."))
            names = [p.strip(" *_.") for p in parts if 1 < len(p.strip(" *_.")) <= 60]
            if names:
                return names[:4]
    return []


def apply(report: dict, folder: Path, root: Path, files: list[str], out_dir: Path, rubric) -> None:
    """``report["deliverables"]``: one record per deliverable, with its points and a flag when missed;
    ``report["names"]``: the pair's names when the hand-in gives them."""
    found = read_bounded(folder, root, files, out_dir)
    report["names"] = found["names"]
    points = rubric.extras.get("deliverables") or {}
    out = []
    for did, (ok, message) in found["checks"].items():
        status = "skipped" if ok is None else "pass" if ok else "flagged"
        out.append({"id": did, "title": TITLES[did], "status": status, "message": message,
                    "max_points": float(points.get(did, 0)), "points": float(points.get(did, 0)) if ok else 0.0})
    report["deliverables"] = out


def read_bounded(folder: Path, root: Path, files: list[str], out_dir: Path) -> dict:
    """``{"checks": check(...), "names": pair_names(...)}``, read by a child process under the limits of
    the grader's static reading; a hand-in it cannot read within them is flagged on every deliverable."""
    from .checks.static import READ_MEMORY, READ_SECONDS, _child_limits

    question = json.dumps({"folder": str(folder), "root": str(root), "files": list(files), "out_dir": str(out_dir)})
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        run = subprocess.run([sys.executable, "-P", "-m", "grading.deliverables"], input=question.encode(), env=env,
                             capture_output=True, timeout=READ_SECONDS * 2, preexec_fn=_child_limits)
        if run.returncode == 0:
            found = json.loads(run.stdout)
            return {"checks": {k: tuple(v) for k, v in found["checks"].items()}, "names": found["names"]}
        why = (run.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit status {run.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        why = f"more than {READ_SECONDS * 2} s"
    except (ValueError, KeyError) as exc:
        why = f"unreadable result ({exc})"
    message = (f"not checked: the hand-in could not be read within the grader's limits ({READ_MEMORY >> 20} MiB, "
               f"{READ_SECONDS} s of CPU): {why[:200]}")
    return {"checks": {did: (False, message) for did in TITLES}, "names": []}


def _main() -> None:
    """python -m grading.deliverables < {"folder", "root", "files", "out_dir"}: read_bounded's child."""
    q = json.load(sys.stdin)
    folder, root, out_dir = Path(q["folder"]), Path(q["root"]), Path(q["out_dir"])
    json.dump({"checks": check(folder, root, q["files"], out_dir), "names": pair_names(folder, root, q["files"])},
              sys.stdout)


def markdown(report: dict) -> list[str]:
    """The report's "Hand-in" section: where the files came from, lateness, the deliverables (what
    comes from the student, names and file names among it, quoted as plain text, never rendered)."""
    from .report import inline

    lines = [f"- Names (from the hand-in): {inline(', '.join(report['names']))}"] if report.get("names") else []
    if report.get("lms_user_id"):
        lines.append(f"- LMS user id {inline(report['lms_user_id'])} ({inline(report.get('lms_name', ''))})")
    if report.get("late") or report.get("submitted_at"):
        when = f"submitted {inline(report['submitted_at'])}" if report.get("submitted_at") else "marked LATE by the LMS"
        deduction = report.get("late_deduction")
        lines.append(f"- {when}: " + ("late-policy deduction not applied (no submission time given)"
                                      if deduction is None else f"late-policy deduction {deduction:g} point(s)"))
    lines += [f"- {inline(note)}" for note in report.get("inbox_notes", [])]
    lines += [f"- {d['title']}: **{d['status']}** ({d['points']:g} / {d['max_points']:g}): {inline(d['message'])}"
              for d in report.get("deliverables", [])]
    return ["", "## Hand-in", "", *lines] if lines else []


if __name__ == "__main__":
    _main()
