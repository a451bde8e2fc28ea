"""The students' hand-out: ``python -m inf265.release [--out DIR]`` (``make release``).

Writes ``DIR/student/`` and ``DIR/inf265-project1-student.zip`` (default ``DIR`` = ``dist/``):

* the two notebooks with every solution region replaced by a stub and their outputs cleared;
* the harness ``tests_backpropagation.py`` and the public self-check ``tests_gradient_descent.py``;
* the ``inf265`` modules the shipped notebooks and scripts import (found from their imports);
* ``requirements.txt``, ``environment.yml``, ``tools/ensure-venv.sh``;
* everything under ``release/`` (the students' README, Makefile and ``tools/check.py``), with
  ``{{CELL_TIMEOUT}}`` replaced by the grader's time limit per cell (``grading/rubric.toml``,
  ``[limits] cell_timeout``), so that the students' ``make check`` applies the grader's limit.

Solution regions (nbgrader's markers) are lines of a code cell between ::

    ### BEGIN SOLUTION: <what to write, with the section number>
    ...
    ### END SOLUTION

indented like the code they enclose. Each is replaced by ``raise NotImplementedError("<message>")``
at the BEGIN line's indentation; a BEGIN line without a message gets one composed from the
nearest markdown heading above and the enclosing ``def``/``class``. Nested or unbalanced markers
are a :class:`RegionError` naming the notebook and the cell. :func:`restore_notebook` puts the
regions back into a released notebook (the round trip the tests grade).

The build happens in a temporary folder inside ``DIR``; the folder and the zip replace the old
ones only once both are complete, so an interrupted build leaves the previous release as it was.
"""
from __future__ import annotations

import argparse
import ast
import copy
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

from . import ROOT

NOTEBOOKS = ("backpropagation.ipynb", "gradient_descent.ipynb")
COPIED = ("tests_backpropagation.py", "harness_core.py", "tests_gradient_descent.py", "requirements.txt", "environment.yml",
          "tools/ensure-venv.sh")
TEMPLATES = ROOT / "release"
RUBRIC = ROOT / "grading" / "rubric.toml"
DIST = ROOT / "dist"
FOLDER, ZIP_NAME, ZIP_TOP = "student", "inf265-project1-student.zip", "inf265-project1"
PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so that the same sources give the same zip

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION\b(?P<rest>.*)$")
END = re.compile(r"^(?P<indent>[ \t]*)### END SOLUTION\s*$")
_ENCLOSING = re.compile(r"^(?P<indent>[ \t]*)(?:async\s+)?(?P<kind>def|class)\s+(?P<name>\w+)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*#*\s*$")


class RegionError(ValueError):
    """Solution markers that cannot be stubbed; the message names the notebook, the cell and the line."""


class ReleaseError(RuntimeError):
    """The release cannot be built from this folder; the message says what is missing."""


# ============================================================================================
# solution regions
# ============================================================================================
@dataclass(frozen=True)
class Region:
    """Lines ``start``..``end`` (the BEGIN and END markers) of code cell ``cell`` (index among all cells)."""

    cell: int
    start: int
    end: int
    indent: str
    message: str

    def stub(self) -> str:
        return f"{self.indent}raise NotImplementedError({self.message!r})"


def _where(name: str, nb, index: int, line: int | None = None) -> str:
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    text = f"{name}, code cell {code.index(index) + 1} (cell index {index})"
    return text + (f", line {line + 1}" if line is not None else "")


def _marked_spans(lines: list[str], where) -> list[tuple[int, int, str, str]]:
    """(BEGIN line, END line, indent, message or "") of each region of one cell's lines."""
    spans, begin = [], None
    for number, line in enumerate(lines):
        opening, closing = BEGIN.match(line), END.match(line)
        if opening and begin is not None:
            raise RegionError(f"{where(number)}: BEGIN SOLUTION inside the region opened on line {begin[0] + 1}; "
                              "regions cannot be nested: close the first one with ### END SOLUTION")
        if opening:
            begin = (number, opening["indent"], opening["rest"].strip().removeprefix(":").strip())
        elif closing and begin is None:
            raise RegionError(f"{where(number)}: END SOLUTION without a BEGIN SOLUTION above it in this cell")
        elif closing:
            if closing["indent"] != begin[1]:
                raise RegionError(f"{where(number)}: END SOLUTION is not indented like its BEGIN SOLUTION "
                                  f"(line {begin[0] + 1}); indent both markers like the code they enclose")
            spans.append((begin[0], number, begin[1], begin[2]))
            begin = None
    if begin is not None:
        raise RegionError(f"{where(begin[0])}: BEGIN SOLUTION without ### END SOLUTION in the same cell")
    return spans


def _heading_above(nb, index: int) -> str | None:
    for cell in reversed(nb.cells[:index]):
        if cell.cell_type == "markdown":
            headings = [m["text"] for m in map(_HEADING.match, cell.source.splitlines()) if m]
            if headings:
                return headings[-1]
    return None


