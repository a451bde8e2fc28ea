"""Build ``report/report.pdf`` from ``report/report.typ`` with the Typst compiler (PyPI ``typst``).

``python -m inf265.report`` (or ``make report``). The report reads ``results/*.json`` and
``results/*.png`` at compile time, so rebuilding after the notebooks updates every number.
The PDF is written through a temporary file: a failed compile leaves the previous PDF in place.
"""
from __future__ import annotations

import sys
from pathlib import Path

import typst

from . import ROOT
from .results import atomic_write_bytes

SOURCE = ROOT / "report" / "report.typ"
PDF = ROOT / "report" / "report.pdf"


def build(source: Path = SOURCE, output: Path = PDF, root: Path = ROOT) -> Path:
    pdf = typst.compile(str(source), root=str(root))
    return atomic_write_bytes(output, pdf)


def main(argv=None) -> int:
    try:
        out = build()
    except Exception as exc:  # typst.TypstError and friends
        print(f"error: the report did not compile: {exc}", file=sys.stderr)
        return 1
    print(f">> wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
