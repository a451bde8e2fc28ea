"""The instructors' grader: its command line, its pieces, and the submissions that test its robustness.

The verdicts on student-like work are in test_grading_students.py, the attacks in
test_grading_attacks.py, the sandbox in test_sandbox.py. Here: a batch with folders that are not
submissions, an infinite loop, a syntax error, a notebook that fails half-way, a machine without
the sandbox, --no-sandbox written into the report, the rubric, the channel's validation of what
the runner sends, the static reading of the notebooks, the calls by parameter name, the SGD
diagnoses, and the Gradescope package run locally on a folder laid out like /autograder.
"""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

from grading import channel, registry
from grading import rubric as rubric_mod
from grading.checks import sgd, static
from grading.runner import calls

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
GOOD = FIXTURES / "students" / "skeleton_conventions"


def _env(shared_data, **extra):
    return dict(os.environ, DATA_DIR=str(Path(shared_data).resolve()), **extra)


def _grade(shared_data, *args, timeout=900, **env):
    return subprocess.run([sys.executable, "-m", "grading", *map(str, args)], cwd=ROOT, env=_env(shared_data, **env),
                          capture_output=True, text=True, timeout=timeout)


def _checks(report) -> dict:
    return {c["id"]: c for c in report["checks"]}


# ------------------------------------------------------------------------------- a batch

@pytest.fixture(scope="module")
def batch(tmp_path_factory, shared_data):
    """One run over good, bad and hostile-by-accident folders, as an instructor would start it."""
    base = tmp_path_factory.mktemp("batch")
    (base / "empty").mkdir()
    (base / "not_a_submission").mkdir()
    (base / "not_a_submission" / "report.pdf").write_bytes(b"%PDF-1.4")
    out = base / "out"
    folders = [GOOD, base / "missing", base / "empty", base / "not_a_submission",
               FIXTURES / "syntax_error", FIXTURES / "raises_halfway"]
    run = _grade(shared_data, *folders, "--out", out, "--jobs", "2")
    # alone, with short limits: the loop is stopped at 5 s of CPU in the check and 10 s in the cell
    loop = _grade(shared_data, FIXTURES / "infinite_loop", "--out", out, "--timeout", 10, "--check-timeout", 5)
    names = ["skeleton_conventions", "missing", "empty", "not_a_submission", "syntax_error", "raises_halfway",
             "infinite_loop"]
    reports = {n: json.loads((out / n / "report.json").read_text()) for n in names}
    return {"run": run, "loop": loop, "reports": reports, "out": out}


def test_folders_that_are_not_submissions_do_not_stop_the_batch(batch):
    run, reports = batch["run"], batch["reports"]
    assert run.returncode == 1, run.stdout + run.stderr  # 1: some folder was not gradable
    assert "not gradable here (see their reports): " in run.stderr
    assert "does not exist" in reports["missing"]["not_gradable"]
    assert "it is empty" in reports["empty"]["not_gradable"]
    assert "holds neither notebook" in reports["not_a_submission"]["not_gradable"]
    assert reports["skeleton_conventions"]["score"] == reports["skeleton_conventions"]["max_score"]
    rows = {r["student"]: r for r in csv.DictReader((batch["out"] / "grades.csv").open())}
    assert rows["empty"]["backpropagation"] == rows["empty"]["train_manual_update"] == "not_gradable"
    assert rows["empty"]["score"] == ""
    assert rows["skeleton_conventions"]["backpropagation"] == "pass"


def test_syntax_error_and_missing_notebook(batch):
    report = batch["reports"]["syntax_error"]
    checks = _checks(report)
    assert checks["load_backpropagation"]["status"] == "fail"
    assert "code cell 3" in checks["load_backpropagation"]["message"] or \
        "SyntaxError" in checks["load_backpropagation"]["message"], checks["load_backpropagation"]["message"]
    nb = checks["notebook_backpropagation"]
    assert nb["status"] == "error" and nb["details"]["cell"] == 3 and "SyntaxError" in nb["message"]
    for check_id in registry.ids(part="sgd") + ("notebook_gradient_descent",):
        assert checks[check_id]["status"] == "fail"
        assert "gradient_descent.ipynb is missing" in checks[check_id]["message"]
    assert report["score"] == 0


