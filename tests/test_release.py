"""The students' hand-out (``make release``, :mod:`inf265.release`) and its ``make check``.

The mark-up convention is tested on small notebooks built here; the hand-out itself is built from
the notebooks as they are. The slow tests run the hand-out's notebooks in kernels: each stops at a
stub; filled with the students' solutions of tests/fixtures/handout_students/, both notebooks run
top to bottom, make check ends with "public checks passed" and the grader gives full marks.
"""
import json
import modulefinder
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import nbformat
import pytest

from inf265 import ROOT, release

NOTEBOOKS = release.NOTEBOOKS
VENV = Path(sys.prefix)  # the venv running the tests: the hand-out's make uses it (VENV=...), never builds one
STUDENTS = ROOT / "tests" / "fixtures" / "handout_students"


def _reference(name):
    return nbformat.read(ROOT / name, as_version=4)


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """``python -m inf265.release --out DIR``, as ``make release`` runs it."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "inf265.release", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.match(r"wrote .*student/ and .*\.zip in [\d.]+ s", done.stdout), done.stdout
    return out


@pytest.fixture(scope="module")
def student(dist):
    return dist / release.FOLDER


def _code_lines(nb):
    return [line.strip() for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()]


def _make(folder, *args, timeout=900, env=None):
    return subprocess.run(["make", "--no-print-directory", *args, f"VENV={VENV}"], cwd=folder, capture_output=True,
                          text=True, timeout=timeout, env=env or {**os.environ, "DATA_DIR": str(_data_dir())})


def _data_dir():
    from inf265.data import data_dir
    return data_dir().resolve()


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ============================================================================================
# the mark-up contract, on small notebooks
# ============================================================================================
def _solution(cell, grade_id):
    cell.metadata["nbgrader"] = {"grade": False, "grade_id": grade_id, "locked": False, "schema_version": 3,
                                 "solution": True, "task": False}
    return cell


def _notebook(*cells):
    """Cells as strings: "md:" markdown, "ref:" tagged reference-only, "sol:ID:" an nbgrader solution cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    for text in cells:
        grade_id = None
        if text.startswith("sol:"):
            _, grade_id, text = text.split(":", 2)
        markdown = text.startswith("md:")
        reference = text.startswith("ref:")
        text = text.split(":", 1)[1] if markdown or reference else text
        cell = nbformat.v4.new_markdown_cell(text) if markdown else nbformat.v4.new_code_cell(text)
        if reference:
            cell.metadata["tags"] = [release.REFERENCE_ONLY]
        if isinstance(cell.get("outputs"), list):
            cell.outputs = [nbformat.v4.new_output("stream", text="out\n")]
            cell.execution_count = 3
        nb.cells.append(_solution(cell, grade_id) if grade_id else cell)
    return nb


BODY = ("def backpropagation(model, y_true, y_pred):\n    \'\'\'doc\'\'\'\n    # NBVAL_IGNORE_OUTPUT\n"
        "    ### BEGIN SOLUTION Section 2.1: write backpropagation\n    delta = 2 * (y_pred - y_true)\n"
        "    ### END SOLUTION\n")


def test_the_release_uses_nbgraders_markup_removes_reference_cells_and_keeps_ids():
    nb = _notebook("md:# Title", "# NBVAL_CHECK_OUTPUT\nimport torch", f"sol:backpropagation:{BODY}",
                   "ref:x = derivation()", "md:## Task 1 (section 3.1)",
                   "sol:task1:# NBDEFS: skip\n### BEGIN SOLUTION Task 1: load and analyse the data\n"
                   "data = load()\n### END SOLUTION",
                   "sol:task9:### BEGIN SOLUTION\nbest = pick()\n### END SOLUTION",
                   "sol:task10-b:md:**Analysis.**\n### BEGIN SOLUTION\nThe model is good.\n### END SOLUTION",
                   "sol:task10:md:Whole answer cell")
    out = release.release_notebook(nb, "t.ipynb")
    kept = [c for c in nb.cells if release.REFERENCE_ONLY not in c.metadata.get("tags", [])]
    assert [c.id for c in out.cells] == [c.id for c in kept]            # ids kept, the reference's cell gone
    sources = [c.source for c in out.cells]
    assert sources[1] == "import torch"                                  # pragma stripped
    assert sources[2] == ("def backpropagation(model, y_true, y_pred):\n    \'\'\'doc\'\'\'\n"
                          "    raise NotImplementedError(\'Section 2.1: write backpropagation\')\n")
    assert sources[4] == "# Task 1: load and analyse the data"           # a task cell: one line to write under
    assert sources[5] == "# YOUR CODE HERE"                              # nbgrader's stub without a message
    assert sources[6] == "**Analysis.**\nYOUR ANSWER HERE" and sources[7] == "YOUR ANSWER HERE"
    assert all(c.outputs == [] and c.execution_count is None for c in out.cells if c.cell_type == "code")
    assert out.metadata.kernelspec == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    assert all(c.metadata["nbgrader"]["solution"] for c in out.cells if release.grade_id(c))
    assert release.solution_lines(nb, "t.ipynb") == {"delta = 2 * (y_pred - y_true)", "data = load()", "best = pick()",
                                                     "The model is good.", "Whole answer cell"}


