"""Self-test of the graded harness ``tests_backpropagation.main_test``.

Correct implementations (the notebook's own, a per-sample loop, einsum, entry by entry) pass;
a bank of wrong ones is each caught, by the right check, with the right diagnosis. The model is
the notebook's own ``MyNet`` (imported with ``inf265.nbdefs``, not copied).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
import torch

import tests_backpropagation as harness
from inf265 import ROOT
from inf265.nbdefs import load_definitions

NB = load_definitions(ROOT / "backpropagation.ipynb")
MyNet, backpropagation = NB.MyNet, NB.backpropagation


pytestmark = pytest.mark.usefixtures("float64")


def run(fn, model=None, **kwargs):
    """main_test quietly: (result or None, AssertionError or None, printed report)."""
    model = model if model is not None else MyNet([2, 3, 2])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            return harness.main_test(fn, model, **kwargs), None, out.getvalue()
        except AssertionError as exc:
            return None, exc, out.getvalue()


# ---------------------------------------------------------------------------------------------
# correct implementations, written differently
# ---------------------------------------------------------------------------------------------
def bp_loop(model, y_true, y_pred):
    """One sample at a time, summed."""
    with torch.no_grad():
        L = model.L
        for l in range(1, L + 1):
            model.dL_dw[l] = torch.zeros_like(model.fc[str(l)].weight)
            model.dL_db[l] = torch.zeros_like(model.fc[str(l)].bias)
        for i in range(y_pred.shape[0]):
            delta = 2 * (y_pred[i] - y_true[i]) * model.df[L](model.z[L][i])
            for l in range(L, 0, -1):
                model.dL_dw[l] += torch.outer(delta, model.a[l - 1][i])
                model.dL_db[l] += delta
                if l > 1:
                    delta = (model.fc[str(l)].weight.T @ delta) * model.df[l - 1](model.z[l - 1][i])


def bp_einsum(model, y_true, y_pred):
    with torch.no_grad():
        delta = -2 * (y_true - y_pred) * model.df[model.L](model.z[model.L])
        for l in range(model.L, 0, -1):
            model.dL_dw[l] = torch.einsum("bi,bj->ij", delta, model.a[l - 1])
            model.dL_db[l] = torch.einsum("bi->i", delta)
            if l > 1:
                delta = torch.einsum("bi,ij->bj", delta, model.fc[str(l)].weight) * model.df[l - 1](model.z[l - 1])


def bp_elementwise(model, y_true, y_pred):
    """Equations (4)-(7) entry by entry, as in the project text."""
    with torch.no_grad():
        L, B = model.L, y_pred.shape[0]
        for l in range(1, L + 1):
            model.dL_dw[l] = torch.zeros_like(model.fc[str(l)].weight)
            model.dL_db[l] = torch.zeros_like(model.fc[str(l)].bias)
        for i in range(B):
            delta = {L: [(-2 * (y_true[i, j] - y_pred[i, j]) * model.df[L](model.z[L][i, j])).item()
                         for j in range(model.n_l[L])]}
            for l in range(L, 0, -1):
                for j in range(model.n_l[l]):
                    model.dL_db[l][j] += delta[l][j]
                    for k in range(model.n_l[l - 1]):
                        model.dL_dw[l][j, k] += delta[l][j] * model.a[l - 1][i, k]
                if l > 1:
                    W = model.fc[str(l)].weight
                    delta[l - 1] = [sum(delta[l][j] * W[j, k].item() for j in range(model.n_l[l]))
                                    * model.df[l - 1](model.z[l - 1][i, k]).item() for k in range(model.n_l[l - 1])]


@pytest.mark.parametrize("fn", [backpropagation, bp_loop, bp_einsum, bp_elementwise],
                         ids=["notebook", "loop", "einsum", "elementwise"])
def test_correct_implementations_pass(fn):
    result, exc, report = run(fn)
    assert exc is None, report
    assert result and result.passed and result.n_passed == len(result.checks) == 7
    assert all(c.passed and c.name and c.message for c in result.checks)
    assert "7 / 7: ALL TESTS PASSED" in report and "FAILED" not in report
    assert all(e["autograd"] < 1e-10 and e["finite_differences"] < 1e-6 for e in result.errors.values())


def test_deeper_net_other_activations_batch_32():
    model = MyNet([3, 7, 5, 4, 2], activations=["relu", "sigmoid", "tanh", "identity"])
    result, exc, report = run(backpropagation, model, n_samples=32)
    assert exc is None, report
    assert "batch of 32 samples" in report


@pytest.mark.parametrize("loss, acts", [("mse", None), ("bce", ["tanh", "sigmoid"]),
                                        ("logistic", ["relu", "identity"])])
def test_other_losses(loss, acts):
    result, exc, report = run(backpropagation, MyNet([2, 5, 2], activations=acts), loss=loss)
    assert exc is None, report
    assert f"loss '{loss}'" in report


def test_model_left_as_found_and_grad_empty():
    model = MyNet([2, 3, 2])
    before = [p.detach().clone() for p in model.parameters()]
    run(backpropagation, model)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())
    assert torch.get_num_threads() >= 1


def test_course_style_call_unchanged():
    """A student's notebook written against the course's harness runs as it is."""
    model = MyNet([2, 3, 2])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        harness.main_test(backpropagation, model, eps=10e-5, verbose=False, data="toy")
    assert "ALL TESTS PASSED" in out.getvalue()


def test_verbose_prints_gradients_side_by_side():
    result, exc, report = run(backpropagation, verbose=True)
    assert exc is None
    assert "ours" in report and "autograd" in report and "fc[1].weight" in report
    ours_vs_autograd = re.findall(r"^\s+\d+\s+(\S+)\s+(\S+)$", report, flags=re.M)
    assert ours_vs_autograd and all(a == b for a, b in ours_vs_autograd)


def test_mnist(shared_data):
    result, exc, report = run(backpropagation, MyNet([24 * 24, 16, 10]), data="mnist")
    assert exc is None, report
    assert "all 9402 parameter entries" in report


def test_mnist_sample_is_real_mnist(shared_data):
    x, y = harness.load_mnist_sample(5)
    assert x.shape == (5, 1, 24, 24) and x.dtype == torch.float64
    assert y.shape == (5, 10) and torch.equal(y.sum(1), torch.ones(5))
    assert y.argmax(1).tolist() == [7, 2, 1, 0, 4]  # the first MNIST test labels


def test_bad_arguments_raise_value_error():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="576"):
        harness.main_test(backpropagation, MyNet([2, 3, 10]), data="mnist")
    with pytest.raises(ValueError, match="10 outputs"):
        harness.main_test(backpropagation, MyNet([576, 3, 2]), data="mnist")
    with pytest.raises(ValueError, match="'sse', 'mse', 'bce', 'logistic'"):
        harness.main_test(backpropagation, MyNet(), loss="cross-entropy")
    with pytest.raises(ValueError, match="data='toy' or data='mnist'"):
        harness.main_test(backpropagation, MyNet(), data="cifar")
    with pytest.raises(ValueError, match="sigmoid output"):
        harness.main_test(backpropagation, MyNet(), loss="bce")


def test_standalone_copy_works(tmp_path):
    """The file copied alone next to a notebook: only torch needed, no inf265."""
    (tmp_path / "tests_backpropagation.py").write_text((ROOT / "tests_backpropagation.py").read_text())
    script = (
        "import torch, sys\n"
        "assert 'inf265' not in sys.modules\n"
        "torch.set_default_dtype(torch.double)\n"
        "from tests_backpropagation import main_test\n"
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, n_l=[2, 3, 2]):\n"
        "        super().__init__()\n"
        "        self.L, self.n_l = len(n_l) - 1, n_l\n"
        "        self.z, self.a, self.dL_dw, self.dL_db = {}, {}, {}, {}\n"
        "        self.f = {i: torch.tanh for i in range(1, self.L + 1)}\n"
        "        self.df = {i: (lambda x: 1 - torch.tanh(x) ** 2) for i in range(1, self.L + 1)}\n"
        "        self.fc = nn.ModuleDict({str(i): nn.Linear(n_l[i - 1], n_l[i]) for i in range(1, self.L + 1)})\n"
        "    def forward(self, x):\n"
        "        self.a[0] = torch.flatten(x, 1)\n"
        "        for i in range(1, self.L + 1):\n"
        "            self.z[i] = self.fc[str(i)](self.a[i - 1]); self.a[i] = self.f[i](self.z[i])\n"
        "        return self.a[self.L]\n"
        "def bp(model, y_true, y_pred):\n"
        "    with torch.no_grad():\n"
        "        d = 2 * (y_pred - y_true) * model.df[model.L](model.z[model.L])\n"
        "        for l in range(model.L, 0, -1):\n"
        "            model.dL_dw[l] = d.T @ model.a[l - 1]; model.dL_db[l] = d.sum(0)\n"
        "            if l > 1: d = (d @ model.fc[str(l)].weight) * model.df[l - 1](model.z[l - 1])\n"
        "assert main_test(bp, Net([3, 4, 2]), data='toy')\n"
        "assert 'inf265' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "7 / 7: ALL TESTS PASSED" in proc.stdout


# ---------------------------------------------------------------------------------------------
# the bank of wrong implementations
# ---------------------------------------------------------------------------------------------
def make_bp(dy=None, df_out=None, df_hidden=None, dw=None, db=None, layers=None, after=None):
    """A backpropagation with pieces swapped out; defaults are the correct pieces."""
    dy = dy or (lambda y, yp: -2 * (y - yp))
    df_out = df_out or (lambda m, l: m.df[l](m.z[l]))
    df_hidden = df_hidden or (lambda m, l: m.df[l](m.z[l]))
    dw = dw or (lambda d, a: d.T @ a)
    db = db or (lambda d: d.sum(dim=0))

    def bp(model, y_true, y_pred):
        with torch.no_grad():
            L = model.L
            delta = dy(y_true, y_pred) * df_out(model, L)
            for l in range(L, 0, -1):
                if layers is None or l in layers:
                    model.dL_dw[l] = dw(delta, model.a[l - 1])
                    model.dL_db[l] = db(delta)
                if l > 1:
                    delta = (delta @ model.fc[str(l)].weight) * df_hidden(model, l - 1)
        if after:
            after(model, y_true, y_pred)
    return bp


def _sgd_inside(model, y_true, y_pred):
    with torch.no_grad():
        for l in range(1, model.L + 1):
            model.fc[str(l)].weight -= 0.1 * model.dL_dw[l]


def _zero_grad_inside(model, y_true, y_pred):
    model.zero_grad()


def bp_backward(model, y_true, y_pred):
    loss = ((y_pred - y_true) ** 2).sum()
    loss.backward()
    for l in range(1, model.L + 1):
        model.dL_dw[l] = model.fc[str(l)].weight.grad.clone()
        model.dL_db[l] = model.fc[str(l)].bias.grad.clone()


def bp_autograd_grad(model, y_true, y_pred):
    params = [p for l in range(1, model.L + 1) for p in (model.fc[str(l)].weight, model.fc[str(l)].bias)]
    grads = torch.autograd.grad(((y_pred - y_true) ** 2).sum(), params)
    for l in range(1, model.L + 1):
        model.dL_dw[l], model.dL_db[l] = grads[2 * l - 2], grads[2 * l - 1]


def bp_swallowed_backward(model, y_true, y_pred):
    try:
        ((y_pred - y_true) ** 2).sum().backward()
    except Exception:
        pass
    backpropagation(model, y_true, y_pred)


def bp_copy_grad(model, y_true, y_pred):
    for l in range(1, model.L + 1):
        model.dL_dw[l] = model.fc[str(l)].weight.grad
        model.dL_db[l] = model.fc[str(l)].bias.grad


def bp_copy_grad_clone(model, y_true, y_pred):
    for l in range(1, model.L + 1):
        model.dL_dw[l] = model.fc[str(l)].weight.grad.detach().clone()
        model.dL_db[l] = model.fc[str(l)].bias.grad.detach().clone()


def bp_string_keys(model, y_true, y_pred):
    backpropagation(model, y_true, y_pred)
    for store in (model.dL_dw, model.dL_db):
        for l in list(store):
            store[str(l)] = store.pop(l)


def bp_returns_instead(model, y_true, y_pred):
    model.dL_dw = {}
    model.dL_db = {}
    return None


def bp_batch_one_only(model, y_true, y_pred):
    if y_pred.shape[0] != 1:
        raise RuntimeError("a Tensor with 10 elements cannot be converted to Scalar")
    backpropagation(model, y_true, y_pred)


def bp_replaces_parameter(model, y_true, y_pred):
    backpropagation(model, y_true, y_pred)
    w = model.fc["1"].weight
    model.fc["1"].weight = torch.nn.Parameter(w.detach().clone())


def _wrong_hidden_derivative(m, l):  # tanh' written as 1 - z^2 (should be 1 - a^2)
    return 1 - m.z[l] ** 2


# (id, implementation, model layers, failing check (substring), diagnosis (regex))
BANK = [
    ("factor 2 missing", make_bp(dy=lambda y, yp: -(y - yp)), None, "matches autograd", r"factor 2"),
    ("factor 2 twice", make_bp(dy=lambda y, yp: -4 * (y - yp)), None, "matches autograd", r"factor 2"),
    ("sign flipped", make_bp(dy=lambda y, yp: 2 * (y - yp)), None, "matches autograd", r"sign is flipped"),
    ("transposed weight grad", make_bp(dw=lambda d, a: a.T @ d), None, "shape and dtype", r"transposed"),
    ("transposed square", make_bp(dw=lambda d, a: a.T @ d), [3, 3, 3], "matches autograd", r"transposed"),
    ("missing activation derivative", make_bp(df_out=lambda m, l: 1, df_hidden=lambda m, l: 1), None,
     "matches autograd", r"activation derivative f'\(z\) is missing \(at every layer\)"),
    ("missing output derivative", make_bp(df_out=lambda m, l: 1), None, "matches autograd",
     r"output layer is missing"),
    ("missing hidden derivative", make_bp(df_hidden=lambda m, l: 1), [2, 4, 3, 2], "matches autograd",
     r"only the last layer is right.*missing when δ is propagated back"),
    ("derivative at a", make_bp(df_out=lambda m, l: m.df[l](m.a[l]), df_hidden=lambda m, l: m.df[l](m.a[l])),
     None, "matches autograd", r"taken at a = f\(z\) instead of z"),
    ("only last layer right", make_bp(df_hidden=_wrong_hidden_derivative), [2, 4, 3, 2], "matches autograd",
     r"only the last layer is right"),
    ("hidden sign", make_bp(df_hidden=lambda m, l: -m.df[l](m.z[l])), None, "matches autograd",
     r"only the last layer is right.*sign"),
    ("mean instead of sum (MSE mean)", make_bp(dy=lambda y, yp: -2 * (y - yp) / yp.numel()), None,
     "matches autograd", r"mean instead of sum"),
    ("mean over the batch", make_bp(dw=lambda d, a: d.T @ a / d.shape[0], db=lambda d: d.mean(0)), None,
     "matches autograd, batch", r"mean instead of sum over the batch"),
    ("bias not summed over batch", make_bp(db=lambda d: d.squeeze()), None, "shape and dtype",
     r"summed over the batch|sums Δ over the batch"),
    ("bias of the first sample only", make_bp(db=lambda d: d[0]), None, "matches autograd, batch",
     r"only the biases are wrong"),
    ("bias keepdim", make_bp(db=lambda d: d.sum(0, keepdim=True)), None, "shape and dtype", r"shape \(1, 3\)"),
    ("wrong dtype", make_bp(dw=lambda d, a: (d.T @ a).float()), None, "shape and dtype", r"dtype torch.float32"),
    ("missing a layer", make_bp(layers={2}), None, "shape and dtype", r"model.dL_dw\[1\].*(not stored|None)"),
    ("all zeros", make_bp(dw=lambda d, a: torch.zeros(d.shape[1], a.shape[1]), db=lambda d: torch.zeros(d.shape[1])),
     None, "matches autograd", r"all zero"),
    ("copying .grad", bp_copy_grad, None, "shape and dtype", r"copied from fc\[\d\]\.\w+\.grad"),
    ("copying .grad.clone()", bp_copy_grad_clone, None, "shape and dtype", r"copied from fc\[\d\]\.\w+\.grad"),
    ("calling .backward()", bp_backward, None, "uses no autograd", r"called autograd \(\.backward\(\)"),
    ("calling torch.autograd.grad", bp_autograd_grad, None, "uses no autograd", r"torch\.autograd\.grad"),
    ("backward swallowed", bp_swallowed_backward, None, "uses no autograd", r"called autograd"),
    ("modifying the weights (SGD inside)", make_bp(after=_sgd_inside), None, "changes no parameter",
     r"fc\[1\]\.weight was modified"),
    ("zero_grad inside", make_bp(after=_zero_grad_inside), None, "changes no parameter", r"\.grad was changed"),
    ("replacing a parameter", bp_replaces_parameter, None, "changes no parameter", r"replaced"),
    ("string keys", bp_string_keys, None, "shape and dtype", r"keyed by strings"),
    ("gradients not stored", bp_returns_instead, None, "shape and dtype", r"not stored"),
    ("works for one sample only", bp_batch_one_only, None, "runs without error", r"not on a batch of 10"),
]


@pytest.mark.parametrize("name, fn, layers, check, diagnosis", BANK, ids=[b[0] for b in BANK])
def test_wrong_implementation_is_caught(name, fn, layers, check, diagnosis):
    model = MyNet(layers or [2, 3, 2])
    before = [p.detach().clone() for p in model.parameters()]
    result, exc, report = run(fn, model)
    assert exc is not None, f"{name} passed the harness:\n{report}"
    res = exc.result
    assert not res and not res.passed and res.failed
    failed = [c for c in res.checks if not c.passed]
    hit = [c for c in failed if check in c.name]
    assert hit, f"{name}: expected a failed check containing {check!r}, got {[c.name for c in failed]}"
    text = " ".join(c.message for c in hit)
    assert re.search(diagnosis, text), f"{name}: diagnosis {diagnosis!r} not in {text!r}"
    assert re.search(diagnosis, str(exc)), "the AssertionError message carries the diagnosis"
    assert "FAILED" in report and "SOME TESTS FAILED" in report, "the report is printed before raising"
    # whatever the implementation did, the harness restored the model
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())


def test_harness_never_raises_from_inside_on_broken_gradients():
    def bp_garbage(model, y_true, y_pred):
        model.dL_dw = {1: "not a tensor", 2: torch.zeros(7)}
        model.dL_db = [None, None, None]
    result, exc, report = run(bp_garbage)
    assert isinstance(exc, AssertionError)
    assert "is a str, not a torch.Tensor" in str(exc)


def test_autograd_restored_after_blocking():
    run(bp_backward)
    x = torch.ones(2, requires_grad=True)
    (x * x).sum().backward()
    assert torch.equal(x.grad, torch.full((2,), 2.0))


def test_float32_model_is_checked_with_float32_tolerances():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        result, exc, report = run(backpropagation, MyNet([2, 3, 2]))
        assert exc is None, report
        assert "note: the model is torch.float32" in report
        result, exc, report = run(make_bp(dy=lambda y, yp: -(y - yp)), MyNet([2, 3, 2]))
        assert exc is not None and "factor 2" in str(exc)
    finally:
        torch.set_default_dtype(old)


def test_loading_the_notebook_has_no_side_effects():
    """Importing the notebook's definitions sets no seed and no default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(1)
        expected = torch.rand(3)
        torch.manual_seed(1)
        load_definitions(ROOT / "backpropagation.ipynb")
        assert torch.get_default_dtype() == torch.float32
        assert torch.equal(torch.rand(3), expected)
    finally:
        torch.set_default_dtype(old)


def test_replaced_activations_are_differentiated_with_their_own_df():
    """The grader swaps f / df on a built model: backpropagation must follow (no stale shortcut)."""
    model = MyNet([2, 4, 3, 2])
    model.f[1], model.df[1] = torch.sigmoid, (lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z)))
    model.f[2], model.df[2] = torch.relu, (lambda z: (z > 0).to(z.dtype))
    model.f[3], model.df[3] = (lambda z: z), torch.ones_like
    result, exc, report = run(backpropagation, model)
    assert exc is None, report
