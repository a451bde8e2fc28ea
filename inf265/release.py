"""The students' hand-out: ``python -m inf265.release [--out DIR]`` (``make release``).

Writes ``DIR/student/`` and ``DIR/inf265-project1-student.zip`` (default ``DIR`` = ``dist/``), built
from the reference notebooks with nbgrader's and nbconvert's own preprocessors (the notebook
mark-up is nbgrader's, so that ``nbgrader generate_assignment`` gives the same notebooks):

* cells tagged ``reference-only`` are removed (nbconvert's ``TagRemovePreprocessor``);
* solution cells (cell metadata ``nbgrader: {solution: true, grade_id: ...}``) are cleared by
  nbgrader's ``ClearSolutions``: each region between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` becomes a stub, a markdown answer "YOUR ANSWER HERE". Text after the BEGIN
  marker is the stub's message. A region inside code (the body of ``backpropagation``) becomes
  ``raise NotImplementedError("<message>")``; a region that is the whole cell (a task of
  gradient_descent.ipynb) becomes a one-line comment ``# <message>`` to write under;
* a task's further whole cells (``task8-b``, ``task8-c`` after ``task8``) are left out: students get one
  cell per task to write in (their design, not the reference's cells);
* outputs are cleared (nbgrader's ``ClearOutput``), pragmas (``# NBVAL_...``, ``# NBDEFS: ...``)
  are stripped, the kernelspec is ipykernel's; each cell keeps its ``id``.

The release refuses (:class:`RegionError`, :class:`ReleaseError`, naming the notebook and the cell
as JupyterLab counts it) a region outside a solution cell, unbalanced markers, a stub that breaks
the cell's syntax, and instructor-only text in anything that ships (``make test``, ``tests/``,
``report/``, ...). Only what students use ships: the two notebooks, the harness and the public
self-check with the modules of this folder they import (found by :mod:`modulefinder`), the
students' ``requirements.txt`` (the bundle's pins of :data:`STUDENT_PACKAGES`) and everything
under ``release/`` (README, Makefile, environment.yml, ``tools/check.py``), with
``tools/executor.py`` (:mod:`inf265.executor`, which ``tools/check.py`` runs notebooks with).
``{{CELL_TIMEOUT}}`` in ``release/`` files becomes the grader's time limit per cell
(``grading/rubric.toml``, ``[limits] cell_timeout``).

The build happens in a temporary folder inside ``DIR``; the folder and the zip replace the old
ones only once both are complete, so an interrupted build leaves the previous release as it was.
"""
from __future__ import annotations

import argparse
import ast
import copy
import modulefinder
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbconvert.preprocessors import TagRemovePreprocessor
from nbgrader.preprocessors import ClearOutput, ClearSolutions

from . import ROOT

NOTEBOOKS = ("backpropagation.ipynb", "gradient_descent.ipynb")
SCRIPTS = ("tests_backpropagation.py", "tests_gradient_descent.py")
"""The harness and the public self-check: shipped with the modules of this folder they import."""
SHIPPED_MODULES = {"inf265/executor.py": "tools/executor.py"}
"""Our modules the students' tools import, and where the hand-out has them."""
STUDENT_PACKAGES = ("torch", "torchvision", "matplotlib", "jupyterlab", "ipykernel", "nbclient", "nbformat")
"""What students install: the notebooks' libraries, JupyterLab, and what ``tools/check.py`` runs notebooks with."""
REFERENCE_ONLY = "reference-only"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
TEMPLATES = ROOT / "release"
RUBRIC = ROOT / "grading" / "rubric.toml"
DIST = ROOT / "dist"
FOLDER, ZIP_NAME, ZIP_TOP = "student", "inf265-project1-student.zip", "inf265-project1"
PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")

BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION\b(?P<rest>.*)$")
END = re.compile(r"^(?P<indent>[ \t]*)### END SOLUTION\b.*$")
PRAGMA = re.compile(r"^[ \t]*# *(NBVAL_[A-Z_]+|NBDEFS:.*)[ \t]*$")
INSTRUCTOR_ONLY = re.compile(r"\bmake (test|release|grade|report|bench|gradescope)\b|(?<![\w.])(tests|grading|report|"
                             r"results|inf265|bench|dist)/|\binf265\.\w|report\.typ|\bhand-?out\b|\bNBVAL_|\bNBDEFS\b|"
                             r"reference (solution|notebook)")
"""Text that speaks of our tools, folders or the reference: it never ships."""


class RegionError(ValueError):
    """Solution markers that cannot be stubbed; the message names the notebook, the cell and the line."""


class ReleaseError(RuntimeError):
    """The release cannot be built from this folder; the message says what is missing."""