@pytest.mark.parametrize("source, error", [
    ("### BEGIN SOLUTION: a\n### BEGIN SOLUTION: b\n### END SOLUTION", r"line 2: BEGIN SOLUTION inside"),
    ("x = 1\n### END SOLUTION", r"line 2: END SOLUTION without a BEGIN"),
    ("if True:\n    ### BEGIN SOLUTION: a\n    x = 1", r"line 2: BEGIN SOLUTION without ### END SOLUTION"),
    ("if True:\n    ### BEGIN SOLUTION: a\n    x = 1\n### END SOLUTION", r"line 4: END SOLUTION is not indented like"),
    ("x = (1,\n### BEGIN SOLUTION: a\n2)\n### END SOLUTION", r"not valid Python once its regions are stubbed"),
])
def test_bad_markers_are_a_clear_error_naming_notebook_and_cell(source, error):
    nb = _notebook("md:# T", "x = 0", f"sol:t:{source}")
    with pytest.raises(release.RegionError, match=r"^bad\.ipynb, cell 3 \(`") as err:
        release.release_notebook(nb, "bad.ipynb")
    assert re.search(error, str(err.value)), str(err.value)


@pytest.mark.parametrize("cells, error", [
    (["def f():\n    ### BEGIN SOLUTION: a\n    return 1\n    ### END SOLUTION"],
     r"cell 1 .*line 2: a solution region outside a solution cell: give the cell nbgrader's metadata"),
    (["sol:t1:x = 1", "sol:t1:y = 2"], r"cell 2 .*needs its own nbgrader grade_id \(also used by cell 1\)"),
])
def test_regions_outside_solution_cells_and_shared_ids_are_refused(cells, error):
    with pytest.raises(release.RegionError, match=error):
        release.release_notebook(_notebook(*cells), "bad.ipynb")


@pytest.mark.parametrize("text", ["Run `make test` to check", "see tests/test_harness.py", "in report/report.typ",
                                  "the hand-out replaces it with raise NotImplementedError",
                                  "from inf265.data import get_cifar10", "# NBVAL_SKIP inside a sentence"])
def test_instructor_only_text_that_would_ship_is_refused(text):
    nb = _notebook("md:# T", f"md:Given text. {text}", f"ref:{text}")
    with pytest.raises(release.ReleaseError, match=r"x\.ipynb, cell 2 \(`Given text.*line 1 of the hand-out says "
                                                   r"`.+`, which is ours.*tag the cell reference-only"):
        release.release_notebook(nb, "x.ipynb")
    nb.cells[1].metadata["tags"] = [release.REFERENCE_ONLY]
    assert [c.source for c in release.release_notebook(nb, "x.ipynb").cells] == ["# T"]


def test_fill_puts_answers_into_the_solution_cells_by_grade_id():
    released = release.release_notebook(_notebook("x = 0", f"sol:backpropagation:{BODY}", "sol:task1:# t"), "f.ipynb")
    filled = release.fill(released, {"backpropagation": "def backpropagation(m, a, b):\n    pass"}, "f.ipynb")
    assert [c.source for c in filled.cells] == ["x = 0", "def backpropagation(m, a, b):\n    pass", "# YOUR CODE HERE"]
    with pytest.raises(release.RegionError, match=r"f\.ipynb: answers for cells the hand-out does not have: task7"):
        release.fill(released, {"task7": "x"}, "f.ipynb")


# ============================================================================================
# the hand-out's files
# ============================================================================================
def test_the_handout_holds_what_students_need_and_nothing_of_the_instructors(student):
    files = _files(student)
    for name in (*NOTEBOOKS, "tests_backpropagation.py", "tests_gradient_descent.py", "requirements.txt",
                 "environment.yml", "tools/ensure-venv.sh", "tools/check.py", "Makefile", "README.md",
                 "inf265/__init__.py", "inf265/data.py"):
        assert name in files, f"{name} not in the hand-out"
    for name in files:
        assert not name.startswith(("grading/", "results/", "tests/", "report/", "bench/", "dist/")), name
        assert not name.endswith((".pdf", "toy_problems.ipynb", "inf265/report.py", "inf265/toy.py",
                                  "inf265/release.py")), name
    assert (student / "requirements.txt").read_bytes() == (ROOT / "requirements.txt").read_bytes()
    assert (student / "tools/ensure-venv.sh").stat().st_mode & stat.S_IXUSR


