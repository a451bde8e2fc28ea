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
                   "sol:task1-b:### BEGIN SOLUTION Task 1: our split\nsplit = ours()\n### END SOLUTION",
                   "sol:task9:### BEGIN SOLUTION\nbest = pick()\n### END SOLUTION",
                   "sol:task10-b:md:**Analysis.**\n### BEGIN SOLUTION\nThe model is good.\n### END SOLUTION",
                   "sol:task10:md:Whole answer cell")
    out = release.release_notebook(nb, "t.ipynb")
    kept = [c for c in nb.cells if release.REFERENCE_ONLY not in c.metadata.get("tags", [])
            and release.grade_id(c) != "task1-b"]  # a task's second whole cell is folded into its first
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
    assert release.solution_lines(nb, "t.ipynb") == {"delta = 2 * (y_pred - y_true)", "data = load()", "split = ours()",
                                                     "best = pick()",
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
def _local_imports(student, tmp_path):
    """The hand-out's own modules its notebooks and the two test scripts import (modulefinder, libraries not searched)."""
    script = tmp_path / "all_code.py"
    code = [c.source for name in NOTEBOOKS for c in nbformat.read(student / name, as_version=4).cells
            if c.cell_type == "code"]
    script.write_text("\n".join(re.sub(r"(?m)^\s*[%!].*$", "", source) for source in code))
    finder = modulefinder.ModuleFinder(path=[str(student)])  # only the hand-out
    for path in [script, *(student / name for name in release.SCRIPTS)]:
        finder.run_script(str(path))
    return {Path(m.__file__).relative_to(student).as_posix() for name, m in finder.modules.items()
            if name != "__main__" and m.__file__}, finder.badmodules


def test_the_handout_holds_only_what_students_use(student, tmp_path):
    imported, unresolved = _local_imports(student, tmp_path)
    assert set(release.SCRIPTS) <= imported
    assert not [name for name in unresolved if name.split(".")[0] in ("inf265", "grading", "tests")], unresolved
    expected = {*NOTEBOOKS, *imported, "tools/check.py", "tools/executor.py", "README.md", "Makefile",
                "requirements.txt", "environment.yml", ".gitignore"}
    assert set(_files(student)) == expected
    assert (student / "tools/executor.py").read_bytes() == (ROOT / "inf265/executor.py").read_bytes()
    assert all(stat.S_IMODE((student / f).stat().st_mode) == 0o644 for f in expected)


def test_the_students_requirements_are_the_bundles_pins_of_what_they_need(student):
    lines = [x for x in (student / "requirements.txt").read_text().splitlines() if x and not x.startswith("#")]
    bundle = {x.split("==")[0].lower(): x.split(";")[0].strip()
              for x in (ROOT / "requirements.txt").read_text().splitlines() if "==" in x and not x.startswith("#")}
    assert [x.split("==")[0] for x in lines] == list(release.STUDENT_PACKAGES)
    assert all(bundle[x.split("==")[0]] == x for x in lines)
    for tool in ("bubblewrap", "typst", "pypdf", "hypothesis", "nbval", "pytest", "importnb"):
        assert tool not in (student / "requirements.txt").read_text()
    assert "-r requirements.txt" in (student / "environment.yml").read_text()


PLATFORMS = ("x86_64-manylinux_2_28", "aarch64-manylinux_2_28", "aarch64-apple-darwin", "x86_64-pc-windows-msvc")


def _index_reachable() -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_students_requirements_resolve_with_wheels_on_every_laptop(student, platform, tmp_path):
    """uv resolves the students' requirements for the platform, Python 3.11, wheels only (pip's --platform
    cannot: it evaluates torch's Linux-only markers on this machine)."""
    if not _index_reachable():
        pytest.skip("PyPI (https://pypi.org) cannot be reached from here: the resolution needs the index")
    uv = Path(sys.executable).with_name("uv")
    done = subprocess.run([str(uv), "pip", "compile", str(student / "requirements.txt"), "--python-platform", platform,
                           "--python-version", "3.11", "--only-binary", ":all:", "--no-header", "--quiet",
                           "--cache-dir", str(tmp_path / "uv-cache"), "-o", str(tmp_path / "resolved.txt")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MACOSX_DEPLOYMENT_TARGET": "14.0", "UV_NO_CONFIG": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = (tmp_path / "resolved.txt").read_text()
    for line in (student / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.search(rf"^{re.escape(line)}$", resolved, re.M | re.I), f"{line} not in the resolution"
    if platform.endswith(("darwin", "msvc")):
        assert "nvidia-" not in resolved  # CPU-only wheels there


def test_the_makefile_readme_and_check_carry_the_graders_cell_limit(student):
    limit = tomllib.loads((ROOT / "grading/rubric.toml").read_text())["limits"]["cell_timeout"]
    assert re.search(rf"^CELL_TIMEOUT\s*\?=\s*{limit:g}$", (student / "Makefile").read_text(), re.M)
    for name in ("Makefile", "README.md", "tools/check.py"):
        assert "{{" not in (student / name).read_text(), f"{name}: a placeholder was not filled"
    assert f"{limit:g} s" in (student / "README.md").read_text()


def test_the_readme_and_makefile_speak_only_of_what_students_have(student):
    readme, makefile = (student / "README.md").read_text(), (student / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.M))
    assert {"setup", "lab", "check", "run", "clean-venv"} <= targets
    mentioned = set(re.findall(r"`make ([a-z-]+)", readme)) | set(re.findall(r"^\s+make ([a-z-]+)", readme, re.M))
    assert mentioned <= targets, f"the README names make targets the Makefile does not have: {mentioned - targets}"
    for words in ("make check", "tools\\check.py", "py -3.11 -m venv", ".venv\\Scripts\\python", "download.pytorch.org/whl/cpu",
                  "GB", "Intel", "README.txt", "PDF", "DATA_DIR", "NotImplementedError", "YOUR ANSWER HERE"):
        assert words in readme, words
    for text in (readme, makefile, (student / "environment.yml").read_text(), (student / "tools/check.py").read_text()):
        assert not release.INSTRUCTOR_ONLY.search(text), release.INSTRUCTOR_ONLY.search(text)
    assert "/work" not in readme + makefile and "/root" not in readme + makefile


def test_the_zip_holds_the_folder_byte_for_byte_dated_by_the_build_mode_0644(dist, student, tmp_path):
    zip_path = dist / release.ZIP_NAME
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert names == [f"{release.ZIP_TOP}/{f}" for f in _files(student)]
        for info in archive.infolist():
            assert archive.read(info) == (student / info.filename.split("/", 1)[1]).read_bytes(), info.filename
            assert info.external_attr >> 16 == 0o100644 and info.date_time == release.build_date(), info
    if (ROOT / ".git").exists():  # in a git checkout: the last commit's date
        assert release.build_date() > (2020, 1, 1, 0, 0, 0)
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
def test_a_released_notebook_holds_no_solution_no_reference_cell_no_pragma(student, name):
    reference, released = _reference(name), nbformat.read(student / name, as_version=4)
    solution = release.solution_lines(reference, name)
    assert solution, f"{name} has no solution cell"
    lines = {line.strip() for c in released.cells for line in c.source.splitlines()}
    leaked = solution & lines
    assert not leaked, f"solution lines in the hand-out: {sorted(leaked)[:5]}"
    reference_only = {c.id for c in reference.cells if release.REFERENCE_ONLY in c.metadata.get("tags", [])}
    given = [c.id for c in reference.cells if c.id not in reference_only and not release.is_solution(c)]
    ids = [c.id for c in released.cells]
    assert [i for i in ids if i in given] == given and set(ids) <= {c.id for c in reference.cells} - reference_only
    for text in (c.source for c in released.cells):
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        assert not release.PRAGMA.search(text) and "NBVAL" not in text and "NBDEFS" not in text
        assert not release.INSTRUCTOR_ONLY.search(text), release.INSTRUCTOR_ONLY.search(text)
    assert all(c.outputs == [] and c.execution_count is None for c in released.cells if c.cell_type == "code")
    assert released.metadata.kernelspec == release.KERNELSPEC


def test_gradient_descent_has_one_cell_per_task_and_the_graded_signatures(student):
    released = nbformat.read(student / "gradient_descent.ipynb", as_version=4)
    ids = [release.grade_id(c) for c in released.cells if release.is_solution(c) and c.cell_type == "code"]
    assert ids == [f"task{n}" for n in range(1, 11)], ids  # one cell to write in per task, not per function of ours
    code = "\n".join(c.source for c in released.cells if c.cell_type == "code")
    for signature in ("class MyMLP(", "def train(n_epochs, optimizer, model, loss_fn, train_loader)",
                      "def train_manual_update(n_epochs, lr, model, loss_fn, train_loader, weight_decay"):
        assert signature in re.sub(r"\s+", " ", code).replace("( ", "("), signature


# ============================================================================================
# make check in the hand-out; the students' solutions through make check and the grader
# ============================================================================================
def test_make_check_on_the_handout_shows_each_cell_and_stops_at_a_stub(student, shared_data):
    before = {f: (student / f).read_bytes() for f in _files(student)}
    done = _make(student, "check")
    assert done.returncode != 0 and "check] Error 1" in done.stderr, done.stdout[-3000:] + done.stderr
    assert re.search(r"^  cell +\d+/\d+  \S.*  \d+\.\d s$", done.stdout, re.M), done.stdout[-2000:]  # progress
    for name in NOTEBOOKS:
        stop = re.search(rf"^   {re.escape(name)}: cell (\d+) \(`.*`\) raised (\w+): (.*)$", done.stdout, re.M)
        assert stop, f"{name} did not stop at a cell:\n{done.stdout[-2000:]}"
        # the stub itself, or the harness saying the function raised it
        assert "NotImplementedError" in stop[2] + stop[3], f"{name} stopped by {stop[2]}: {stop[3]}"
    last = done.stdout.rstrip().splitlines()[-1]
    assert re.match(r"^to fix \(1 more above\): backpropagation\.ipynb, cell \d+ \(`.*`\) raised \w+: .*"
                    r"NotImplementedError", last), last
    assert "public checks passed" not in done.stdout
    assert {f: (student / f).read_bytes() for f in _files(student)} == before, "make check changed the hand-out"


def test_make_check_applies_the_cell_limit(student, shared_data):
    done = _make(student, "check", "CELL_TIMEOUT=1", "NOTEBOOKS=gradient_descent.ipynb")
    assert done.returncode != 0, done.stdout[-2000:]
    assert re.search(r"^to fix: gradient_descent\.ipynb, cell \d+ \(`.*`\) ran longer than 1 s and was stopped \(the "
                     r"grader's limit per cell is 1 s", done.stdout, re.M), done.stdout[-2000:]


def _sections(path: Path) -> dict[str, str]:
    """A student fixture: ``# %% <grade_id>`` sections, each the source of that solution cell."""
    parts = re.split(r"(?m)^# %% (\S+)[ \t]*\n", path.read_text())
    return {gid: body.strip("\n") + "\n" for gid, body in zip(parts[1::2], parts[2::2])}


def _filled(student, tmp_path, answers: dict[str, dict[str, str]], name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(student, folder)
    for notebook, cells in answers.items():
        released = nbformat.read(folder / notebook, as_version=4)
        nbformat.write(release.fill(released, cells, notebook), folder / notebook)
    return folder


def _online_like_env(tmp_path) -> dict:
    """The environment of an online student, offline: torchvision's CIFAR-10 and MNIST downloads are served
    from the data folder (the grader's own sitecustomize, grading/course.py)."""
    from grading import course
    folder = course.build()
    return {**os.environ, "DATA_DIR": str(_data_dir()), "INF265_GRADING": "1", "INF265_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _grade(folder, tmp_path) -> dict:
    submission, out = tmp_path / "submission" / folder.name, tmp_path / "grading-out"
    submission.mkdir(parents=True)
    for name in NOTEBOOKS:
        (submission / name).write_bytes((folder / name).read_bytes())
    done = subprocess.run([sys.executable, "-m", "grading", str(submission), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    report = json.loads((out / submission.name / "report.json").read_text())
    return report | {"exit": done.returncode}


def test_the_references_backpropagation_passes_make_check_and_make_run_saves_it(student, tmp_path, shared_data):
    """The round trip of backpropagation.ipynb: the hand-out with the reference's solution cell put back.
    (gradient_descent.ipynb's reference cells use helpers of reference-only cells: the students' fixtures
    below are its round trip.) Without the course's test cells, make check says they did not run."""
    answers = {"backpropagation.ipynb": release.reference_answers(_reference("backpropagation.ipynb"))}
    folder = _filled(student, tmp_path, answers, "reference")
    path = folder / "backpropagation.ipynb"
    full = nbformat.read(path, as_version=4)
    untested = nbformat.read(path, as_version=4)
    untested.cells = [c for c in untested.cells if "main_test(" not in c.source]
    nbformat.write(untested, path)
    done = _make(folder, "check", "NOTEBOOKS=backpropagation.ipynb")
    assert done.returncode != 0 and re.search(r"^to fix: backpropagation\.ipynb, every cell ran, but the course's tests "
                                              r"of backpropagation .* did not print 'ALL TESTS PASSED'", done.stdout,
                                              re.M), done.stdout[-2000:]
    nbformat.write(full, path)
    done = _make(folder, "run", "NOTEBOOKS=backpropagation.ipynb")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"^   backpropagation\.ipynb: every cell ran in \d+ s, saved with its outputs$", done.stdout, re.M)
    assert done.stdout.rstrip().splitlines()[-1].startswith("public checks passed")
    saved = nbformat.read(path, as_version=4)
    assert [c.id for c in saved.cells] == [c.id for c in full.cells]
    assert "ALL TESTS PASSED" in "".join(o.get("text", "") for o in saved.cells[-1].outputs)


@pytest.mark.parametrize("name", sorted(p.name for p in STUDENTS.iterdir() if p.is_dir()) if STUDENTS.is_dir() else [])
def test_a_course_correct_student_passes_make_check_and_scores_full_marks(name, student, tmp_path, shared_data):
    """Each student of tests/fixtures/handout_students/ (written without the reference, in their own styles):
    both notebooks run top to bottom within the grader's limits, make check ends with "public checks passed",
    and the grader gives full marks on the course's checks."""
    answers = {f"{Path(nb).stem}.ipynb": _sections(STUDENTS / name / f"{Path(nb).stem}.py") for nb in NOTEBOOKS}
    folder = _filled(student, tmp_path, answers, name)
    done = _make(folder, "check", env=_online_like_env(tmp_path))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.rstrip().splitlines()[-1].startswith("public checks passed"), done.stdout[-1000:]
    report = _grade(folder, tmp_path)
    course = [c for c in report["checks"] if c["scope"] == "course"]
    failed = {c["id"]: f"{c['status']}: {c.get('message', '')}" for c in course if c["status"] != "pass"}
    assert not failed, f"grader exit {report['exit']}; course checks not passed: {failed}"
    assert report["score"] == report["max_score"] > 0
    assert {"notebook_backpropagation", "notebook_gradient_descent"} <= {c["id"] for c in report["checks"]}