# ============================================================================================
# solution regions and cells
# ============================================================================================
@dataclass(frozen=True)
class Region:
    """Lines ``start``..``end`` (the BEGIN and END markers) of cell ``cell`` (index among all cells)."""

    cell: int
    start: int
    end: int
    indent: str
    message: str
    whole_cell: bool

    def stub(self) -> str:
        """A comment to write under for a whole cell, else ``raise NotImplementedError(message)``."""
        if self.whole_cell:
            return f"# {self.message or 'YOUR CODE HERE'}"
        return f"raise NotImplementedError({self.message!r})" if self.message else "raise NotImplementedError()"


def where(name: str, nb, index: int, line: int | None = None) -> str:
    """A cell as JupyterLab counts it: its number among all cells from the top (and a line of it)."""
    first = next((x.strip() for x in nb.cells[index].source.splitlines() if x.strip()), "")
    text = f"{name}, cell {index + 1} (`{first[:50]}`)"
    return text + (f", line {line + 1}" if line is not None else "")


def _marked_spans(lines: list[str], at) -> list[tuple[int, int, str, str]]:
    """(BEGIN line, END line, indent, message or "") of each region of one cell's lines."""
    spans, begin = [], None
    for number, line in enumerate(lines):
        opening, closing = BEGIN.match(line), END.match(line)
        if opening and begin is not None:
            raise RegionError(f"{at(number)}: BEGIN SOLUTION inside the region opened on line {begin[0] + 1}; "
                              "regions cannot be nested: close the first one with ### END SOLUTION")
        if opening:
            begin = (number, opening["indent"], opening["rest"].strip().removeprefix(":").strip())
        elif closing and begin is None:
            raise RegionError(f"{at(number)}: END SOLUTION without a BEGIN SOLUTION above it in this cell")
        elif closing:
            if closing["indent"] != begin[1]:
                raise RegionError(f"{at(number)}: END SOLUTION is not indented like its BEGIN SOLUTION "
                                  f"(line {begin[0] + 1}); indent both markers like the code they enclose")
            spans.append((begin[0], number, begin[1], begin[2]))
            begin = None
    if begin is not None:
        raise RegionError(f"{at(begin[0])}: BEGIN SOLUTION without ### END SOLUTION in the same cell")
    return spans


def is_solution(cell) -> bool:
    """A cell students write in: nbgrader's cell metadata ``solution: true``."""
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution", False))


def grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def regions(nb, name: str) -> list[Region]:
    """Every solution region of the notebook, in order (``name`` is used in messages).

    Raises :class:`RegionError` for markers outside a solution cell, unbalanced or nested markers,
    and solution cells without a unique grade_id.
    """
    found, ids = [], {}
    for index, cell in enumerate(nb.cells):
        lines = cell.source.splitlines()
        spans = _marked_spans(lines, lambda n: where(name, nb, index, n))
        if is_solution(cell):
            gid = grade_id(cell)
            if not gid or gid in ids:
                raise RegionError(f"{where(name, nb, index)}: a solution cell needs its own nbgrader grade_id "
                                  + (f"(also used by cell {ids[gid] + 1})" if gid else "(none given)"))
            ids[gid] = index
        elif spans:
            raise RegionError(f"{where(name, nb, index, spans[0][0])}: a solution region outside a solution cell: "
                              "give the cell nbgrader's metadata (nbgrader: {solution: true, grade_id: ...})")
        inside = {n for start, end, *_ in spans for n in range(start, end + 1)}
        rest = [x for n, x in enumerate(lines) if n not in inside and x.strip() and not x.lstrip().startswith("#")]
        found += [Region(index, start, end, indent, message, whole_cell=cell.cell_type == "code" and not rest)
                  for start, end, indent, message in spans]
    return found


def solution_lines(nb, name: str) -> set[str]:
    """The stripped, non-blank lines of the solutions (regions, and solution cells without a region)
    that appear nowhere else in the notebook's given cells."""
    inside, outside = set(), set()
    marked = {r.cell: [] for r in regions(nb, name)}
    for r in regions(nb, name):
        marked[r.cell].append((r.start, r.end))
    for index, cell in enumerate(nb.cells):
        spans = marked.get(index, [(-1, len(cell.source.splitlines()))] if is_solution(cell) else [])
        for number, line in enumerate(cell.source.splitlines()):
            within = any(start < number < end for start, end in spans)
            marker = any(number in (start, end) for start, end in spans)
            if line.strip() and not marker and not PRAGMA.match(line):
                (inside if within else outside).add(line.strip())
    return inside - outside


def _parses(source: str) -> bool:
    try:
        ast.parse(_without_magics(source))
    except SyntaxError:
        return False
    return True