def test_the_handout_ships_exactly_the_inf265_modules_its_code_imports(student, tmp_path):
    """Checked with the standard library's modulefinder on the notebooks' code and the shipped scripts."""
    script = tmp_path / "all_code.py"
    code = [c.source for name in NOTEBOOKS for c in nbformat.read(student / name, as_version=4).cells
            if c.cell_type == "code"]
    script.write_text("\n".join(re.sub(r"(?m)^\s*[%!].*$", "", source) for source in code))
    finder = modulefinder.ModuleFinder(path=[str(student)])  # only the hand-out: nothing else is scanned
    for path in [script, *(p for p in student.rglob("*.py") if p.parent.name != "inf265")]:
        finder.run_script(str(path))
    imported = {f"inf265/{m.split('.')[1]}.py" for m in finder.modules if m.startswith("inf265.")}
    shipped = {f for f in _files(student) if f.startswith("inf265/") and f != "inf265/__init__.py"}
    assert imported == shipped
    package = student / "inf265" / "__init__.py"
    defined = {}
    exec(compile(package.read_text(), str(package), "exec"), {"__file__": str(package)}, defined)  # ROOT, ...
    missing = [m for m in finder.badmodules if m.startswith("inf265.") and m.split(".")[1] not in defined]
    assert not missing, f"imported but not shipped: {missing}"


def test_the_makefile_and_readme_carry_the_graders_cell_limit(student):
    limit = tomllib.loads((ROOT / "grading/rubric.toml").read_text())["limits"]["cell_timeout"]
    makefile = (student / "Makefile").read_text()
    assert re.search(rf"^CELL_TIMEOUT\s*\?=\s*{limit:g}$", makefile, re.M)
    for name in ("Makefile", "README.md", "tools/check.py"):
        assert "{{" not in (student / name).read_text(), f"{name}: a placeholder was not filled"
    readme = (student / "README.md").read_text()
    for words in ("make lab", "make check", "NotImplementedError", "README.txt", "PDF", "DATA_DIR"):
        assert words in readme, words


def test_the_zip_holds_the_folder_byte_for_byte_and_is_reproducible(dist, student, tmp_path):
    zip_path = dist / release.ZIP_NAME
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert names == [f"{release.ZIP_TOP}/{f}" for f in _files(student)]
        for name in names:
            assert archive.read(name) == (student / name.split("/", 1)[1]).read_bytes(), name
        mode = archive.getinfo(f"{release.ZIP_TOP}/tools/ensure-venv.sh").external_attr >> 16
        assert mode & 0o111, "ensure-venv.sh lost its executable bit"
    release.build(tmp_path)
    assert (tmp_path / release.ZIP_NAME).read_bytes() == zip_path.read_bytes()