def test_a_notebook_failing_half_way_names_its_cell(batch):
    report = batch["reports"]["raises_halfway"]
    nb = _checks(report)["notebook_gradient_descent"]
    assert nb["status"] == "error"
    assert nb["details"]["cell"] == 9 and nb["details"]["cells_not_run"] == 1
    assert nb["message"].startswith("code cell 9 of 10: RuntimeError") and "(1 later code cell(s) not run)" in nb["message"]
    assert "compute_accuracy" in nb["details"]["cell_source"]
    assert (batch["out"] / "raises_halfway" / nb["details"]["executed_notebook"]).is_file()
    # its functions are right: only the notebook check fails
    assert report["tasks"] == {"backpropagation": "pass", "train_manual_update": "pass"}


def test_an_infinite_loop_is_stopped_at_the_limit(batch):
    assert batch["loop"].returncode == 0, batch["loop"].stderr
    report = batch["reports"]["infinite_loop"]
    checks = _checks(report)
    assert checks["manual_plain"]["status"] == "timeout"
    assert "time limit of 5 s of CPU time in train_manual_update" in checks["manual_plain"]["message"]
    for case in ("manual_weight_decay", "manual_momentum", "manual_combined"):
        assert checks[case]["status"] == "skipped" and "exceeded the time limit" in checks[case]["message"]
    assert checks["backprop_toy"]["status"] == checks["train_sgd"]["status"] == "pass"
    nb = checks["notebook_gradient_descent"]
    assert nb["status"] == "timeout" and nb["details"]["cell"] == 7 and "time limit of 10 s per cell" in nb["message"]


def test_reports_are_written_outside_the_submissions(batch):
    for name, report in batch["reports"].items():
        md = (batch["out"] / name / "report.md").read_text()
        assert f"Student: **{name}**" in md
        if report.get("not_gradable"):
            continue
        assert "| Check | Result | Points | Diagnostic |" in md
        assert [c["id"] for c in report["checks"]] == list(registry.IDS)
        assert "bubblewrap" in report["sandbox"]
    assert not any(p.name in ("results", "executed") for p in GOOD.iterdir())


# ------------------------------------------------------------------------------- command line

@pytest.mark.parametrize("args, message", [
    (["tests/test_grading.py", "--timeout", "0"], "--timeout must be a positive number"),
    (["tests/fixtures/students/skeleton_conventions", "--out", "tests/fixtures/students/skeleton_conventions/out"],
     "never writes into a submission"),
    (["tests/fixtures/students/skeleton_conventions", "--rubric", "nowhere.toml"], "rubric file nowhere.toml not found"),
    (["tests/fixtures/students/skeleton_conventions", "--jobs", "0"], "--jobs must be at least 1"),
])
def test_command_line_errors(shared_data, args, message):
    run = _grade(shared_data, *args, timeout=120)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not (GOOD / "out").exists()


def test_an_existing_folder_that_is_not_a_report_is_not_replaced(tmp_path, shared_data):
    (tmp_path / "skeleton_conventions").mkdir()
    keep = tmp_path / "skeleton_conventions" / "notes.txt"
    keep.write_text("instructor's notes")
    run = _grade(shared_data, GOOD, "--out", tmp_path, timeout=120)
    assert run.returncode == 2 and "is not a grading report folder" in run.stderr
    assert keep.read_text() == "instructor's notes"


def test_without_the_sandbox_the_grader_refuses_and_says_how_to_enable_it(tmp_path, shared_data):
    run = _grade(shared_data, GOOD, "--out", tmp_path, timeout=120, INF265_BWRAP="/bin/false")
    assert run.returncode == 2
    assert "refusing to grade" in run.stderr and "user namespaces" in run.stderr and "--no-sandbox" in run.stderr
    assert not (tmp_path / "skeleton_conventions").exists()


def test_no_sandbox_is_written_into_every_report(tmp_path, shared_data):
    run = _grade(shared_data, GOOD, "--out", tmp_path, "--no-sandbox", "--no-notebooks", timeout=600,
                 INF265_BWRAP="/bin/false")
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "skeleton_conventions" / "report.json").read_text())
    assert report["sandbox"].startswith("NOT SANDBOXED (--no-sandbox)")
    assert "NOT SANDBOXED" in (tmp_path / "skeleton_conventions" / "report.md").read_text()
    assert report["tasks"] == {"backpropagation": "pass", "train_manual_update": "pass"}


# ------------------------------------------------------------------------------- rubric

