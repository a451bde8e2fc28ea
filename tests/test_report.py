"""The PDF report is built from the results files, not typed in.

Each test compiles ``report/report.typ`` on a temporary copy of ``report/`` and ``results/``
(the notebooks' real results: run ``make run`` first), changes the copy's results when it needs
to, and reads the PDF's text back with pypdf.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pytest
from pypdf import PdfReader

from inf265 import ROOT
from inf265.report import REQUIRED, ReportError, compile_pdf

GD = "results/gradient_descent.json"


def _require_results():
    missing = [name for name in (*REQUIRED, GD) if not (ROOT / name).is_file()]
    if missing:
        pytest.fail(f"results missing: {missing}; the report is built from the executed notebooks: "
                    "run `make run DATA_DIR=../shared/data` first")


@pytest.fixture
def root(tmp_path) -> Path:
    """A temporary project root holding a copy of report/*.typ and results/."""
    _require_results()
    (tmp_path / "report").mkdir()
    for source in [*(ROOT / "report").glob("*.typ"), ROOT / "report" / "authors.toml"]:
        shutil.copy(source, tmp_path / "report" / source.name)
    shutil.copytree(ROOT / "results", tmp_path / "results")
    return tmp_path


def build(root: Path) -> tuple[PdfReader, str]:
    """Compile the copy; return the reader and the raw text (lines kept)."""
    reader = PdfReader(BytesIO(compile_pdf(root / "report" / "report.typ", root)))
    return reader, "\n".join(page.extract_text() for page in reader.pages)


def flat(text: str) -> str:
    """Whitespace (including the no-break and thin spaces of the PDF) collapsed to single spaces."""
    return " ".join(text.split())


def edit_results(root: Path, change) -> dict:
    path = root / GD
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj, indent=2))
    return obj


def pdf_test_accuracy(text: str) -> float:
    m = re.search(r"Test accuracy of the selected model: (\d+\.\d\d) %", flat(text))
    assert m, "the PDF has no 'Test accuracy of the selected model: XX.XX %' sentence"
    return float(m.group(1))


def as_pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def shown_as_pct(x: float, text: str) -> bool:
    """``x`` appears as a percentage with two decimals (either rounding of an exact tie)."""
    return any(f"{100 * x + e:.2f} %" in text for e in (-1e-9, 1e-9))


def test_report_shows_the_selected_configuration_and_test_accuracy_of_the_results(root):
    gd = json.loads((root / GD).read_text())
    reader, text = build(root)
    assert 4 <= len(reader.pages) <= 8, f"the report has {len(reader.pages)} pages, expected 4-8"
    for q in "abcdefg":
        assert re.search(rf"^\({q}\) \S", text, re.M), f"no section heading '({q})' in the PDF"

    assert abs(pdf_test_accuracy(text) - 100 * gd["test_accuracy"]) <= 0.005 + 1e-9

    sel = gd["selected"]
    m = re.search(r"Selected configuration: (.+?) \(lr (\S+), momentum (\S+), weight decay (\S+)\), "
                  r"training accuracy (\d+\.\d\d) %, validation accuracy (\d+\.\d\d) %", flat(text))
    assert m, "the PDF has no 'Selected configuration: NAME (lr .., momentum .., weight decay ..)' sentence"
    name, lr, momentum, wd, train, val = m.groups()
    assert name == sel["name"]
    assert (float(lr), float(momentum), float(wd)) == (sel["lr"], sel["momentum"], sel["weight_decay"])
    assert abs(float(train) - 100 * sel["train_accuracy"]) <= 0.005 + 1e-9
    assert abs(float(val) - 100 * sel["val_accuracy"]) <= 0.005 + 1e-9
    # Every configuration's validation accuracy is in the table.
    for c in gd["configurations"]:
        assert shown_as_pct(c["val_accuracy"], flat(text)), f"{c['name']}: validation accuracy not in the PDF"


def test_changing_the_test_accuracy_in_the_results_changes_the_pdf(root):
    old_text = flat(build(root)[1])
    old = json.loads((root / GD).read_text())["test_accuracy"]
    old_s = as_pct(old)
    # A new value that appears nowhere in the current PDF.
    new = next(v for v in (old - 0.1234, old + 0.0567, old - 0.0321, 0.1234) if 0 <= v <= 1
               and as_pct(v) not in old_text)
    new_s = as_pct(new)
    edit_results(root, lambda gd: gd.update(test_accuracy=new))
    new_text = flat(build(root)[1])

    assert abs(pdf_test_accuracy(new_text) - 100 * new) <= 0.005 + 1e-9
    shown = new_text.count(new_s)
    assert shown >= 2, "the test accuracy should be shown in (f) and discussed in (g)"
    # Every place that showed the old value now shows the new one (other numbers may equal it).
    assert new_text.count(old_s) == old_text.count(old_s) - shown, f"{old_s} is still shown as test accuracy"


def test_the_dataset_sentence_is_computed_from_the_results(root):
    def full(gd):
        gd["dataset"].update(source="CIFAR-10", is_sample=False, n_train=8000, n_val=2000, n_test=2000,
                             n_train_all_classes=50000, n_test_all_classes=10000)
        gd["test_metrics"]["n_test"] = 2000

    def sample(gd):
        gd["dataset"].update(source="CIFAR-10 offline sample", is_sample=True)

    edit_results(root, sample)
    text = flat(build(root)[1])
    assert "CIFAR-10 offline sample, not from the full dataset" in text

    edit_results(root, full)
    text = flat(build(root)[1])
    assert "not from the full dataset" not in text and "offline sample, not" not in text
    assert "These results come from the full CIFAR-10: 8 000 training, 2 000 validation" in text


def test_the_configuration_table_follows_the_results(root):
    def rename(gd):
        gd["configurations"][0]["val_accuracy"] = 0.123456
        gd["configurations"][0]["train_accuracy"] = 0.654321

    edit_results(root, rename)
    text = flat(build(root)[1])
    assert "12.35 %" in text and "65.43 %" in text


def test_a_missing_results_file_fails_with_a_clear_error(root):
    (root / "results" / "backpropagation.json").unlink()
    with pytest.raises(ReportError, match=r"results/backpropagation.json \(written by backpropagation.ipynb\)"
                       r"[\s\S]*make run"):
        compile_pdf(root / "report" / "report.typ", root)


def test_a_missing_figure_fails_with_a_clear_error(root):
    gd = json.loads((root / GD).read_text())
    figure = gd["figures"]["confusion_matrix"]
    (root / figure).unlink()
    with pytest.raises(ReportError, match=re.escape(f"{figure} (written by gradient_descent.ipynb)")):
        compile_pdf(root / "report" / "report.typ", root)


def test_nan_in_the_results_fails_with_a_clear_error_and_null_is_shown_as_n_a(root):
    path = root / GD
    text = path.read_text()
    gd = json.loads(text)
    gd["test_metrics"]["precision"][gd["dataset"]["classes"][1]] = float("nan")
    path.write_text(json.dumps(gd))  # Python writes NaN, which is not JSON
    with pytest.raises(ReportError, match=r"gradient_descent.json is not valid JSON .*NaN"):
        compile_pdf(root / "report" / "report.typ", root)

    gd["test_metrics"]["precision"][gd["dataset"]["classes"][1]] = None
    path.write_text(json.dumps(gd))
    assert "n/a" in flat(build(root)[1])


def test_toy_problems_results_are_optional_and_read_when_present(root):
    toy = root / "results" / "toy_problems.json"
    toy.unlink(missing_ok=True)
    assert "toy_problems.json:" not in flat(build(root)[1])

    toy.write_text(json.dumps({"circles": {"max_curve_diff": 4.2e-13},
                               "depth6": {"sigmoid": {"grad_norms": [3.1e-05], "accuracy": 0.5125},
                                          "relu": {"grad_norms": [0.0456], "accuracy": 0.9875}}}))
    text = flat(build(root)[1])
    assert "differ by at most 4.2 × 10−13" in text
    assert "3.1 × 10−5 with sigmoid against 4.6 × 10−2 with ReLU" in text
    assert "51.25 % against 98.75 % accuracy" in text


def test_the_pdf_is_reproducible(root):
    """Same results, same bytes, in another process (no date, no system fonts)."""
    here = compile_pdf(root / "report" / "report.typ", root)
    code = ("import sys; from pathlib import Path; from inf265.report import compile_pdf; "
            "r = Path(sys.argv[1]); sys.stdout.buffer.write(compile_pdf(r / 'report' / 'report.typ', r))")
    there = subprocess.run([sys.executable, "-c", code, str(root)], cwd=ROOT, capture_output=True, check=True).stdout
    assert here == there


def test_the_committed_pdf_matches_the_results():
    """report/report.pdf was rebuilt after the notebooks (make run does both)."""
    _require_results()
    gd = json.loads((ROOT / GD).read_text())
    pdf = ROOT / "report" / "report.pdf"
    stale = "report/report.pdf does not show results/gradient_descent.json: rebuild it with `make report`"
    assert pdf.is_file(), "report/report.pdf is missing: run `make report`"
    text = flat("\n".join(page.extract_text() for page in PdfReader(pdf).pages))
    m = re.search(r"Test accuracy of the selected model: (\d+\.\d\d) %", text)
    assert m and abs(float(m.group(1)) - 100 * gd["test_accuracy"]) <= 0.005 + 1e-9, stale
    assert f"Selected configuration: {gd['selected']['name']} (" in text, stale


# ------------------------------------------------------------------ authors, numbering, figures


def _team(root: Path) -> dict:
    import tomllib

    return tomllib.loads((root / "report" / "authors.toml").read_text())


def test_authors_division_of_labour_and_collaboration_come_from_authors_toml(root):
    team = _team(root)
    reader, text = build(root)
    first = flat(reader.pages[0].extract_text())
    for author in team["authors"]:
        assert author["name"] in first, f"{author['name']} not on page 1"
    assert flat(team["kind"]) in first
    body = flat(text)
    assert "Authors, division of labour and collaboration" in body
    for key in ("division", "collaboration"):
        assert flat(team["statement"][key]) in body, f"the {key} statement is not in the PDF"
    for row in team["division"]:
        assert flat(row["part"]) in body

    path = root / "report" / "authors.toml"
    path.write_text(path.read_text().replace(team["authors"][0]["name"], "Ada Lovelace", 1)
                    + '\n[[authors]]\nname = "Alan Turing"\n')
    first = flat(build(root)[0].pages[0].extract_text())
    assert "Ada Lovelace" in first and "Alan Turing" in first


@pytest.mark.parametrize("change, message", [
    (lambda text: "", r"needs \[\[authors\]\]"),
    (lambda text: text.replace("collaboration = ", "collaboration_ = "), r"needs \[statement\] collaboration"),
    (lambda text: text.replace("[statement]", "[statement_]"), r"needs \[statement\] division"),
    (lambda text: text + "\n[[", r"not valid TOML"),
])
def test_an_incomplete_authors_file_fails_with_a_clear_error(root, change, message):
    path = root / "report" / "authors.toml"
    path.write_text(change(path.read_text()))
    with pytest.raises(ReportError, match=message):
        compile_pdf(root / "report" / "report.typ", root)
    path.unlink()
    with pytest.raises(ReportError, match=r"report/authors.toml is missing"):
        compile_pdf(root / "report" / "report.typ", root)


def test_equations_follow_the_project_text_numbers(root):
    """(4)-(7) are the project text's equations; the report's own are (R1), (R2), ..."""
    reader, text = build(root)
    first = flat(reader.pages[0].extract_text())
    for n in (4, 5, 6, 7):
        assert re.search(rf"= .*\({n}\)", first), f"the project text's equation ({n}) is not on page 1"
    own = sorted({int(n) for n in re.findall(r"\(R(\d+)\)", text)})
    assert len(own) >= 3 and own == list(range(1, len(own) + 1)), f"the report's own equations: {own}"
    assert "Equation (R" in flat(text), "the report's own equations are referenced as (R..)"
    assert "model.df[l](model.z[l])" in first, "the report must say how f' is computed"


def test_every_figure_and_table_is_referenced(root):
    text = flat(build(root)[1])
    for kind in ("Figure", "Table"):
        captions = re.findall(rf"{kind} (\d+):", text)
        assert captions, f"no {kind.lower()}"
        for n in captions:
            assert len(re.findall(rf"{kind} {n}\b(?!:)", text)) >= 1, f"{kind} {n} is never referenced"


def test_the_table_shows_train_manual_update_equal_to_train_for_every_configuration(root):
    gd = json.loads((root / GD).read_text())
    text = flat(build(root)[1])
    assert "manual = SGD" in text
    n = len(gd["configurations"])
    assert f"all parameters are bitwise equal in all {n + len(gd['manual_vs_sgd'])} runs" in text

    def differs(obj):
        obj["configurations"][2]["manual_identical"] = False

    name = edit_results(root, differs)["configurations"][2]["name"]
    text = flat(build(root)[1])
    assert "not identical" in text and name in text.split("not identical", 1)[1][:300]
    assert "all parameters are bitwise equal" not in text


# ------------------------------------------------------------------------- (g) and the table
def test_every_column_of_the_configuration_table_is_defined(root):
    text = flat(build(root)[1])
    for column in ("Train accuracy:", "val. accuracy:", "final train loss:", "manual = SGD:"):
        assert column in text, f"the table's caption does not define {column!r}"


def test_aggregates_say_over_which_rows_they_are_taken(root):
    gd = json.loads((root / GD).read_text())
    lr = max({c["lr"] for c in gd["configurations"]},
             key=lambda v: sum(c["lr"] == v for c in gd["configurations"]))
    rows = [i + 1 for i, c in enumerate(gd["configurations"]) if c["lr"] == lr]
    text = flat(build(root)[1])
    assert f"rows {rows[0]}–{rows[-1]} of Table 1" in text
    assert re.search(r"The gap between training and validation accuracy, averaged over the \d+ "
                     r"configurations at learning rate", text)


def _lowest_loss_sentence(text):
    return re.search(r"Row (\d+) has the lowest final training loss \((\S+)\) but a lower training "
                     r"accuracy \((\S+) %\)", text)


def test_the_row_with_the_lowest_loss_and_a_lower_accuracy_is_explained(root):
    gd = json.loads((root / GD).read_text())
    cfgs = gd["configurations"]
    lowest = min(range(len(cfgs)), key=lambda i: cfgs[i]["final_train_loss"])
    found = _lowest_loss_sentence(flat(build(root)[1]))
    if any(c["train_accuracy"] > cfgs[lowest]["train_accuracy"] for c in cfgs):
        assert found and int(found.group(1)) == lowest + 1
    else:
        assert not found

    def most_accurate(obj):
        obj["configurations"][lowest]["train_accuracy"] = 1.0

    edit_results(root, most_accurate)
    assert not _lowest_loss_sentence(flat(build(root)[1])), "nothing left to explain"


def test_the_oscillation_of_the_largest_step_is_computed_from_per_epoch_values(root):
    results = json.loads((root / GD).read_text())
    assert "the size of the swings is read from the figure here" in flat(build(root)[1]) or \
        "history" in results["configurations"][0] or "histories" in results
    assert "the size of the swings is read from the figure here" not in flat(build(root)[1]) or \
        "histories" not in results, "the notebook exports the histories: the report must use them"

    def add_histories(obj):
        cfgs = obj["configurations"]
        fastest = max(cfgs, key=lambda c: c["lr"])
        for c in cfgs:
            loss = [1.0 / (e + 1) for e in range(10)]
            val = [0.80] * 10
            if c is fastest:
                loss[6] = 3 * loss[5]  # epoch 7 jumps by 200 %
                val = [0.80, 0.80, 0.80, 0.80, 0.80, 0.70, 0.90, 0.75, 0.85, 0.80]
            c["history"] = {"train_loss": loss, "val_acc": val}

    edit_results(root, add_histories)
    text = flat(build(root)[1])
    assert "the training loss jumps back up in 1 epoch (7, by up to 200 %)" in text
    assert "over the last 5 epochs its validation accuracy swings between 70.00 % and 90.00 % " \
           "(20.0 points), against at most 0.0 points" in text


def test_the_sanity_checks_are_reported_when_the_results_hold_them(root):
    def add_sanity(obj):
        obj["sanity"] = {"initial_loss": 0.6912, "ln2": 0.693147,
                         "tiny_subset": {"images": 20, "steps": 200, "final_loss": 3.2e-08}}

    edit_results(root, add_sanity)
    text = flat(build(root)[1])
    assert re.search(r"The untrained MyMLP.s cross-entropy is 0\.691, close to ln 2", text)
    assert "trained on 20 training images alone for" in text  # a page may break the sentence
    assert "200 steps, it brings their loss down to 3.2" in text