def _enclosing(lines: list[str], start: int, indent: str) -> str | None:
    for line in reversed(lines[:start]):
        match = _ENCLOSING.match(line)
        if match and len(match["indent"]) < len(indent):
            return f"{match['name']}()" if match["kind"] == "def" else f"class {match['name']}"
    return None


def _composed_message(name: str, nb, index: int, lines: list[str], start: int, indent: str) -> str:
    heading, enclosing = _heading_above(nb, index), _enclosing(lines, start, indent)
    section = f"section {heading}" if heading else f"code cell {index}"
    what = f"the missing part of {enclosing}" if enclosing else "the missing code of this cell"
    return f"{name}, {section}: write {what}"


def regions(nb, name: str) -> list[Region]:
    """Every solution region of the notebook, in order (``name`` is used in messages)."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        lines = cell.source.splitlines()
        for start, end, indent, message in _marked_spans(lines, lambda n: _where(name, nb, index, n)):
            message = message or _composed_message(name, nb, index, lines, start, indent)
            found.append(Region(index, start, end, indent, message))
    return found


def _stub_source(source: str, cell_regions: list[Region]) -> str:
    lines = source.splitlines(keepends=True)
    for region in reversed(cell_regions):
        ending = lines[region.end][len(lines[region.end].rstrip("\r\n")):]
        lines[region.start:region.end + 1] = [region.stub() + ending]
    return "".join(lines)


def _parses(source: str) -> bool:
    try:
        ast.parse(_without_magics(source))
    except SyntaxError:
        return False
    return True


def _without_magics(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def release_notebook(nb, name: str):
    """A copy of ``nb`` for students: each region stubbed, outputs and execution counts cleared."""
    found = regions(nb, name)
    out = copy.deepcopy(nb)
    for index, cell in enumerate(out.cells):
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        source = _stub_source(cell.source, [r for r in found if r.cell == index])
        if _parses(cell.source) and not _parses(source):
            raise RegionError(f"{_where(name, nb, index)}: the cell is not valid Python once its regions are "
                              "stubbed; put the markers around whole statements")
        cell.source, cell.outputs, cell.execution_count = source, [], None
    out.metadata.pop("widgets", None)
    return out


def restore_notebook(released, reference, name: str):
    """``released`` with the reference's solution regions put back in place of their stubs, in order.

    Raises :class:`RegionError` when a stub of the reference is missing from ``released``.
    """
    todo = []
    for region in regions(reference, name):
        lines = reference.cells[region.cell].source.splitlines(keepends=True)[region.start:region.end + 1]
        todo.append((region.stub(), "".join(lines).rstrip("\r\n")))
    out, k = copy.deepcopy(released), 0
    for cell in out.cells:
        if cell.cell_type != "code":
            continue
        lines = cell.source.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if k < len(todo) and line.rstrip("\r\n") == todo[k][0]:
                lines[i] = todo[k][1] + line[len(line.rstrip("\r\n")):]
                k += 1
        cell.source = "".join(lines)
    if k < len(todo):
        raise RegionError(f"{name}: the stub `{todo[k][0].strip()}` (region {k + 1} of {len(todo)}) is not in the "
                          "released notebook, in order; was the notebook edited?")
    return out


def solution_lines(nb, name: str) -> set[str]:
    """The stripped, non-blank lines of the regions that appear nowhere else in the notebook's code."""
    inside, outside = set(), set()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        lines = cell.source.splitlines()
        spans = [(r.start, r.end) for r in regions(nb, name) if r.cell == index]
        for number, line in enumerate(lines):
            within = any(start < number < end for start, end in spans)
            marker = any(number in (start, end) for start, end in spans)
            if line.strip() and not marker:
                (inside if within else outside).add(line.strip())
    return inside - outside


# ============================================================================================
# what is shipped
# ============================================================================================
def cell_timeout(rubric: Path | None = None) -> float:
    """The grader's time limit per notebook cell: ``[limits] cell_timeout`` of the rubric (default :data:`RUBRIC`)."""
    rubric = rubric or RUBRIC
    try:
        value = tomllib.loads(rubric.read_text(encoding="utf-8"))["limits"]["cell_timeout"]
    except FileNotFoundError:
        raise ReleaseError(f"{rubric} not found: the release's make check needs the grader's time limit per "
                           "cell ([limits] cell_timeout)") from None
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise ReleaseError(f"{rubric} has no readable [limits] cell_timeout ({type(exc).__name__}: {exc}); "
                           "add it, e.g. cell_timeout = 30") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ReleaseError(f"{rubric}: [limits] cell_timeout must be a positive number of seconds, got {value!r}")
    return value