@pytest.mark.parametrize("text, message", [
    ("[checks.backprop_toy]\npoints = 'three'\n", "checks.backprop_toy.points must be a number"),
    ("[checks.no_such_check]\npoints = 1\n", "unknown check id(s) no_such_check"),
    ("[scoring.backprop_subchecks]\nruns = 0.5\n", "must add up to 1"),
    ("[scoring.backprop_subchecks]\nspeed = 0.1\n", "is not a sub-check"),
    ("[checks\n", "is not valid TOML"),
])
def test_bad_rubric_is_rejected_with_a_clear_message(tmp_path, text, message):
    path = tmp_path / "rubric.toml"
    path.write_text(text)
    with pytest.raises(rubric_mod.RubricError) as info:
        rubric_mod.load(path)
    assert message in str(info.value)


def test_rubric_scores():
    rubric = rubric_mod.load()
    assert set(rubric.points) == set(registry.IDS)
    assert all(rubric.points[c.id] == 0 for c in registry.CHECKS if c.scope == "beyond")
    assert rubric.score("backprop_toy", "pass") == rubric.points["backprop_toy"] > 0
    assert rubric.score("backprop_toy", "partial", 0.25) == rubric.points["backprop_toy"] * 0.25
    assert rubric.score("backprop_toy", "timeout") == rubric.score("backprop_toy", "not_gradable") == 0


# ------------------------------------------------------------------------------- the channel

def _reader(data: bytes) -> channel.Reader:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return channel.Reader(r, max_bytes=1 << 20)


def test_a_message_goes_through_the_channel():
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    header, tensors = _reader(channel.encode({"id": "x", "n": 1}, {"t": t})).receive()
    assert header == {"id": "x", "n": 1} and torch.equal(tensors["t"], t)
    packed, extra = channel.pack({"a": [t, {"b": None}], "s": "text"})
    assert channel.unpack(packed, extra)["a"][0] is t


@pytest.mark.parametrize("data, message", [
    (b"pass\n" * 10, "does not start with the channel's marker"),
    (channel.MAGIC + (1 << 40).to_bytes(8, "big"), "header of"),
    (channel.MAGIC + (5).to_bytes(8, "big") + b"{oops", "not JSON"),
    (channel.MAGIC + (61).to_bytes(8, "big") + b'{"tensors": [{"name": "t", "dtype": "object", "shape": [2]}]}',
     "dtype 'object'"),
    (channel.MAGIC + (61).to_bytes(8, "big") + b'{"tensors": [{"name": "t", "dtype": "int64", "shape": [-1]}]}',
     "invalid shape"),
])
def test_malformed_replies_are_refused_with_a_reason(data, message):
    with pytest.raises(channel.ChannelError, match=message):
        _reader(data).receive()


@pytest.mark.parametrize("t", [torch.tensor(2.5), torch.zeros(0, 3), torch.arange(12.).reshape(3, 4).T,
                               torch.ones(3, dtype=torch.uint16), torch.tensor([1 + 2j]), torch.eye(2).to_sparse(),
                               torch.ones(2, requires_grad=True), torch.ones(3, dtype=torch.float32)[::2]],
                         ids=["0-dim", "empty", "transposed", "uint16", "complex", "sparse", "requires grad", "strided"])
def test_any_tensor_a_student_produces_goes_through_the_channel(t):
    _, tensors = _reader(channel.encode({"id": "x"}, {"t": t})).receive()
    got = tensors["t"]
    assert got.shape == t.shape and torch.equal(got.to(torch.complex128), t.detach().to_dense().to(torch.complex128))


def test_deeply_nested_headers_are_refused_without_parsing():
    head = b'{"a": ' + b"[" * 20000 + b"]" * 20000 + b"}"  # (a pipe holds 64 KiB)
    with pytest.raises(channel.ChannelError, match="nested more than"):
        _reader(channel.MAGIC + len(head).to_bytes(8, "big") + head).receive()
    head = b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\" [[["}'  # brackets in a string
    assert _reader(channel.MAGIC + len(head).to_bytes(8, "big") + head).receive()[0]["a"].startswith("[[[")


def test_a_reply_announcing_more_tensor_bytes_than_allowed_is_refused():
    head = json.dumps({"tensors": [{"name": "t", "dtype": "float64", "shape": [1 << 20, 1 << 4]}]}).encode()
    with pytest.raises(channel.ChannelError, match="more than"):
        _reader(channel.MAGIC + len(head).to_bytes(8, "big") + head).receive()


# ------------------------------------------------------------------------------- static reading

