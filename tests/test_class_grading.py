"""A class graded in one command from Canvas's bulk download (tests/canvas_class.py), and what the
instructor gets: the gradebook with the LMS's columns, Canvas's import file, the late policy, the
deliverables, the marking sheet merged back, similar pairs, the summary page in a real browser.
Checks only (--no-notebooks), to keep it short; the notebooks' re-execution is tested in
test_grading.py."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import nbformat
import pytest

from grading import deliverables, grade, marking, policy, similarity
from grading import rubric as rubric_mod

import canvas_class

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = canvas_class.FIXTURES
CHROMIUM = Path("/usr/bin/chromium")


def _run(*args, shared_data, module="grading"):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, DATA_DIR=str(shared_data)), timeout=900)


@pytest.fixture(scope="module")
def graded(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("class")
    times = base / "times.csv"
    times.write_text("student,submitted_at\nolsenper_1002,2025-02-22T12:01:00\n1001,2025-02-21T20:00:00+01:00\n")
    out = base / "out"
    run = _run(canvas_class.build(base), "--out", out, "--no-notebooks", "--jobs", "2", "--submitted-at", times,
               shared_data=shared_data)
    reports = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/report.json")}
    return {"run": run, "out": out, "reports": reports, "base": base}


def _rows(path: Path) -> dict:
    return {r["student"]: r for r in csv.DictReader(path.open())}


def test_every_file_goes_to_the_right_student(graded):
    run, reports = graded["run"], graded["reports"]
    assert run.returncode == 1, run.stdout + run.stderr  # 1: two students are not (fully) gradable
    assert set(reports) == {"hansenkari_1001", "olsenper_1002", "berglie_1003", "nilsenola_1004", "dahlsigrid_1005"}
    # the resubmitted, renamed skeleton_conventions: every check of the functions passes
    han = reports["hansenkari_1001"]
    assert han["tasks"] == {"backpropagation": "pass", "train_manual_update": "pass"}
    assert all(c["status"] in ("pass", "skipped") for c in han["checks"] if c["scope"] == "course")
    # the zipped project folder: backpropagation as a method of MyNet, found one level down
    ber = {c["id"]: c for c in reports["berglie_1003"]["checks"]}
    assert ber["load_backpropagation"]["status"] == "pass" and "inside the MyNet class" in ber["load_backpropagation"]["message"]
    assert "is not a submission" in reports["dahlsigrid_1005"]["not_gradable"]
    assert "files found: report.pdf" in reports["dahlsigrid_1005"]["not_gradable"]
    # not a terminal: one plain line per finished student, counted
    assert len(re.findall(r"^\[\d/5\] \w+_100\d", run.stdout, re.M)) == 5, run.stdout


def test_a_truncated_notebook_voids_only_its_own_checks(graded):
    report = graded["reports"]["nilsenola_1004"]
    checks = {c["id"]: c for c in report["checks"]}
    for cid in ("load_backpropagation", "backprop_by_hand", "backprop_toy", "backprop_mnist"):
        assert checks[cid]["status"] == "not_gradable"
        assert re.match(r"not gradable: backpropagation\.ipynb is not a valid notebook \(line \d+, column \d+\)",
                        checks[cid]["message"]), checks[cid]["message"]
    assert checks["load_gradient_descent"]["status"] == "pass"
    assert checks["manual_plain"]["status"] == "pass" and report["score"] > 0


def test_gradebook_and_canvas_import_file(graded):
    rows = _rows(graded["out"] / "grades.csv")
    assert rows["olsenper_1002"]["lms_user_id"] == "1002" and rows["olsenper_1002"]["late"] == "yes"
    assert rows["olsenper_1002"]["late_deduction"] == "6"  # 12:01 the day after the deadline
    assert rows["hansenkari_1001"]["late"] == "no" and rows["hansenkari_1001"]["late_deduction"] == "0"
    olsen = graded["reports"]["olsenper_1002"]
    assert float(rows["olsenper_1002"]["total"]) == olsen["score"] - 6
    with (graded["out"] / "canvas_grades.csv").open() as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section",
                        "Project 1: Backpropagation and Gradient Descent"]
    assert lines[1][0].strip() == "Points Possible"
    canvas = {row[1]: row for row in lines[2:]}
    assert set(canvas) == {"1001", "1002", "1003", "1004", "1005"}
    assert canvas["1002"][0] == "olsenper" and float(canvas["1002"][5]) == olsen["score"] - 6
    assert canvas["1005"][5] == ""  # not gradable: left for the instructor


def test_deliverables_are_flagged(graded):
    def status(student):
        return {d["id"]: d for d in graded["reports"][student]["deliverables"]}
    han, ber, ols = status("hansenkari_1001"), status("berglie_1003"), status("olsenper_1002")
    assert han["executed"]["status"] == "flagged" and "0 of" in han["executed"]["message"]  # handed in without outputs
    assert han["pdf_report"]["status"] == "flagged" and han["pdf_report"]["message"] == "no PDF report handed in"
    assert ber["pdf_report"]["status"] == "pass"
    assert graded["reports"]["berglie_1003"]["names"] == ["Kari Berg", "Ola Lie"]  # from the report's first page
    assert ols["readme"]["status"] == "pass" and "helpers.py" in ols["readme"]["message"]
    assert han["reproducible"]["status"] == "skipped"  # --no-notebooks
    assert all(d["points"] == 0 for d in han.values())  # default: flagged only


def test_a_filled_marking_sheet_merges_without_rerunning(graded, shared_data):
    out = graded["out"]
    sheet = list(csv.DictReader((out / marking.SHEET).open()))
    assert [r["student"] for r in sheet] == sorted(graded["reports"])
    assert sheet[0]["report"].endswith("/report.md") and "question_a" in sheet[0] and "reporting" in sheet[0]
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/report.json")}
    filled = graded["base"] / "filled.csv"
    with filled.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(sheet[0]))
        writer.writeheader()
        for row in sheet:
            if row["student"] == "hansenkari_1001":
                row.update(question_a="1", reporting="1.5", comment="clear <b>plots</b>")
            writer.writerow(row)
    run = _run(out, filled, module="grading.marking", shared_data=shared_data)
    assert run.returncode == 0, run.stderr
    rows = _rows(out / "grades.csv")
    han = graded["reports"]["hansenkari_1001"]
    assert rows["hansenkari_1001"]["question_a"] == "1" and rows["hansenkari_1001"]["reporting"] == "1.5"
    assert float(rows["hansenkari_1001"]["total"]) == han["score"] + 2.5
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/report.json")} == before  # nothing re-run
    assert "clear <b>plots</b>" in (out / marking.SHEET).read_text()  # the sheet keeps the marks
    page = (out / "index.html").read_text()
    assert "<b>plots</b>" not in page
    # a mark out of range is refused, naming the line and the column
    filled.write_text(filled.read_text().replace(",1.5,", ",9,"))
    bad = _run(out, filled, module="grading.marking", shared_data=shared_data)
    assert bad.returncode == 2 and "column reporting: 9 is outside 0..2" in bad.stderr, bad.stderr


def test_summary_page_renders_in_a_headless_browser(graded):
    page_file = graded["out"] / "index.html"
    html = page_file.read_text()
    for section in ("overview", "histogram", "pass-rates", "diagnoses", "not-gradable", "rules", "similar",
                    "students"):
        assert f'<section id="{section}">' in html
    assert "http://" not in html and "https://" not in html  # self-contained
    assert html.count('src="data:image/png;base64,') == 2
    assert 'href="dahlsigrid_1005/report.md"' in html
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: errors.append(f"request {r.url}") if not r.url.startswith(("file:", "data:"))
                    else None)
            page.goto(page_file.as_uri())
            for section in ("overview", "histogram", "pass-rates", "diagnoses", "not-gradable", "students"):
                assert page.locator(f"#{section}").is_visible()
            sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
            assert len(sizes) == 2 and all(done and width > 100 for done, width in sizes)
            assert page.locator("#not-gradable td", has_text="dahlsigrid_1005").count() == 1
            assert page.locator("#students a").count() == 5
            assert errors == []
        finally:
            browser.close()


# ------------------------------------------------------------------------------- the rules, in isolation

def test_late_policy_worked_examples_of_the_project_text():
    late = policy.LatePolicy.from_rubric(rubric_mod.load())
    oslo = ZoneInfo("Europe/Oslo")
    assert late.deduction(datetime(2025, 2, 21, 23, 59, tzinfo=oslo)) == 0
    assert late.deduction(datetime(2025, 2, 22, 0, 1, tzinfo=oslo)) == 4
    assert late.deduction(datetime(2025, 2, 22, 12, 1, tzinfo=oslo)) == 6
    assert late.deduction(datetime(2025, 2, 22, 11, 59, tzinfo=oslo)) == 4
    assert late.deduction(datetime(2025, 2, 21, 23, 0, tzinfo=ZoneInfo("UTC"))) == 4  # 00:00 in Oslo


def test_submission_times_from_canvas_api(monkeypatch):
    class Sub:
        def __init__(self, uid, when):
            self.user_id, self.submitted_at = uid, when

    seen = {}

    class FakeCanvas:
        def __init__(self, url, token):
            seen["auth"] = (url, token)

        def get_course(self, cid):
            seen["course"] = cid
            return self

        def get_assignment(self, aid):
            seen["assignment"] = aid
            return self

        def get_submissions(self):
            return [Sub(1002, "2025-02-22T11:01:00Z"), Sub(1003, None)]

    for name in ("CANVAS_URL", "CANVAS_TOKEN", "CANVAS_COURSE_ID", "CANVAS_ASSIGNMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(policy.PolicyError, match="CANVAS_URL, CANVAS_TOKEN"):
        policy.canvas_times(FakeCanvas)
    monkeypatch.setenv("CANVAS_URL", "https://mitt.uib.no")
    monkeypatch.setenv("CANVAS_TOKEN", "secret")
    monkeypatch.setenv("CANVAS_COURSE_ID", "42")
    monkeypatch.setenv("CANVAS_ASSIGNMENT_ID", "7")
    times = policy.canvas_times(FakeCanvas)
    assert seen == {"auth": ("https://mitt.uib.no", "secret"), "course": 42, "assignment": 7}
    assert list(times) == ["1002"]
    late = policy.LatePolicy.from_rubric(rubric_mod.load())
    assert late.deduction(times["1002"]) == 6  # 12:01 in Oslo


def _with_backprop(fixture: str, source: str) -> str:
    nb = nbformat.read(FIXTURES / fixture / "backpropagation.ipynb", 4)
    for cell in nb.cells:
        if "def backpropagation" in cell.source:
            cell.source = source
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_a_shared_function_with_renamed_variables_is_flagged_and_independent_work_is_not():
    original = nbformat.read(FIXTURES / "renamed_params_neuron_loops" / "backpropagation.ipynb", 4)
    fn = next(c.source for c in original.cells if "def backpropagation" in c.source)
    for old, new in {r"\bdelta\b": "local_grad", r"\bs\b": "acc", r"\bde\b": "err", r"\bW\b": "weights",
                     r"\bi\b": "u", r"\bj\b": "v", r"\bk\b": "q"}.items():
        fn = re.sub(old, new, fn)
    assert "local_grad" in fn and "delta" not in fn
    codes = {name: {"backpropagation.ipynb": similarity.notebook_code(FIXTURES / name / "backpropagation.ipynb")}
             for name in ("renamed_params_neuron_loops", "skeleton_conventions", "backprop_as_method",
                          "split_functions_sequential")}
    codes["copier"] = {"backpropagation.ipynb": _with_backprop("derivative_at_activation", fn)}
    pairs = similarity.pairs(codes, threshold=0.8)
    assert [(p["a"], p["b"]) for p in pairs] == [("copier", "renamed_params_neuron_loops")]
    copied = [text for _, text, hit in pairs[0]["a_lines"] if hit]
    assert any("local_grad" in line for line in copied)
    # two independent correct solutions: not flagged, whatever the class around them
    two = {k: codes[k] for k in ("skeleton_conventions", "renamed_params_neuron_loops")}
    assert similarity.pairs(two, threshold=0.8) == []


def test_reproducibility_says_which_cells_differ(tmp_path):
    def nb(values):
        cells = [nbformat.v4.new_code_cell(f"print({v})", execution_count=i + 1,
                                           outputs=[nbformat.v4.new_output("stream", text=f"{v} took 3.2 s\n")])
                 for i, v in enumerate(values)]
        return nbformat.v4.new_notebook(cells=cells)
    nbformat.write(nb([1, 2, 3]), tmp_path / "backpropagation.ipynb")
    (tmp_path / "executed").mkdir()
    fresh = nb([1, 5, 3])
    fresh.cells[0].outputs[0].text = "1 took 9.9 s\n"  # timings are sanitised (grading/nbval_sanitize.cfg)
    nbformat.write(fresh, tmp_path / "executed" / "backpropagation.ipynb")
    ok, message = deliverables.reproducible(tmp_path, tmp_path)
    assert ok is False and message == "backpropagation.ipynb: 2 of 3 code cells reproduce; differ: code cell(s) 2"


def test_a_missing_package_names_the_rubric_setting():
    reply = {"found": {}, "skipped": [{"cell": 1, "statement": "import sklearn", "error": "ModuleNotFoundError"}],
             "missing_modules": {"sklearn": ["sklearn"]}}
    rec, ok = grade._load_record(reply, "gradient_descent.ipynb", ["train"], ["train"])
    assert not ok and rec["status"] == "not_gradable"
    assert "sklearn" in rec["message"] and "[environment] packages (grading/rubric.toml)" in rec["message"]
    listed = subprocess.run([sys.executable, "-m", "grading.rubric", "--packages"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    assert {"numpy", "pandas", "scikit-learn", "seaborn", "tqdm"} <= set(listed)


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere():
    import io

    from grading import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    with progress.Bar(2, stream=tty) as bar:
        bar.done(["alice: 28 / 28", "  report: alice/report.md"])
        bar.done(["bob: NOT GRADABLE: empty"])
    text = tty.getvalue()
    assert "alice: 28 / 28\n  report: alice/report.md\n" in text and "bob: NOT GRADABLE" in text
    assert re.search(r"2/2 \[\d\d:\d\d<\d\d:\d\d\]", text), text  # elapsed < time left
    log = io.StringIO()
    with progress.Bar(2, stream=log) as bar:
        bar.done(["alice: 28 / 28"])
    assert log.getvalue() == "[1/2] alice: 28 / 28\n"


def test_gradescope_setup_installs_the_rubrics_packages():
    from grading import gradescope

    assert "-m pip install -r requirements.txt" in gradescope.SETUP_SH
    assert "-m pip install $(/autograder/venv/bin/python -m grading.rubric --packages)" in gradescope.SETUP_SH


@pytest.mark.parametrize("text, message", [
    ("[environment]\npackages = 'numpy'\n", "environment.packages must be a list of package names"),
    ("[limits]\nnotebook_timeout = 0\n", "limits.notebook_timeout must be at least 1"),
])
def test_bad_new_rubric_settings_are_rejected(tmp_path, text, message):
    path = tmp_path / "rubric.toml"
    path.write_text(text)
    with pytest.raises(rubric_mod.RubricError, match=re.escape(message)):
        rubric_mod.load(path)


def test_deliverables_are_read_by_a_bounded_child_and_never_through_a_link(tmp_path):
    """A hand-in's PDF and notebooks are parsed in a child under the static reading's limits (the grader
    never imports pypdf), and a file that is a link (here to the bundle's own report and notebook) is
    never read: it counts as missing."""
    sub = tmp_path / "sub"
    sub.mkdir()
    shutil.copy(ROOT / "report" / "report.pdf", sub / "report.pdf")
    (sub / "linked.pdf").symlink_to(ROOT / "report" / "report.pdf")
    shutil.copy(ROOT / "backpropagation.ipynb", sub / "backpropagation.ipynb")
    (sub / "gradient_descent.ipynb").symlink_to(ROOT / "gradient_descent.ipynb")
    files = ["report.pdf", "linked.pdf", "backpropagation.ipynb", "gradient_descent.ipynb"]
    code = ("import json, sys\nfrom pathlib import Path\nfrom grading import deliverables\n"
            f"found = deliverables.read_bounded(Path({str(sub)!r}), Path({str(sub)!r}), {files!r}, "
            f"Path({str(tmp_path / 'out')!r}))\n"
            "print(json.dumps({'found': found, 'pypdf': 'pypdf' in sys.modules}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    checks = answer["found"]["checks"]
    assert not answer["pypdf"]
    assert "report.pdf: a report" in checks["pdf_report"][1] and "linked.pdf: not a readable PDF" in checks["pdf_report"][1]
    assert checks["executed"][0] is False and "gradient_descent.ipynb: missing or unreadable" in checks["executed"][1]
    assert "backpropagation.ipynb: 17 of 17 code cells executed" in checks["executed"][1]