def _imported_modules(source: str) -> set[str]:
    """Dotted names of the modules ``source`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(_without_magics(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _package_imports(path: Path) -> set[str]:
    """Modules of the ``inf265`` package that ``path`` (a module of it) imports, relative imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            base = f"inf265.{node.module}" if node.module else "inf265"
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names | _imported_modules(path.read_text(encoding="utf-8"))


def _module_file(name: str, root: Path) -> Path | None:
    if name != "inf265" and not name.startswith("inf265."):
        return None
    parts = name.split(".")
    path = root.joinpath(*parts[:-1], parts[-1] + ".py") if len(parts) > 1 else root / "inf265" / "__init__.py"
    return path if path.is_file() else None


def needed_modules(sources: list[str], root: Path = ROOT) -> list[str]:
    """The files (relative to ``root``) of the ``inf265`` modules ``sources`` import, transitively."""
    todo = [name for source in sources for name in _imported_modules(source)]
    files: set[Path] = set()
    while todo:
        path = _module_file(todo.pop(), root)
        if path is None or path in files:
            continue
        files.add(path)
        todo.extend(_package_imports(path))
    if files:
        files.add(root / "inf265" / "__init__.py")
    return sorted(str(p.relative_to(root)) for p in files)


def _render(text: str, values: dict, name: str) -> str:
    missing = sorted({m for m in PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise ReleaseError(f"release/{name}: no value for {', '.join('{{' + m + '}}' for m in missing)} "
                           f"(known: {', '.join(values)})")
    return PLACEHOLDER.sub(lambda m: str(values[m[1]]), text)


def _templates() -> list[Path]:
    if not TEMPLATES.is_dir():
        raise ReleaseError(f"{TEMPLATES} not found: it holds the students' README, Makefile and tools/check.py")
    return sorted(p for p in TEMPLATES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _copy(source: Path, target: Path) -> None:
    if not source.is_file():
        raise ReleaseError(f"{source.relative_to(ROOT)} not found: the release ships it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    shutil.copymode(source, target)


def write_tree(target: Path) -> dict[str, int]:
    """Write the hand-out into the empty folder ``target``; the number of stubs per notebook."""
    stubs, sources = {}, []
    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / name, as_version=4)
        stubs[name] = len(regions(nb, name))
        released = release_notebook(nb, name)
        nbformat.write(released, target / name)
        sources += [c.source for c in released.cells if c.cell_type == "code"]
    for name in COPIED:
        _copy(ROOT / name, target / name)
    values = {"CELL_TIMEOUT": f"{cell_timeout():g}"}
    for template in _templates():
        name = str(template.relative_to(TEMPLATES))
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(_render(template.read_text(encoding="utf-8"), values, name), encoding="utf-8")
        shutil.copymode(template, target / name)
    sources += [p.read_text(encoding="utf-8") for p in sorted(target.rglob("*.py"))]
    for name in needed_modules(sources):
        _copy(ROOT / name, target / name)
    return stubs


def write_zip(folder: Path, path: Path) -> None:
    """``folder`` as a zip under ``ZIP_TOP/``, entries sorted, fixed dates, file modes kept."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{ZIP_TOP}/{file.relative_to(folder).as_posix()}", ZIP_DATE)
            info.external_attr = (0o100000 | (0o755 if os.access(file, os.X_OK) else 0o644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, file.read_bytes())


# ============================================================================================
# the build
# ============================================================================================
def build(out: Path = DIST) -> dict[str, int]:
    """Build ``out/student/`` and ``out/<ZIP_NAME>``; the number of stubs per notebook."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".release-", dir=out) as tmp:
        staging, archive = Path(tmp) / FOLDER, Path(tmp) / ZIP_NAME
        staging.mkdir()
        stubs = write_tree(staging)
        write_zip(staging, archive)
        _publish(staging, archive, out, Path(tmp) / "previous")
    return stubs


def _publish(staging: Path, archive: Path, out: Path, previous: Path) -> None:
    """Swap the new folder and zip into ``out`` with SIGINT/SIGTERM held back (delivered after)."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        if (out / FOLDER).exists():
            (out / FOLDER).rename(previous)
        staging.rename(out / FOLDER)
        os.replace(archive, out / ZIP_NAME)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inf265.release", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DIST, help="folder of the release (default: dist/)")
    parser.add_argument("--cell-timeout", action="store_true",
                        help="only print the grader's time limit per cell (grading/rubric.toml) and exit")
    args = parser.parse_args(argv)
    try:
        if args.cell_timeout:
            print(f"{cell_timeout():g}")
            return 0
        start = time.perf_counter()
        stubs = build(args.out)
    except (ReleaseError, RegionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = args.out.resolve()
    counts = ", ".join(f"{name} {n} stub{'s' * (n != 1)}" for name, n in stubs.items())
    print(f"wrote {out / FOLDER}/ and {out / ZIP_NAME} in {time.perf_counter() - start:.1f} s ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