def test_an_interrupted_build_leaves_the_previous_release(tmp_path, monkeypatch):
    release.build(tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in _files(tmp_path)}

    def interrupted(folder, path):
        path.write_bytes(b"PK half")
        raise KeyboardInterrupt
    monkeypatch.setattr(release, "write_zip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        release.build(tmp_path)
    assert {f: (tmp_path / f).read_bytes() for f in _files(tmp_path)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [release.ZIP_NAME, release.FOLDER]


def test_a_rubric_without_the_cell_limit_is_a_clear_error(tmp_path, monkeypatch):
    rubric = tmp_path / "rubric.toml"
    rubric.write_text("[limits]\ncheck_timeout = 20\n")
    monkeypatch.setattr(release, "RUBRIC", rubric)
    with pytest.raises(release.ReleaseError, match=r"rubric\.toml has no readable \[limits\] cell_timeout"):
        release.build(tmp_path / "out")
    assert not (tmp_path / "out" / release.FOLDER).exists()


# ============================================================================================
# the hand-out's notebooks
# ============================================================================================
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_released_notebook_holds_no_solution_line(student, name):
    reference, released = _reference(name), nbformat.read(student / name, as_version=4)
    solution = release.solution_lines(reference, name)
    assert solution or not release.regions(reference, name)
    leaked = solution & set(_code_lines(released))
    assert not leaked, f"solution lines in the hand-out: {sorted(leaked)[:5]}"
    code = [c for c in released.cells if c.cell_type == "code"]
    assert not any("### BEGIN SOLUTION" in c.source or "### END SOLUTION" in c.source for c in code)
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    # the course's text and hints are kept: markdown cells unchanged
    assert [c.source for c in released.cells if c.cell_type == "markdown"] == \
           [c.source for c in reference.cells if c.cell_type == "markdown"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_stub_says_what_to_write_with_its_section(student, name):
    released = "\n".join(_code_lines(nbformat.read(student / name, as_version=4)))
    for message in _messages(name):
        assert re.search(r"\b[Ss]ection \d", message), message
        assert f"raise NotImplementedError({message!r})" in released


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_restoring_the_regions_gives_the_reference_code_back(student, name):
    restored = release.restore_notebook(nbformat.read(student / name, as_version=4), _reference(name), name)
    assert [c.source for c in restored.cells] == [c.source for c in _reference(name).cells]


# ============================================================================================
# make check in the hand-out, and the round trip through the grader
# ============================================================================================
def test_make_check_on_the_handout_stops_each_notebook_at_a_stub(student, shared_data):
    before = {f: (student / f).read_bytes() for f in _files(student)}
    done = _make(student, "check")
    assert done.returncode != 0 and "check] Error 1" in done.stderr, done.stdout[-3000:] + done.stderr
    for name in NOTEBOOKS:
        ran = re.search(rf"^{re.escape(name)}: code cell \d+ \(cell index \d+\).* raised (\w+): (.*)$",
                        done.stdout.split(">> 2.")[1], re.M)
        assert ran, f"{name} did not stop at a cell:\n{done.stdout[-2000:]}"
        assert ran[1] == "NotImplementedError", f"{name} stopped by {ran[1]}: {ran[2]}"
        assert ran[2] in _messages(name)
        assert re.search(rf"^{re.escape(name)}: (not written yet: .+|a check FAILED)", done.stdout, re.M)
    assert "problem(s) to fix before handing in" in done.stdout
    assert "public checks passed" not in done.stdout
    assert {f: (student / f).read_bytes() for f in _files(student)} == before, "make check changed the hand-out"


def test_make_check_applies_the_cell_limit(student, shared_data):
    done = _make(student, "check", "CELL_TIMEOUT=1", "NOTEBOOKS=gradient_descent.ipynb")
    assert done.returncode != 0 and "check] Error 1" in done.stderr, done.stderr
    assert re.search(r"^gradient_descent\.ipynb: code cell 1 \(cell index \d+\) ran longer than 1 s, the grader's "
                     r"limit per cell", done.stdout, re.M), done.stdout[-2000:]


@pytest.fixture(scope="module")
def restored(student, tmp_path_factory):
    """The hand-out with the reference's solution regions put back, as a student's finished folder."""
    folder = tmp_path_factory.mktemp("restored") / "restored_student"
    subprocess.run(["cp", "-a", str(student), str(folder)], check=True)
    for name in NOTEBOOKS:
        nbformat.write(release.restore_notebook(nbformat.read(folder / name, as_version=4), _reference(name), name),
                       folder / name)
    return folder


def test_make_check_passes_on_a_finished_backpropagation(restored, shared_data):
    done = _make(restored, "check", "NOTEBOOKS=backpropagation.ipynb")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "backpropagation.ipynb: public self-check passed" in done.stdout
    assert re.search(r"^backpropagation\.ipynb: ran top to bottom in \d+ s$", done.stdout, re.M)
    assert done.stdout.rstrip().endswith("(the grader runs more checks)")


def test_the_round_trip_scores_full_marks_in_the_grader(restored, tmp_path, shared_data):
    """What students hand in (the two notebooks, here with the reference's regions) gets full marks;
    the grader re-executes both notebooks, so they run top to bottom without the hand-out's other files."""
    submission, out = tmp_path / "submission", tmp_path / "grading-out"
    submission.mkdir()
    for name in NOTEBOOKS:
        (submission / name).write_bytes((restored / name).read_bytes())
    done = subprocess.run([sys.executable, "-m", "grading", str(submission), "--out", str(out), "--timeout", "600"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    report = json.loads((out / submission.name / "report.json").read_text())
    failed = {c["id"]: f"{c['status']}: {c.get('message', '')}" for c in report["checks"] if c["status"] != "pass"}
    assert not failed, f"grader exit {done.returncode}; checks not passed: {failed}"
    assert report["score"] == report["max_score"] > 0
    assert {"notebook_backpropagation", "notebook_gradient_descent"} <= {c["id"] for c in report["checks"]}