def _notebook(tmp_path, *sources) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(s)) for s in sources]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_autograd_is_found_in_backpropagation_and_the_helpers_it_calls(tmp_path):
    path = _notebook(tmp_path, """
        import torch
        def helper(model):
            return [p.grad for p in model.parameters()]
        def backpropagation(model, y_true, y_pred):
            grads = helper(model)
        def unrelated(loss):
            loss.backward()
    """)
    found = static.autograd_findings(path)
    assert len(found) == 1 and found[0]["cell"] == 1 and ".grad" in found[0]["what"]
    clean = _notebook(tmp_path, """
        def backpropagation(model, y_true, y_pred):
            delta = -2 * (y_true - y_pred) * model.df[model.L](model.z[model.L])
            model.dL_dw[model.L] = delta.T @ model.a[model.L - 1]
    """)
    assert static.autograd_findings(clean) == []


def test_tampering_is_found_and_settings_are_not(tmp_path):
    path = _notebook(tmp_path, """
        import torch, builtins, sys
        torch.backends.cudnn.deterministic = True
        torch.equal = lambda *a: True
        setattr(builtins, "max", min)
        sys.modules["x"] = None
    """)
    found = static.tampering_findings(path)
    assert {f["line"] for f in found} == {2, 4, 5, 6}, found  # not line 3, the cudnn setting
    whats = " ".join(f["what"] for f in found)
    assert "imports builtins" in whats and "(torch.equal)" in whats and "sys.modules" in whats


# ------------------------------------------------------------------------------- calls by name

@pytest.mark.parametrize("source, how", [
    ("def f(n_epochs, lr, model, loss_fn, train_loader, weight_decay=0, momentum=0): pass", "by name"),
    ("def f(n_epochs, model, loss_fn, train_loader, lr=1e-2, momentum_coeff=0., weight_decay=0.): pass",
     "momentum as momentum_coeff"),
    ("def f(epochs, learning_rate, model, loss_function, trainloader, l2=0, beta=0): pass", "lr as learning_rate"),
    ("def f(model, loss_fn, train_loader, lr=1e-2, momentum_coeff=0., weight_decay=0., n_epochs=30): pass", "by name"),
    ("def f(n_epochs, lr, model, loss_fn, train_loader, device, **kwargs): pass", "through **kwargs"),
    ("def f(a, b, c, d, e, **kw): pass", "positional course order"),
])
def test_student_signatures_are_called_by_name(source, how):
    namespace = {}
    exec(source, namespace)
    values = {"n_epochs": 2, "lr": 0.01, "model": "M", "loss_fn": "L", "train_loader": "D", "momentum": 0.9,
              "weight_decay": 0.0}
    args, kwargs, said = calls.bind(namespace["f"], values, "train_manual_update", extras={"device": "cpu"})
    assert how in said
    bound = {**dict(zip(["n_epochs", "lr", "model", "loss_fn", "train_loader"], args)), **kwargs}
    assert 2 in bound.values() and "M" in bound.values() and "D" in bound.values()


def test_an_unmappable_signature_says_what_is_expected():
    def train_manual_update(n_epochs, lr, model, loss_fn, train_loader, gamma):
        pass
    with pytest.raises(calls.SignatureMismatch) as info:
        calls.bind(train_manual_update, {"n_epochs": 1, "lr": 0.1, "model": 0, "loss_fn": 0, "train_loader": 0,
                                         "momentum": 0.9}, "train_manual_update")
    message = str(info.value)
    assert message.startswith("signature mismatch: the notebook defines `train_manual_update(n_epochs, lr, model, "
                              "loss_fn, train_loader, gamma)`") and "gamma" in message


# ------------------------------------------------------------------------------- SGD diagnoses

@pytest.fixture
def double():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("mistake, hyper, words", [
    ("weights_only", {"weight_decay": 0.01}, "weights only"),
    ("reset_each_epoch", {"momentum": 0.9}, "reset every epoch"),
    ("aliased_buffer", {"momentum": 0.9}, "p.grad itself"),
    ("decay_after_momentum", {"momentum": 0.8, "weight_decay": 0.001}, "weight decay is applied after momentum"),
])
def test_common_update_mistakes_are_named(double, mistake, hyper, words):
    weights, x, y = sgd.problem()
    got = sgd.reference(weights, x, y, mistake=mistake, **hyper)
    status, message, _ = sgd.verdict(got, weights, x, y, hyper, "train_manual_update")
    assert status == "fail" and words in message, message


