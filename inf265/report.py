"""Build ``report/report.pdf`` from ``report/report.typ`` with the Typst compiler (PyPI ``typst``).

``python -m inf265.report`` (or ``make report``). The report reads ``results/*.json`` and
``results/*.png`` at compile time, so rebuilding after the notebooks updates every number.
The PDF is written through a temporary file: a failed compile leaves the previous PDF in place.

The results must exist first: a missing one stops the build with a message naming the notebook
that writes it (``make run`` executes the notebooks, then builds the report). The authors' names,
the division of labour and the collaboration statement come from ``report/authors.toml``; a
missing or incomplete file stops the build with a message saying what to fill in.

Only the fonts embedded in the Typst compiler are used and the document carries no date, so the
same results give the same PDF bytes on any machine.
"""
from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import typst

from . import ROOT
from .results import atomic_write_bytes

SOURCE = ROOT / "report" / "report.typ"
PDF = ROOT / "report" / "report.pdf"
# Beside report.typ: the authors, the division of labour and the collaboration statement.
AUTHORS = "authors.toml"

# Results files the report reads, relative to the root, and the notebook that writes each one.
# The figures of gradient_descent.json are listed in its "figures" entry and checked from there.
REQUIRED = {
    "results/gradient_descent.json": "gradient_descent.ipynb",
    "results/backpropagation.json": "backpropagation.ipynb",
    "results/bp_gradcheck_errors.png": "backpropagation.ipynb",
}


# Results the report uses when present (an extension notebook's); passed to Typst as sys.inputs.
OPTIONAL = {"toy_results": "results/toy_problems.json"}


class ReportError(RuntimeError):
    """The report cannot be built; the message says what is missing and what to do."""


def missing_results(root: Path = ROOT) -> list[str]:
    """The results files the report needs that are absent under ``root``, with their notebook."""
    root = Path(root)
    missing = [f"{name} (written by {nb})" for name, nb in REQUIRED.items() if not (root / name).is_file()]
    for name, nb in REQUIRED.items():
        if name.endswith(".json") and (root / name).is_file():
            obj = _read_json(root / name, name, nb)
            if name == "results/gradient_descent.json":
                missing += [f"{p} (written by {nb})" for p in obj.get("figures", {}).values()
                            if not (root / p).is_file()]
    return missing


def authors_problems(path: Path) -> list[str]:
    """What is missing from ``authors.toml`` (the report needs names, division of labour, collaboration)."""
    path = Path(path)
    if not path.is_file():
        return [f"report/{path.name} is missing: it gives the authors' names, the division of labour "
                "and the collaboration statement"]
    try:
        team = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        return [f"report/{path.name} is not valid TOML ({exc})"]
    problems = []
    authors = team.get("authors")
    if not isinstance(authors, list) or not authors or not all(
            isinstance(a, dict) and str(a.get("name", "")).strip() for a in authors):
        problems.append("[[authors]] entries, each with a name")
    statement = team.get("statement") if isinstance(team.get("statement"), dict) else {}
    for key in ("division", "collaboration"):
        if not str(statement.get(key, "")).strip():
            problems.append(f"[statement] {key} = \"...\"")
    if not str(team.get("kind", "")).strip():
        problems.append('kind = "..." (shown under the names on page 1)')
    return [f"report/{path.name} needs {p}" for p in problems]


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _read_json(path: Path, name: str, notebook: str):
    """Parse a results file as strict JSON (Typst rejects NaN and Infinity, so do we, clearly)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise ReportError(f"{name} is not valid JSON ({exc}); write null instead of NaN/Infinity "
                          f"and re-run {notebook} (make run)") from exc


def optional_inputs(root: Path = ROOT) -> dict[str, str]:
    """``sys.inputs`` for Typst: the optional results files present under ``root``."""
    return {key: name for key, name in OPTIONAL.items() if (Path(root) / name).is_file()}


def compile_pdf(source: Path = SOURCE, root: Path = ROOT) -> bytes:
    """Compile ``source`` with ``root`` as the Typst root and return the PDF bytes."""
    missing = missing_results(root)
    if missing:
        raise ReportError("the report needs results that are missing:\n  " + "\n  ".join(missing)
                          + "\nrun the notebooks first: make run (offline: make run DATA_DIR=../shared/data)")
    problems = authors_problems(Path(source).parent / AUTHORS)
    if problems:
        raise ReportError("\n".join(problems))
    try:
        return typst.compile(str(source), root=str(root), ignore_system_fonts=True,
                             sys_inputs=optional_inputs(root))
    except Exception as exc:  # typst.TypstError and friends
        detail = getattr(exc, "diagnostic", None) or str(exc)
        raise ReportError(f"{Path(source).name} did not compile:\n{detail}") from exc


def build(source: Path = SOURCE, output: Path = PDF, root: Path = ROOT) -> Path:
    """Compile the report and write it atomically to ``output``."""
    return atomic_write_bytes(output, compile_pdf(source, root))


def main(argv=None) -> int:
    try:
        out = build()
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f">> wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
