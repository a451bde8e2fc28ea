"""The students' hand-out (``make release``, :mod:`inf265.release`) and its ``make check``.

Built from the notebooks as they are: the tests hold for whatever solution regions the notebooks
have. The slow ones run the hand-out's notebooks in kernels: each stops at a stub with
NotImplementedError; with the reference's regions put back, they score full marks in the grader.
"""
import json
import modulefinder
import os
import re
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import nbformat
import pytest

from inf265 import ROOT, release

NOTEBOOKS = release.NOTEBOOKS
VENV = Path(sys.prefix)  # the venv running the tests: the hand-out's make reuses it (same requirements.txt)


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


def _messages(name):
    return [r.message for r in release.regions(_reference(name), name)]


def _make(folder, *args, timeout=600):
    return subprocess.run(["make", "--no-print-directory", *args, f"VENV={VENV}"], cwd=folder, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "DATA_DIR": str(_data_dir())})


def _data_dir():
    from inf265.data import data_dir
    return data_dir().resolve()


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ============================================================================================
# the regions convention
# ============================================================================================
def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbformat.v4.new_code_cell(c)
                for c in cells]
    return nb


def test_a_region_becomes_a_stub_at_its_indentation_and_comes_back():
    nb = _notebook("md:## 3. Training\nText.",
                   "def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION: Section 3.1, task 4: write f\n    y = x\n"
                   "    return y\n    ### END SOLUTION\n\nprint(1)",
                   "class A:\n    def g(self):\n        ### BEGIN SOLUTION\n        return 2\n        ### END SOLUTION")
    out = release.release_notebook(nb, "t.ipynb")
    assert out.cells[1].source == ("def f(x):\n    '''doc'''\n    raise NotImplementedError('Section 3.1, task 4: write f')\n"
                                   "\nprint(1)")
    # no message: composed from the heading above and the enclosing def
    assert out.cells[2].source == ("class A:\n    def g(self):\n        raise NotImplementedError("
                                   "'t.ipynb, section 3. Training: write the missing part of g()')")
    assert out.cells[0].source == nb.cells[0].source
    restored = release.restore_notebook(out, nb, "t.ipynb")
    assert [c.source for c in restored.cells] == [c.source for c in nb.cells]


@pytest.mark.parametrize("source, error", [
    ("### BEGIN SOLUTION: a\n### BEGIN SOLUTION: b\n### END SOLUTION", r"code cell 1 .*line 2: BEGIN SOLUTION inside"),
    ("x = 1\n### END SOLUTION", r"code cell 1 .*line 2: END SOLUTION without a BEGIN"),
    ("if True:\n    ### BEGIN SOLUTION: a\n    x = 1", r"line 2: BEGIN SOLUTION without ### END SOLUTION"),
    ("if True:\n    ### BEGIN SOLUTION: a\n    x = 1\n### END SOLUTION", r"line 4: END SOLUTION is not indented like"),
    ("x = (1,\n### BEGIN SOLUTION: a\n2)\n### END SOLUTION", r"not valid Python once its regions are stubbed"),
])
def test_bad_markers_are_a_clear_error_naming_notebook_and_cell(source, error):
    nb = _notebook("md:# T", "x = 0", source)
    with pytest.raises(release.RegionError, match=r"^bad\.ipynb, code cell 2 \(cell index 2\)") as err:
        release.release_notebook(nb, "bad.ipynb")
    assert re.search(error.replace("code cell 1", "code cell 2"), str(err.value)), str(err.value)


def test_restoring_into_an_edited_release_is_a_clear_error():
    nb = _notebook("def f():\n    ### BEGIN SOLUTION: write f\n    return 1\n    ### END SOLUTION")
    edited = release.release_notebook(nb, "e.ipynb")
    edited.cells[0].source = "def f():\n    return 0"
    with pytest.raises(release.RegionError, match=r"e\.ipynb: the stub `raise NotImplementedError\('write f'\)`"):
        release.restore_notebook(edited, nb, "e.ipynb")


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
