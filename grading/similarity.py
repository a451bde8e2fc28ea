"""Similar submissions, flagged for a person to read (never a change of score).

Across the class, the code of each graded function (``backpropagation``, ``train``,
``train_manual_update*``, the model class) and of each whole notebook is compared with copydetect
(winnowing, as MOSS does; names and literals are abstracted away, so renamed variables still
match), the hand-out's given code (the reference notebooks with their solution regions stubbed,
:func:`inf265.release.release_notebook`) as boilerplate so that the shared skeleton does not count.
A pair whose overlap is over the rubric's ``[similarity] threshold`` on both sides is listed,
with the overlapping lines, on the summary page.

The grader saves each student's code as ``OUT/<student>/code/<notebook>.py`` while the staged
submission exists; the comparison reads those, so batches graded one after the other are
compared as one class.
"""
from __future__ import annotations

import ast
import io
import json
import re
from functools import lru_cache
from itertools import combinations
from pathlib import Path

from inf265 import ROOT

from . import inbox

K, WINDOW = 20, 2          # k-gram length (tokens) and winnowing window
MIN_TOKENS = 60            # a unit shorter than this (a one-line function) is not compared
MIN_OVERLAP = 100          # tokens in common below which a pair is never flagged (a few standard lines)
GRADED = re.compile(r"^(backpropagation|train|train_manual_update\w*|MyMLP)$")
COMMON = 0.5               # in a class of 4 or more, code in this share of the submissions is boilerplate too


def notebook_code(path: Path) -> str | None:
    """The code cells of a notebook, IPython magics and shell lines left out; None when unreadable."""
    if not path.is_file() or inbox.unreadable(path):
        return None
    nb = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    cells = []
    for c in nb.get("cells", []):
        if c.get("cell_type") == "code":
            src = c.get("source", "")
            src = "".join(src) if isinstance(src, list) else str(src)
            cells.append("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return "\n\n".join(cells) + "\n"


def save(folder: Path, out_dir: Path) -> None:
    """``out_dir/code/<notebook>.py``: the student's code, for the class-wide comparison."""
    for name in inbox.NOTEBOOKS.values():
        code = notebook_code(folder / name)
        if code is not None:
            (out_dir / "code").mkdir(parents=True, exist_ok=True)
            (out_dir / "code" / f"{Path(name).stem}.py").write_text(code, encoding="utf-8")


def units(code: str, notebook: str) -> dict[str, str]:
    """The pieces compared: the whole notebook, and each graded function or class defined in it."""
    out = {notebook: code}
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return out
    lines = code.splitlines()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and GRADED.match(node.name):
            out[f"{notebook}: {node.name}"] = "\n".join(lines[node.lineno - 1:node.end_lineno]) + "\n"
    return out


@lru_cache(maxsize=1)
def boilerplate() -> tuple[int, ...]:
    """Fingerprints of the hand-out's given code (the reference notebooks, solutions stubbed)."""
    import nbformat

    from inf265.release import release_notebook

    hashes: set[int] = set()
    for name in inbox.NOTEBOOKS.values():
        path = ROOT / name
        if not path.is_file():
            continue
        released = release_notebook(nbformat.read(str(path), as_version=4), name)
        code = "\n\n".join(c.source for c in released.cells if c.cell_type == "code")
        hashes |= set(_fingerprint(code, name, ()).hashes)
    return tuple(sorted(hashes))


def _fingerprint(code: str, label: str, bp):
    from copydetect import CodeFingerprint

    return CodeFingerprint(f"{label}.py", K, WINDOW, boilerplate=list(bp), language="python", fp=io.StringIO(code))


def _lines(code: str, slices) -> list[list]:
    """``[[line number, text, copied]]`` for the lines of ``code`` (copied: inside an overlapping slice)."""
    copied = set()
    for start, end in zip(*slices):
        first = code.count("\n", 0, int(start))
        last = code.count("\n", 0, max(int(start), int(end) - 1))
        copied.update(range(first, last + 1))
    return [[i + 1, line, i in copied] for i, line in enumerate(code.splitlines())]


def pairs(codes: dict[str, dict[str, str]], threshold: float) -> list[dict]:
    """Pairs of students over ``threshold`` in some unit. ``codes``: student -> notebook -> code."""
    from copydetect import compare_files

    bp = set(boilerplate())
    pieces = {student: {u: t for nb, code in notebooks.items() for u, t in units(code, nb).items()}
              for student, notebooks in codes.items()}
    if len(pieces) >= 4:  # what most of the class has is the course's given code (MOSS's -m)
        counts: dict[int, int] = {}
        for student, mine in pieces.items():
            for h in set().union(*(_fingerprint(t, u, ()).hashes for u, t in mine.items())):
                counts[h] = counts.get(h, 0) + 1
        bp |= {h for h, n in counts.items() if n >= COMMON * len(pieces)}
    prints: dict[str, dict[str, tuple]] = {}
    for student, mine in pieces.items():
        for unit, text in mine.items():
            fp = _fingerprint(text, unit, bp)
            if fp.token_coverage >= MIN_TOKENS:
                prints.setdefault(student, {})[unit] = (fp, text)
    found = []
    for a, b in combinations(sorted(prints), 2):
        best = None
        for unit in prints[a].keys() & prints[b].keys():
            (fa, ta), (fb, tb) = prints[a][unit], prints[b][unit]
            if not fa.hashes or not fb.hashes:
                continue
            overlap, (sa, sb), (slices_a, slices_b) = compare_files(fa, fb)
            score = min(float(sa), float(sb))
            if score >= threshold and overlap >= MIN_OVERLAP and (best is None or score > best["similarity"]):
                best = {"a": a, "b": b, "unit": unit, "similarity": round(score, 3),
                        "shares": [round(float(sa), 3), round(float(sb), 3)], "tokens": int(overlap),
                        "a_lines": _lines(ta, slices_a), "b_lines": _lines(tb, slices_b)}
        if best:
            found.append(best)
    return sorted(found, key=lambda p: -p["similarity"])


def class_pairs(out_root: Path, students: list[str], threshold: float) -> list[dict]:
    """The pairs among the reports of ``out_root`` (their saved code)."""
    codes = {}
    for student in students:
        folder = out_root / student / "code"
        if folder.is_dir():
            codes[student] = {f"{p.stem}.ipynb": p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.py"))}
    return pairs(codes, threshold)