def test_an_update_on_transformed_batches_is_judged_on_what_the_model_saw(double):
    weights, x, y = sgd.problem()
    seen = [(b - b.mean()) / b.std() for b in x.split(sgd.BATCH_SIZE)] * sgd.N_EPOCHS
    got = sgd.reference(weights, x, y, inputs=seen, momentum=0.9)
    tensors = {f"seen{i}": t.flatten(1) for i, t in enumerate(seen)}
    status, message, details = sgd.verdict(got, weights, x, y, {"momentum": 0.9}, "m", sgd.seen_inputs(tensors))
    assert status == "pass" and "judged on what your model saw" in message and details["judged_on"] != "the raw batches"
    assert sgd.verdict(got, weights, x, y, {"momentum": 0.9}, "m")[0] == "fail"     # on the raw batches
    assert sgd.seen_inputs({**tensors, "seen6": seen[0]}) is None                   # not one per step: raw
    wrong = sgd.reference(weights, x, y, inputs=seen, mistake="reset_each_epoch", momentum=0.9)
    status, message, _ = sgd.verdict(wrong, weights, x, y, {"momentum": 0.9}, "m", sgd.seen_inputs(tensors))
    assert status == "fail" and "reset every epoch" in message, message


def test_rounding_differences_pass_and_say_they_are_not_bitwise(double):
    weights, x, y = sgd.problem()
    want = sgd.reference(weights, x, y, momentum=0.9)
    got = [w + 1e-17 * torch.sign(w) for w in want]
    status, message, details = sgd.verdict(got, weights, x, y, {"momentum": 0.9}, "m")
    assert status == "pass" and "not bitwise" in message and details["bitwise_equal"] is False


# ------------------------------------------------------------------------------- Gradescope

def test_gradescope_package_grades_a_folder_laid_out_like_autograder(tmp_path, shared_data):
    zip_path = tmp_path / "gradescope-autograder.zip"
    build = subprocess.run([sys.executable, "-m", "grading.gradescope", "build", str(zip_path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        assert {"setup.sh", "run_autograder", "grading/gradescope.py", "tests_backpropagation.py",
                "requirements.txt"} <= set(names)
        assert z.getinfo("run_autograder").external_attr >> 16 & 0o111
        root = tmp_path / "autograder"
        z.extractall(root / "source")
    (root / "run_autograder").write_bytes((root / "source" / "run_autograder").read_bytes())
    (root / "run_autograder").chmod(0o755)
    subprocess.run(["cp", "-r", str(GOOD), str(root / "submission")], check=True)
    (root / "results").mkdir()
    env = _env(shared_data, AUTOGRADER_ROOT=str(root), AUTOGRADER_PYTHON=sys.executable)
    run = subprocess.run([str(root / "run_autograder")], cwd=root, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((root / "results" / "results.json").read_text())
    _validate_gradescope(results)
    assert results["score"] == sum(t["score"] for t in results["tests"]) == 30
    assert {t["status"] for t in results["tests"]} <= {"passed", "failed"}
    assert any("[backprop_toy]" in t["name"] for t in results["tests"])


def _validate_gradescope(results: dict) -> None:
    """The fields of Gradescope's autograder specification (results.json), and their types."""
    top = {"score": (int, float), "execution_time": (int, float), "output": str, "visibility": str,
           "stdout_visibility": str, "extra_data": dict, "tests": list, "leaderboard": list}
    test = {"score": (int, float), "max_score": (int, float), "status": str, "name": str, "number": str,
            "output": str, "tags": list, "visibility": str, "extra_data": dict}
    visibility = {"hidden", "after_due_date", "after_published", "visible"}
    assert set(results) <= set(top), set(results) - set(top)
    for key, kind in top.items():
        assert key not in results or isinstance(results[key], kind), key
    for key in ("visibility", "stdout_visibility"):
        assert results.get(key, "visible") in visibility
    for t in results["tests"]:
        assert set(t) <= set(test), set(t) - set(test)
        for key, kind in test.items():
            assert key not in t or isinstance(t[key], kind), (key, t)
        assert t.get("visibility", "visible") in visibility and t.get("status", "passed") in ("passed", "failed")
        assert 0 <= t["score"] <= t["max_score"] or t["max_score"] == 0


def test_gradebook_csv_columns():
    from grading import report as report_mod
    rows = list(csv.reader(io.StringIO(report_mod.gradebook([]))))
    assert rows == [["student", "score", "max_score", "backpropagation", "train_manual_update", *registry.IDS,
                     "lms_user_id", "late", "late_deduction", "deliverables", "total"]]
