"""The instructors' grader (``python -m grading``) on student-like submissions in tests/fixtures/.

Each fixture folder is graded once per session by running the grader as a subprocess, as an
instructor would (``make grade SUBMISSION=...``), and its report is checked for the expected
verdicts and diagnoses. The infinite-loop fixture is graded with short time limits. Unit tests
cover the rubric, the command line's errors, the sandbox guard and the SGD exactness check.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from grading import rubric as rubric_mod
from grading import sgd_check
from grading.worker import load

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
NAMES = ["correct", "no_activation_derivative", "updates_weights", "forgets_weight_decay",
         "raises_halfway", "malicious", "syntax_error", "infinite_loop"]
BACKPROP = ["backprop_toy", "backprop_mnist", "backprop_batch", "backprop_activations", "backprop_deep"]
MANUAL = [f"manual_{case}" for case in sgd_check.CASES]
ESCAPE = Path("/tmp/inf265-grading-escape.txt")  # what the malicious fixture tries to write


def _grade_cmd(*args):
    return [sys.executable, "-m", "grading", *map(str, args)]


def _env():
    env = dict(os.environ)
    env.setdefault("DATA_DIR", str(ROOT.parent / "shared" / "data"))
    env["DATA_DIR"] = str(Path(env["DATA_DIR"]).resolve())
    return env


def _tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory, shared_data):
    """{fixture name: report dict}; also the grader's stdout and the fixtures' digests."""
    out = tmp_path_factory.mktemp("grading-out")
    before = {name: _tree_digest(FIXTURES / name) for name in NAMES}
    ESCAPE.unlink(missing_ok=True)
    normal = [FIXTURES / n for n in NAMES if n != "infinite_loop"]
    runs = [subprocess.run(_grade_cmd(*normal, "--out", out), cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=900),
            # alone, with a short cell limit: the loop is stopped at 6 s of CPU in the check
            # (the rubric's default) and at 10 s in the notebook cell
            subprocess.run(_grade_cmd(FIXTURES / "infinite_loop", "--out", out, "--timeout", 10),
                           cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)]
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    reports = {name: json.loads((out / name / "report.json").read_text()) for name in NAMES}
    return {"reports": reports, "out": out, "before": before,
            "stdout": "".join(r.stdout for r in runs)}


def _checks(report) -> dict:
    return {c["id"]: c for c in report["checks"]}


def _status(report) -> dict:
    return {c["id"]: c["status"] for c in report["checks"]}


# ------------------------------------------------------------------------------- the fixtures

def test_correct_submission_gets_full_marks(graded):
    report = graded["reports"]["correct"]
    assert set(_status(report).values()) == {"pass"}, _status(report)
    assert report["score"] == report["max_score"] == rubric_mod.load().total > 0
    checks = _checks(report)
    assert "7 / 7 harness checks passed" in checks["backprop_mnist"]["message"]
    assert "bitwise equal" in checks["manual_nesterov"]["message"]
    # the definitions needed the notebook's `device = torch.device(...)`, which nbdefs skips
    assert "device = " in checks["load_gradient_descent"]["message"]


def test_missing_activation_derivative_is_diagnosed(graded):
    report = graded["reports"]["no_activation_derivative"]
    status, checks = _status(report), _checks(report)
    for check in BACKPROP:
        assert status[check] == "fail", (check, checks[check]["message"])
        assert "activation derivative" in checks[check]["message"], checks[check]["message"]
    assert all(status[c] == "pass" for c in ["load_backpropagation", "load_gradient_descent", "train_sgd"] + MANUAL)
    nb = checks["notebook_backpropagation"]
    assert nb["status"] == "error" and nb["details"]["cell"] == 4  # the toy main_test cell raises
    assert "AssertionError" in nb["message"] and "activation derivative" in nb["message"]
    assert status["notebook_gradient_descent"] == "pass"
    assert report["score"] == report["max_score"] - sum(c["max_points"] for c in report["checks"]
                                                        if c["id"] in BACKPROP + ["notebook_backpropagation"])


def test_backprop_that_updates_the_weights_is_caught(graded):
    report = graded["reports"]["updates_weights"]
    status, checks = _status(report), _checks(report)
    for check in BACKPROP:
        assert status[check] == "fail"
        assert "changes no parameter" in checks[check]["message"] and "modified" in checks[check]["message"]
    assert all(status[c] == "pass" for c in ["train_sgd"] + MANUAL)
    assert status["notebook_backpropagation"] == "error"


def test_forgotten_weight_decay_is_named(graded):
    report = graded["reports"]["forgets_weight_decay"]
    status, checks = _status(report), _checks(report)
    failing = {c for c, s in status.items() if s != "pass"}
    assert failing == {"manual_weight_decay", "manual_combined"}
    for check in failing:
        assert "weight decay is missing" in checks[check]["message"], checks[check]["message"]
        assert checks[check]["details"]["max_abs_difference"] > 0
    assert report["score"] == report["max_score"] - checks["manual_weight_decay"]["max_points"] \
        - checks["manual_combined"]["max_points"]


def test_notebook_raising_halfway_reports_the_cell(graded):
    report = graded["reports"]["raises_halfway"]
    status, checks = _status(report), _checks(report)
    nb = checks["notebook_gradient_descent"]
    assert nb["status"] == "error"
    assert nb["details"]["cell"] == 9 and nb["details"]["cells_not_run"] == 1
    assert "code cell 9 of 10: RuntimeError" in nb["message"] and "shapes cannot be multiplied" in nb["message"]
    assert "view(-1, 3 * 32 * 32)" in nb["details"]["cell_source"] or "compute_accuracy" in nb["details"]["cell_source"]
    # its definitions are fine: every other check passes (definitions are loaded, not the notebook run)
    assert {c for c, s in status.items() if s != "pass"} == {"notebook_gradient_descent"}
    executed = graded["out"] / "raises_halfway" / nb["details"]["executed_notebook"]
    assert executed.is_file()


def test_infinite_loop_is_stopped_at_the_limit(graded):
    report = graded["reports"]["infinite_loop"]
    status, checks = _status(report), _checks(report)
    assert status["manual_plain"] == "timeout"
    assert "time limit of 6 s" in checks["manual_plain"]["message"]
    assert all(status[c] == "skipped" for c in MANUAL[1:])
    assert all(status[c] == "pass" for c in BACKPROP + ["train_sgd", "notebook_backpropagation"])
    nb = checks["notebook_gradient_descent"]
    assert nb["status"] == "timeout" and nb["details"]["cell"] == 7
    assert "time limit of 10 s per cell" in nb["message"]
    assert report["seconds"] < 60


def test_syntax_error_and_missing_notebook(graded):
    report = graded["reports"]["syntax_error"]
    status, checks = _status(report), _checks(report)
    assert status["load_backpropagation"] == "error"
    assert "SyntaxError: backpropagation.ipynb, code cell 3 (cell index 4): expected ':'" in \
        checks["load_backpropagation"]["message"]
    assert all(status[c] == "skipped" for c in BACKPROP)
    nb = checks["notebook_backpropagation"]
    assert nb["status"] == "error" and nb["details"]["cell"] == 3 and "SyntaxError" in nb["message"]
    for check in rubric_mod.SGD_CHECKS + ("notebook_gradient_descent",):
        assert status[check] == "fail" and "gradient_descent.ipynb is missing" in checks[check]["message"]
    assert report["score"] == 0


def test_malicious_notebook_cannot_escape(graded):
    report = graded["reports"]["malicious"]
    checks = _checks(report)
    nb = checks["notebook_gradient_descent"]
    assert nb["status"] == "error" and "SystemExit: bye" in nb["message"] and nb["details"]["cell"] == 9
    executed = json.loads((graded["out"] / "malicious" / nb["details"]["executed_notebook"]).read_text())
    attempts = "".join(executed["cells"][-3]["outputs"][0]["text"])
    for line in ("rmtree ../.. PermissionError", "rm -rf ../.. PermissionError", "write /tmp PermissionError",
                 "remove ../../grader PermissionError", "kill parent PermissionError"):
        assert line in attempts, attempts
    assert not ESCAPE.exists()
    # the grader survived and graded everything else
    assert {c for c, s in _status(report).items() if s != "pass"} == {"notebook_gradient_descent"}


def test_reports_written_outside_the_submissions_which_stay_unchanged(graded):
    for name in NAMES:
        assert _tree_digest(FIXTURES / name) == graded["before"][name], f"{name} was modified"
        md = (graded["out"] / name / "report.md").read_text()
        assert f"Student: **{name}**" in md and "| Check | Result | Points | Diagnostic |" in md
        report = graded["reports"][name]
        assert f"Score: **{report['score']:g} / {report['max_score']:g}**" in md
        assert report["seconds"] < 60, (name, report["seconds"])
        assert [c["id"] for c in report["checks"]] == list(rubric_mod.ALL_CHECKS)
        assert f"{name}: {report['score']:g} / {report['max_score']:g}" in graded["stdout"]


# ------------------------------------------------------------------------------- command line

def test_existing_folder_that_is_not_a_report_is_not_replaced(tmp_path):
    (tmp_path / "correct").mkdir()
    keep = tmp_path / "correct" / "notes.txt"
    keep.write_text("instructor's notes")
    run = subprocess.run(_grade_cmd(FIXTURES / "correct", "--out", tmp_path), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "is not a grading report folder" in run.stderr, run.stderr
    assert keep.read_text() == "instructor's notes"


@pytest.mark.parametrize("args, message", [
    (["tests/fixtures/does-not-exist"], "does not exist"),
    (["tests/test_grading.py"], "is not a folder"),
    (["tests"], "holds neither backpropagation.ipynb nor gradient_descent.ipynb"),
    (["tests/fixtures/correct", "--out", "tests/fixtures/correct/out"], "never writes into a submission"),
    (["tests/fixtures/correct", "--timeout", "0"], "--timeout must be a positive number"),
    (["tests/fixtures/correct", "--rubric", "nowhere.toml"], "rubric file nowhere.toml not found"),
])
def test_command_line_errors(args, message):
    run = subprocess.run(_grade_cmd(*args), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not (FIXTURES / "correct" / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("[checks.backprop_toy]\npoints = 'three'\n", "checks.backprop_toy.points must be a number"),
    ("[checks.no_such_check]\npoints = 1\n", "unknown check id(s) no_such_check"),
    ("[checks.backprop_toy]\ntitle = 'x'\n", "needs `points = <number>`"),
    ("[scoring]\nrounding_credit = 2\n", "between 0 and 1"),
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
    assert set(rubric.points) == set(rubric_mod.ALL_CHECKS) and not rubric.unscored
    assert rubric.score("manual_plain", "pass") == rubric.points["manual_plain"]
    assert rubric.score("manual_plain", "partial") == rubric.points["manual_plain"] * rubric.rounding_credit
    assert rubric.score("manual_plain", "timeout") == 0


# ------------------------------------------------------------------------------- the guard

def test_guard_refuses_changes_outside_the_sandbox(tmp_path):
    sandbox, outside = tmp_path / "sandbox", tmp_path / "outside"
    (sandbox / "work").mkdir(parents=True)
    outside.mkdir()
    canary = outside / "canary.txt"
    canary.write_text("alive")
    code = textwrap.dedent(f"""
        import os, shutil, subprocess, sys
        tries = {{
            "remove": lambda: os.remove({str(canary)!r}),
            "rmtree": lambda: shutil.rmtree({str(outside)!r}),
            "rmtree ..": lambda: shutil.rmtree("../.."),
            "write": lambda: open({str(canary)!r}, "w"),
            "rename": lambda: os.rename({str(canary)!r}, "stolen"),
            "symlink write": lambda: (os.symlink({str(canary)!r}, "link"), open("link", "a")),
            "shell": lambda: os.system("rm -rf " + {str(outside)!r}),
            "program": lambda: subprocess.run(["rm", {str(canary)!r}]),
            "python without guard": lambda: subprocess.run([sys.executable, "-c", "pass"], env={{}}),
            "kill all": lambda: os.kill(-1, 0),
        }}
        for name, attempt in tries.items():
            try:
                attempt()
                print(name, "ALLOWED")
            except PermissionError as exc:
                assert "INF265 grader's sandbox" in str(exc), exc
                print(name, "refused")
        open("inside.txt", "w").write("ok")
        os.remove("inside.txt")
        print("inside allowed")
    """)
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(sandbox), "HOME": str(sandbox),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "grading" / "_site"), str(ROOT)]),
           "INF265_SANDBOX_ROOTS": str(sandbox)}
    run = subprocess.run([sys.executable, "-c", code], cwd=sandbox / "work", env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "ALLOWED" not in run.stdout, run.stdout
    assert run.stdout.count("refused") == 10 and "inside allowed" in run.stdout
    assert canary.read_text() == "alive"


# ------------------------------------------------------------------------------- SGD check

@pytest.fixture(scope="module")
def correct_gd():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.double)
    torch.set_num_threads(1)
    module, _ = load(FIXTURES / "correct" / "gradient_descent.ipynb", ("MyMLP", "train", "train_manual_update"))
    yield module
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def test_sgd_check_passes_the_correct_update_bitwise(correct_gd):
    for case in sgd_check.CASES:
        passed, message, details = sgd_check.check_manual(correct_gd.MyMLP, correct_gd.train_manual_update, case)
        assert passed is True, message
        assert details["max_abs_difference"] == 0.0


def test_sgd_check_gives_partial_credit_for_rounding_only(correct_gd):
    def rounded(n_epochs, lr, model, loss_fn, train_loader, weight_decay=0, momentum=0, dampening=0,
                nesterov=False):
        for _ in range(n_epochs):
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
                with torch.no_grad():
                    for p in model.parameters():
                        p -= lr * p.grad  # not p.add_(g, alpha=-lr): different rounding
                model.zero_grad()

    passed, message, details = sgd_check.check_manual(correct_gd.MyMLP, rounded, "plain")
    assert passed == "partial" and "up to rounding" in message
    assert 0 < details["max_abs_difference"] < 1e-12


def test_sgd_check_names_accumulating_gradients_and_missing_keywords(correct_gd):
    def no_zero_grad(n_epochs, lr, model, loss_fn, train_loader, weight_decay=0, momentum=0, dampening=0,
                     nesterov=False):
        for _ in range(n_epochs):
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(p.grad, alpha=-lr)

    passed, message, _ = sgd_check.check_manual(correct_gd.MyMLP, no_zero_grad, "plain")
    assert passed is False and "not zeroed" in message

    def old_signature(n_epochs, lr, model, loss_fn, train_loader, weight_decay=0, momentum=0):
        pass

    passed, message, _ = sgd_check.check_manual(correct_gd.MyMLP, old_signature, "nesterov")
    assert passed is False and "nesterov" in message


def test_sgd_check_catches_a_train_without_zero_grad(correct_gd):
    def train(n_epochs, optimizer, model, loss_fn, train_loader):
        for _ in range(n_epochs):
            for x, y in train_loader:
                loss_fn(model(x), y).backward()
                optimizer.step()

    passed, message, _ = sgd_check.check_train(correct_gd.MyMLP, train)
    assert passed is False and "not zeroed" in message
    assert sgd_check.check_train(correct_gd.MyMLP, correct_gd.train)[0] is True


# ------------------------------------------------------------------------------- nbval sanitizer

def test_instructor_sanitizer_makes_machine_specific_outputs_equal():
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "grading" / "nbval_sanitize.cfg")
    rules = [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]

    def clean(text):
        for regex, replace in rules:
            text = regex.sub(replace, text)
        return text

    student = ("Training on device cuda:0. Saved /home/ola/inf265/results/loss.png in 12.3 s, "
               "<Figure at 0x7f3a2b1c9d80>, 2025-09-14 10:31:02, File /tmp/ipykernel_77/2726715026.py")
    instructor = ("Training on device cpu. Saved /work/main/grading-out/x/results/loss.png in 3 s, "
                  "<Figure at 0x55d1e2f3a4b0>, 2026-11-23 14:20:00, File /tmp/ipykernel_12/1150337701.py")
    assert clean(student) == clean(instructor)
    # what is graded is left alone: numbers, accuracies, losses
    assert clean("test accuracy 0.873, loss 0.31542") == "test accuracy 0.873, loss 0.31542"
    assert clean("identical: True, 5 / 5") == "identical: True, 5 / 5"