def _without_magics(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _strip_pragmas(source: str) -> str:
    return "".join(x for x in source.splitlines(keepends=True) if not PRAGMA.match(x))


def _cleared(cell, cell_regions: list[Region], index: int) -> str:
    """The cell's source through nbgrader's ClearSolutions, each region with its own stub: the source is
    cut after each region's END line, and each piece (one region in it) is cleared with that region's stub."""
    if not cell_regions:  # a solution cell without markers: nbgrader replaces it whole
        pieces, stubs = [cell.source], ["# YOUR CODE HERE"]
    else:
        lines, cuts = cell.source.split("\n"), [0] + [r.end + 1 for r in cell_regions]
        cuts[-1] = len(lines)
        pieces = ["\n".join(lines[a:b]) for a, b in zip(cuts, cuts[1:])]
        stubs = [r.stub() for r in cell_regions]
    cleared = []
    for piece, stub in zip(pieces, stubs):
        part = copy.deepcopy(cell)
        part.source = piece
        ClearSolutions(code_stub={"python": stub}).preprocess_cell(part, {"language": "python"}, index)
        cleared.append(part.source)
    return "\n".join(cleared)


def release_notebook(nb, name: str):
    """A copy of ``nb`` for students (see the module's docstring); cell ids kept."""
    found = regions(nb, name)  # validates the mark-up first, with our messages
    out = copy.deepcopy(nb)
    tasks = set()
    for index, cell in enumerate(out.cells):
        whole = any(r.cell == index and r.whole_cell for r in found)
        whole = whole and REFERENCE_ONLY not in cell.metadata.get("tags", [])
        task = (grade_id(cell) or "").split("-")[0]
        if whole and task in tasks:  # one cell to write in per task: the others go with the reference's cells
            cell.metadata["tags"] = [*cell.metadata.get("tags", []), REFERENCE_ONLY]
        tasks.update([task] if whole else [])
        if is_solution(cell):
            original = cell.source
            cell.source = _cleared(cell, [r for r in found if r.cell == index], index)
            if cell.cell_type == "code" and _parses(original) and not _parses(cell.source):
                raise RegionError(f"{where(name, nb, index)}: the cell is not valid Python once its regions are "
                                  "stubbed; put the markers around whole statements")
    out, _ = TagRemovePreprocessor(remove_cell_tags={REFERENCE_ONLY}).preprocess(out, {})
    out, _ = ClearOutput().preprocess(out, {})
    for cell in out.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.source = _strip_pragmas(cell.source)
    out.metadata.pop("widgets", None)
    out.metadata["kernelspec"] = dict(KERNELSPEC)
    _refuse_instructor_text(out, name)
    return out


def _refuse_instructor_text(nb, name: str) -> None:
    for index, cell in enumerate(nb.cells):
        for number, line in enumerate(cell.source.splitlines()):
            found = INSTRUCTOR_ONLY.search(line)
            if found:
                raise ReleaseError(f"{where(name, nb, index, number)} of the hand-out says `{found[0]}`, which is "
                                   "ours, not the students': tag the cell reference-only, or reword it")


def fill(released, answers: dict[str, str], name: str):
    """``released`` with the source of each solution cell named in ``answers`` (by grade_id) replaced by
    its answer (a student's work, or the reference's cells); the other cells are left as they are."""
    out = copy.deepcopy(released)
    cells = {grade_id(c): c for c in out.cells if is_solution(c)}
    unknown = sorted(set(answers) - set(cells))
    if unknown:
        raise RegionError(f"{name}: answers for cells the hand-out does not have: {', '.join(unknown)} "
                          f"(its solution cells: {', '.join(cells)})")
    for gid, answer in answers.items():
        cells[gid].source = answer
    return out


def reference_answers(nb) -> dict[str, str]:
    """The reference's solution cells by grade_id (what :func:`fill` puts back for a round trip)."""
    return {grade_id(c): c.source for c in nb.cells if is_solution(c)}


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


def local_modules(scripts: list[Path], root: Path = ROOT) -> list[str]:
    """The files (relative to ``root``) of the modules of ``root`` that ``scripts`` import, transitively,
    as the standard library's :mod:`modulefinder` finds them (libraries are not searched)."""
    finder = modulefinder.ModuleFinder(path=[str(root)])
    for script in scripts:
        finder.run_script(str(script))
    files = {Path(m.__file__).resolve() for name, m in finder.modules.items() if name != "__main__" and m.__file__}
    return sorted(f.relative_to(root.resolve()).as_posix() for f in files if f.is_relative_to(root.resolve()))


def _pins(requirements: Path | None = None) -> dict[str, str]:
    """``name: "name==version"`` of every package ``requirements`` (default the bundle's) pins."""
    requirements = requirements or ROOT / "requirements.txt"
    pins = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        found = re.match(r"^([A-Za-z0-9_.-]+)\s*==", line)
        if found:
            pins[found[1].lower()] = line.split(";")[0].split("#")[0].strip()
    return pins


def student_requirements(requirements: Path | None = None) -> str:
    """The students' requirements.txt: the bundle's pins of :data:`STUDENT_PACKAGES`, nothing else."""
    pins = _pins(requirements)
    missing = [name for name in STUDENT_PACKAGES if name not in pins]
    if missing:
        raise ReleaseError(f"requirements.txt pins no {', '.join(missing)}: the students' requirements take "
                           "their versions from it")
    return ("# The Python packages of the project (Python 3.11), with the versions the course tested.\n"
            "# Install them into a virtual environment: see README.md.\n" +
            "".join(f"{pins[name]}\n" for name in STUDENT_PACKAGES))


def _render(text: str, values: dict, name: str) -> str:
    missing = sorted({m for m in PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise ReleaseError(f"release/{name}: no value for {', '.join('{{' + m + '}}' for m in missing)} "
                           f"(known: {', '.join(values)})")
    return PLACEHOLDER.sub(lambda m: str(values[m[1]]), text)


def _templates() -> list[Path]:
    if not TEMPLATES.is_dir():
        raise ReleaseError(f"{TEMPLATES.name}/ not found: it holds the students' README, Makefile and tools/check.py")
    return sorted(p for p in TEMPLATES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(0o644)


def _source(name: str) -> bytes:
    path = ROOT / name
    if not path.is_file():
        raise ReleaseError(f"{name} not found: the release ships it")
    return path.read_bytes()


def write_tree(target: Path) -> dict[str, int]:
    """Write the hand-out into the empty folder ``target``; the number of solution cells per notebook."""
    stubs = {}
    with tempfile.TemporaryDirectory(prefix="inf265-release-") as tmp:
        scripts = [ROOT / name for name in SCRIPTS]
        for name in NOTEBOOKS:
            nb = nbformat.read(ROOT / name, as_version=4)
            released = release_notebook(nb, name)
            stubs[name] = sum(map(is_solution, released.cells))
            _write(target / name, nbformat.writes(released).encode("utf-8") + b"\n")
            code = Path(tmp) / f"{Path(name).stem}_code.py"
            code.write_text("\n".join(_without_magics(c.source) for c in released.cells if c.cell_type == "code"))
            scripts.append(code)
        shipped = local_modules(scripts)
    ours = [name for name in shipped if "/" in name]
    if ours:
        raise ReleaseError(f"the notebooks or the harness import {', '.join(ours)}, which students do not get: tag "
                           f"the importing cells {REFERENCE_ONLY}, or put what they need into the cells")
    for name in shipped:
        _write(target / name, _source(name))
    for name, where_to in SHIPPED_MODULES.items():
        _write(target / where_to, _source(name))
    _write(target / "requirements.txt", student_requirements().encode("utf-8"))
    pins = _pins()
    values = {"CELL_TIMEOUT": f"{cell_timeout():g}", "TORCH_PIN": pins["torch"], "TORCHVISION_PIN": pins["torchvision"]}
    for template in _templates():
        name = template.relative_to(TEMPLATES).as_posix()
        _write(target / name, _render(template.read_text(encoding="utf-8"), values, name).encode("utf-8"))
    return stubs


def build_date() -> tuple[int, int, int, int, int, int]:
    """The date of every zip entry: $SOURCE_DATE_EPOCH, else the last commit's date, else 1980-01-01
    (seconds rounded down to even: a zip stores dates to two seconds)."""
    stamp = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not stamp:
        try:
            stamp = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True,
                                   timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            stamp = ""
    if not stamp.isdigit():
        return (1980, 1, 1, 0, 0, 0)
    return max(time.gmtime(int(stamp) - int(stamp) % 2)[:6], (1980, 1, 1, 0, 0, 0))


def write_zip(folder: Path, path: Path) -> None:
    """``folder`` as a zip under ``ZIP_TOP/``: entries sorted, all with the build's date and mode 0644."""
    date = build_date()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{ZIP_TOP}/{file.relative_to(folder).as_posix()}", date)
            info.external_attr = (0o100000 | 0o644) << 16
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
    counts = ", ".join(f"{name} {n} solution cell{'s' * (n != 1)}" for name, n in stubs.items())
    print(f"wrote {out / FOLDER}/ and {out / ZIP_NAME} in {time.perf_counter() - start:.1f} s ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
