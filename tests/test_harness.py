"""Self-test of the graded harness ``tests_backpropagation``.

Correct implementations written in other styles pass; banks of wrong ones (bugs, cheats, hangs,
exits, bugs that only a square net with mixed activations shows) are each caught by the right
check with the right diagnosis, and the model is restored. Also: the collect/judge split, eps
validation, the data loader, the standalone copy and the harness's structure. The model is the
notebook's own ``MyNet`` (imported with ``inf265.nbdefs``, not copied).
"""
from __future__ import annotations

import ast
import contextlib
import copy
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

import tests_backpropagation as harness
import harness_core  # noqa: E402
from inf265 import ROOT
from inf265.nbdefs import load_definitions

NB = load_definitions(ROOT / "backpropagation.ipynb")
MyNet, backpropagation = NB.MyNet, NB.backpropagation
COURSE_IDS = ["runs", "no_autograd", "unchanged", "stored", "autograd", "finite_differences", "stored_activations",
              "square"]

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


def failed(exc) -> dict:
    """{check id: message} of the failed checks."""
    return {c.id: c.message for c in exc.result.checks if not c.passed}


def params(model):
    return {f"fc[{l}].{k}": getattr(model.fc[str(l)], k) for l in range(1, model.L + 1) for k in ("weight", "bias")}


def store(model, grads):
    for l in range(1, model.L + 1):
        model.dL_dw[l], model.dL_db[l] = grads[f"fc[{l}].weight"], grads[f"fc[{l}].bias"]


def sse(y_pred, y):
    return ((y_pred - y) ** 2).sum()


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


def bp_neurons(model, y_true, y_pred):
    """Equations (4)-(7) neuron by neuron, as in the project text."""
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


def bp_columns(model, y_true, y_pred):
    """Column vectors, as on the blackboard: δ is (n_l, B); no torch.no_grad, no .data."""
    delta = (-2 * (y_true - y_pred) * model.df[model.L](model.z[model.L])).T
    for l in range(model.L, 0, -1):
        model.dL_dw[l] = delta @ model.a[l - 1]
        model.dL_db[l] = delta.sum(dim=1)
        if l > 1:
            delta = (model.fc[str(l)].weight.T @ delta) * model.df[l - 1](model.z[l - 1]).T


def bp_in_place_on_its_own(model, y_true, y_pred):
    """In-place operations on its own tensors only."""
    with torch.no_grad():
        delta = y_pred - y_true
        delta *= 2
        delta *= model.df[model.L](model.z[model.L])
        for l in range(model.L, 0, -1):
            model.dL_dw[l] = delta.T @ model.a[l - 1]
            model.dL_db[l] = delta.sum(0)
            if l > 1:
                delta = delta @ model.fc[str(l)].weight
                delta.mul_(model.df[l - 1](model.z[l - 1]))


def bp_per_sample(model, y_true, y_pred):
    """What many students write: right for the course's one sample, sums nothing over a batch."""
    with torch.no_grad():
        delta = (-2 * (y_true[0] - y_pred[0]) * model.df[model.L](model.z[model.L][0]))[:, None]
        for l in range(model.L, 0, -1):
            model.dL_dw[l] = delta @ model.a[l - 1][0][None, :]
            model.dL_db[l] = delta[:, 0]
            if l > 1:
                delta = (model.fc[str(l)].weight.T @ delta) * model.df[l - 1](model.z[l - 1][0])[:, None]


def bp_tanh_from_a(model, y_true, y_pred):
    """tanh' = 1 - a²: right for the course's tanh nets, a hard-coded tanh' anywhere else."""
    with torch.no_grad():
        delta = -2 * (y_true - y_pred) * (1 - model.a[model.L] ** 2)
        for l in range(model.L, 0, -1):
            model.dL_dw[l] = delta.T @ model.a[l - 1]
            model.dL_db[l] = delta.sum(0)
            if l > 1:
                delta = (delta @ model.fc[str(l)].weight) * (1 - model.a[l - 1] ** 2)


CORRECT = [backpropagation, bp_loop, bp_einsum, bp_neurons, bp_columns, bp_in_place_on_its_own]
CORRECT_IDS = ["notebook", "loop", "einsum", "neurons", "columns", "in-place on its own"]


@pytest.mark.parametrize("fn", CORRECT, ids=CORRECT_IDS)
def test_correct_implementations_pass(fn):
    result, exc, report = run(fn)
    assert exc is None, report
    assert result and result.passed and [c.id for c in result.checks] == COURSE_IDS
    assert all(c.passed and c.name and c.message for c in result.checks)
    assert "8 / 8: ALL TESTS PASSED" in report and "FAILED" not in report
    assert all(e["autograd"] < 1e-10 and e["finite_differences"] < 1e-6 for e in result.errors.values())


@pytest.mark.parametrize("fn", CORRECT, ids=CORRECT_IDS)
def test_correct_implementations_pass_batches_and_other_activations(fn):
    model = MyNet([3, 5, 4, 2], activations=["relu", "sigmoid", "identity"])
    result, exc, report = run(fn, model, batch=True, n_points=2)
    assert exc is None, report
    assert [c.id for c in result.checks] == COURSE_IDS[:5] + ["autograd_batch"] + COURSE_IDS[5:]


@pytest.mark.parametrize("fn", [backpropagation, bp_einsum, bp_columns], ids=["notebook", "einsum", "columns"])
def test_correct_implementations_pass_mnist(fn, shared_data):
    result, exc, report = run(fn, MyNet([24 * 24, 16, 10]), data="mnist")
    assert exc is None, report
    assert "all 9402 parameter entries" in {c.id: c for c in result.checks}["finite_differences"].message
    assert len(report.strip().splitlines()) == 3   # short when everything passes: header, PASSED, summary


def test_the_course_checks_one_sample_at_a_time():
    """Code that sums nothing over the batch is right for the course (batches of one sample)."""
    result, exc, report = run(bp_per_sample)
    assert exc is None, report
    assert "10 samples, one at a time; 3 parameter points" in report and "batch" not in report
    result, exc, report = run(bp_per_sample, batch=True)
    assert set(failed(exc)) == {"autograd_batch", "finite_differences"}
    assert "only the first sample of the batch is used" in failed(exc)["autograd_batch"]


def test_n_samples_means_a_batch_check_too():
    result, exc, report = run(backpropagation, n_samples=32)
    assert exc is None, report
    assert "matches autograd, batch of 32 samples" in report and "101 calls" in result.checks[0].message
    result, exc, report = run(backpropagation, n_samples=4, batch=False)
    assert "batch" not in report and "14 calls" in result.checks[0].message


def test_tanh_from_a_is_right_on_tanh_nets_and_named_on_the_mixed_net(shared_data):
    for model, data in ((MyNet([2, 3, 2]), "toy"), (MyNet([24 * 24, 16, 10]), "mnist")):
        result, exc, report = run(bp_tanh_from_a, model, data=data)
        assert list(failed(exc)) == ["square"], report
        assert re.search(r"hard-coded as tanh' = 1 - a² \(right for tanh layers only\)", failed(exc)["square"])


@pytest.mark.parametrize("loss, acts", [("mse", None), ("bce", ["tanh", "sigmoid"]),
                                        ("logistic", ["relu", "identity"])])
def test_other_losses(loss, acts):
    result, exc, report = run(NB.backpropagation_with_loss, MyNet([2, 5, 2], activations=acts), loss=loss)
    assert exc is None, report
    assert f"loss '{loss}'" in report


def test_model_left_as_found_and_grad_empty():
    model = MyNet([2, 3, 2])
    before = [p.detach().clone() for p in model.parameters()]
    run(backpropagation, model)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())


def test_course_style_call_unchanged():
    """A student's notebook written against the course's harness runs as it is."""
    model = MyNet([2, 3, 2])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        harness.main_test(backpropagation, model, 10e-5, False, "toy")
    assert "ALL TESTS PASSED" in out.getvalue()


def test_verbose_prints_gradients_side_by_side():
    result, exc, report = run(backpropagation, verbose=True)
    assert exc is None
    assert "ours" in report and "autograd" in report and "fc[1].weight" in report
    ours_vs_autograd = re.findall(r"^\s+\d+\s+(\S+)\s+(\S+)$", report, flags=re.M)
    assert ours_vs_autograd and all(a == b for a, b in ours_vs_autograd)


def test_the_global_random_stream_is_untouched():
    torch.manual_seed(3)
    expected = torch.rand(4)
    model = MyNet([2, 3, 2])
    torch.manual_seed(3)
    run(backpropagation, model)
    assert torch.equal(torch.rand(4), expected)


def test_float32_model_is_checked_with_float32_tolerances():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        result, exc, report = run(backpropagation, MyNet([2, 3, 2]))
        assert exc is None, report
        assert "note: the model is torch.float32" in report
        result, exc, report = run(make_bp(dy=lambda y, yp: -(y - yp)), MyNet([2, 3, 2]))
        assert "factor 2" in failed(exc)["autograd"]
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


# ---------------------------------------------------------------------------------------------
# the bank of wrong implementations
# ---------------------------------------------------------------------------------------------
def make_bp(dy=None, df_out=None, df_hidden=None, dw=None, db=None, prop=None, layers=None, after=None):
    """A backpropagation with pieces swapped out; defaults are the correct pieces."""
    dy = dy or (lambda y, yp: -2 * (y - yp))
    df_out = df_out or (lambda m, l: m.df[l](m.z[l]))
    df_hidden = df_hidden or (lambda m, l: m.df[l](m.z[l]))
    dw = dw or (lambda d, a, W: d.T @ a)
    db = db or (lambda d: d.sum(dim=0))
    prop = prop or (lambda d, W: d @ W)

    def bp(model, y_true, y_pred):
        with torch.no_grad():
            L = model.L
            delta = dy(y_true, y_pred) * df_out(model, L)
            for l in range(L, 0, -1):
                if layers is None or l in layers:
                    model.dL_dw[l] = dw(delta, model.a[l - 1], model.fc[str(l)].weight)
                    model.dL_db[l] = db(delta)
                if l > 1:
                    delta = prop(delta, model.fc[str(l)].weight) * df_hidden(model, l - 1)
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
    grads = torch.autograd.grad(((y_pred - y_true) ** 2).sum(), list(params(model).values()))
    store(model, dict(zip(params(model), grads)))


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
    for s in (model.dL_dw, model.dL_db):
        for l in list(s):
            s[str(l)] = s.pop(l)


def bp_returns_instead(model, y_true, y_pred):
    model.dL_dw = {}
    model.dL_db = {}


def bp_replaces_parameter(model, y_true, y_pred):
    backpropagation(model, y_true, y_pred)
    w = model.fc["1"].weight
    model.fc["1"].weight = torch.nn.Parameter(w.detach().clone())


def bp_batch_one_only(model, y_true, y_pred):
    if y_pred.shape[0] != 1:
        raise RuntimeError("a Tensor with 10 elements cannot be converted to Scalar")
    backpropagation(model, y_true, y_pred)


def bp_overwrites_y_pred(model, y_true, y_pred):
    with torch.no_grad():
        delta = y_pred
        delta -= y_true
        delta *= 2 * model.df[model.L](model.z[model.L])
        for l in range(model.L, 0, -1):
            model.dL_dw[l] = delta.T @ model.a[l - 1]
            model.dL_db[l] = delta.sum(0)
            if l > 1:
                delta = (delta @ model.fc[str(l)].weight) * model.df[l - 1](model.z[l - 1])


def bp_changes_a(model, y_true, y_pred):
    backpropagation(model, y_true, y_pred)
    model.a[1].zero_()


def bp_changes_y_true(model, y_true, y_pred):
    backpropagation(model, y_true, y_pred)
    y_true.mul_(0)


def bp_changes_L(model, y_true, y_pred):
    backpropagation(model, y_true, y_pred)
    model.L = 1


def bp_changes_f(model, y_true, y_pred):
    backpropagation(model, y_true, y_pred)
    model.f[1] = torch.relu


def bp_slot_off_by_one(model, y_true, y_pred):
    """Layer 2's gradients stored in slot 1 (not a transpose, although the shapes say so)."""
    backpropagation(model, y_true, y_pred)
    model.dL_dw[1], model.dL_db[1] = model.dL_dw[2].clone(), model.dL_db[2].clone()


def bp_nan(model, y_true, y_pred):
    """0/0: NaN everywhere, not taken from .grad."""
    backpropagation(model, y_true, y_pred)
    model.dL_dw[1] = model.dL_dw[1] * torch.zeros(()) / torch.zeros(())


def bp_first_layer_uses_f_of_x(model, y_true, y_pred):
    """Only dL_dw[1] wrong (A^(0) taken as f(x)); δ and the propagation are fine."""
    backpropagation(model, y_true, y_pred)
    with torch.no_grad():
        delta = model.dL_db[1][None, :]
        model.dL_dw[1] = delta.T @ torch.tanh(model.a[0])


def bp_float32_inside(model, y_true, y_pred):
    backpropagation(model, y_true, y_pred)
    for s in (model.dL_dw, model.dL_db):
        for l in s:
            s[l] = s[l].float().double()


def _wrong_hidden_derivative(m, l):  # tanh' written as 1 - z^2 (should be 1 - a^2)
    return 1 - m.z[l] ** 2


VALUES = r"layer \d (weight|bias)\) is wrong: relative error .* worst entry fc\[\d\]\.\w+\[[\d, ]*\]: ours \S+ vs"

# (id, implementation, model layers, failing check id, diagnosis (regex))
BANK = [
    ("factor 2 missing", make_bp(dy=lambda y, yp: -(y - yp)), None, "autograd", r"factor 2"),
    ("factor 2 twice", make_bp(dy=lambda y, yp: -4 * (y - yp)), None, "autograd", r"factor 2 \(too large\)"),
    ("sign flipped", make_bp(dy=lambda y, yp: 2 * (y - yp)), None, "autograd", r"sign is flipped: ∂L/∂ŷ"),
    ("transposed weight grad", make_bp(dw=lambda d, a, W: a.T @ d), None, "stored", r"it is transposed"),
    ("transposed square", make_bp(dw=lambda d, a, W: a.T @ d), [3, 3, 3], "autograd", r"transposed on the square"),
    ("missing activation derivative", make_bp(df_out=lambda m, l: 1, df_hidden=lambda m, l: 1), None,
     "autograd", r"activation derivative f'\(z\) is missing \(at every layer\)"),
    ("missing output derivative", make_bp(df_out=lambda m, l: 1), None, "autograd", r"output layer is missing"),
    ("missing hidden derivative", make_bp(df_hidden=lambda m, l: 1), [2, 4, 3, 2], "autograd",
     r"output layer is right but δ is wrong from layer 2 down.*missing when δ is propagated back"),
    ("derivative at a", make_bp(df_out=lambda m, l: m.df[l](m.a[l]), df_hidden=lambda m, l: m.df[l](m.a[l])),
     None, "autograd", r"taken at a = f\(z\) instead of z \(at every layer\)"),
    ("f instead of df", make_bp(df_out=lambda m, l: m.f[l](m.z[l]), df_hidden=lambda m, l: m.f[l](m.z[l])),
     None, "autograd", r"f\(z\) is used instead of f'\(z\)"),
    ("hidden derivative 1 - z²", make_bp(df_hidden=_wrong_hidden_derivative), [2, 4, 3, 2], "autograd",
     r"output layer is right but δ is wrong from layer 2 down"),
    ("hidden sign", make_bp(df_hidden=lambda m, l: -m.df[l](m.z[l])), None, "autograd",
     r"output layer is right but δ is wrong from layer 1 down.*there: the sign is flipped$"),
    ("only the first layer's weight", bp_first_layer_uses_f_of_x, None, "autograd",
     r"δ is right at every layer \(every bias gradient is right\) but the weight gradient of layer 1 is wrong"),
    ("mean instead of sum (MSE mean)", make_bp(dy=lambda y, yp: -2 * (y - yp) / yp.numel()), None,
     "autograd", r"mean instead of sum over the outputs"),
    ("gradients in float32", bp_float32_inside, None, "autograd", r"^(?!.*δ is right).*float32 precision"),
    ("all zeros", make_bp(dw=lambda d, a, W: torch.zeros_like(W), db=lambda d: torch.zeros(d.shape[1])),
     None, "autograd", r"all zero"),
    ("bias keepdim", make_bp(db=lambda d: d.sum(0, keepdim=True)), None, "stored", r"shape \(1, 3\).*no keepdim"),
    ("wrong dtype", make_bp(dw=lambda d, a, W: (d.T @ a).float()), None, "stored", r"dtype torch.float32"),
    ("missing a layer", make_bp(layers={2}), None, "stored", r"model.dL_dw\[1\] was not stored in this call"),
    ("gradient of layer 2 in slot 1", bp_slot_off_by_one, None, "stored",
     r"^(?!.*transposed).*holds the gradient of fc\[2\]\.weight"),
    ("NaN from 0/0", bp_nan, None, "stored", r"^(?!.*(copied|\.grad)).*NaN everywhere \(a 0/0"),
    ("copying .grad", bp_copy_grad, None, "stored", r"copied from fc\[\d\]\.\w+\.grad"),
    ("copying .grad.clone()", bp_copy_grad_clone, None, "stored", r"copied from fc\[\d\]\.\w+\.grad"),
    ("string keys", bp_string_keys, None, "stored", r"keyed by strings"),
    ("gradients not stored", bp_returns_instead, None, "stored", r"not stored"),
    ("calling .backward()", bp_backward, None, "no_autograd", r"called autograd's backward engine"),
    ("calling torch.autograd.grad", bp_autograd_grad, None, "no_autograd", r"torch\.autograd\.grad"),
    ("backward swallowed", bp_swallowed_backward, None, "no_autograd", r"called autograd's backward engine"),
    ("SGD inside", make_bp(after=_sgd_inside), None, "unchanged", r"fc\[1\]\.weight was modified.*training loop"),
    ("zero_grad inside", make_bp(after=_zero_grad_inside), None, "unchanged", r"\.grad was changed"),
    ("replacing a parameter", bp_replaces_parameter, None, "unchanged", r"replaced by a new tensor"),
    ("overwriting y_pred in place", bp_overwrites_y_pred, None, "unchanged",
     r"y_pred was changed in place: `delta = y_pred` does not copy"),
    ("changing a[1] in place", bp_changes_a, None, "unchanged", r"model\.a\[1\] was changed in place"),
    ("changing y_true in place", bp_changes_y_true, None, "unchanged", r"y_true was changed in place"),
    ("changing model.L", bp_changes_L, None, "unchanged", r"model\.L was changed \(2 -> 1\).*restored"),
    ("changing model.f", bp_changes_f, None, "unchanged", r"entries of model\.f were changed"),
]


def _assert_caught(name, fn, layers, check, diagnosis, **kwargs):
    model = MyNet(layers or [2, 3, 2])
    before = [p.detach().clone() for p in model.parameters()]
    before_f, before_L = dict(model.f), model.L
    result, exc, report = run(fn, model, **kwargs)
    assert exc is not None, f"{name} passed the harness:\n{report}"
    assert not exc.result and exc.result.failed
    fails = failed(exc)
    assert check in fails, f"{name}: expected check {check!r} to fail, got {list(fails)}"
    assert re.search(diagnosis, fails[check]), f"{name}: diagnosis {diagnosis!r} not in {fails[check]!r}"
    if check in ("autograd", "autograd_batch", "finite_differences"):
        assert re.search(VALUES, fails[check]) and "likely cause: " in fails[check], fails[check]
    assert fails[check] in str(exc), "the AssertionError message carries the diagnosis"
    assert "FAILED" in report and "SOME TESTS FAILED" in report, "the report is printed before raising"
    # whatever the implementation did, the harness restored the model
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())
    assert dict(model.f) == before_f and model.L == before_L
    return exc


@pytest.mark.parametrize("name, fn, layers, check, diagnosis", BANK, ids=[b[0] for b in BANK])
def test_wrong_implementation_is_caught(name, fn, layers, check, diagnosis):
    _assert_caught(name, fn, layers, check, diagnosis)


BATCH_BANK = [
    ("mean over the batch", make_bp(dw=lambda d, a, W: d.T @ a / d.shape[0], db=lambda d: d.mean(0)),
     "autograd_batch", r"mean instead of sum over the batch"),
    ("bias not summed over batch", make_bp(db=lambda d: d.squeeze()), "stored", r"one row per sample"),
    ("bias of the first sample only", make_bp(db=lambda d: d[0]), "autograd_batch",
     r"only the biases are wrong.*only the first sample"),
    ("first sample only", bp_per_sample, "autograd_batch", r"only the first sample of the batch is used"),
    ("works for one sample only", bp_batch_one_only, "runs", r"not on a batch of 10"),
]


@pytest.mark.parametrize("name, fn, check, diagnosis", BATCH_BANK, ids=[b[0] for b in BATCH_BANK])
def test_batch_bugs_are_caught_when_batches_are_checked(name, fn, check, diagnosis):
    _assert_caught(name, fn, None, check, diagnosis, batch=True)
    result, exc, report = run(fn)   # the course's one-sample checks: right
    assert exc is None, report


def test_failures_name_layer_parameter_worst_entry_and_cause():
    exc = _assert_caught("factor 2", make_bp(dy=lambda y, yp: -(y - yp)), None, "autograd", "factor 2")
    message = failed(exc)["autograd"]
    match = re.search(r"worst entry (fc\[\d\]\.\w+)\[(\d+)(?:, (\d+))?\]: ours (\S+) vs autograd (\S+);", message)
    assert match, message
    ours, theirs = float(match.group(4)), float(match.group(5))
    assert ours == pytest.approx(theirs / 2, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# bugs only a square net with a different activation per layer shows
# ---------------------------------------------------------------------------------------------
def _transposed_unless_it_does_not_fit(d, a, W):
    g = a.T @ d
    return g if g.shape == W.shape else g.T


def _w_transposed_when_it_fits(d, W):
    try:
        return d @ W.T
    except RuntimeError:
        return d @ W


def _shared_buffers():
    buffers = {}

    def keep(model, y_true, y_pred):
        for s in (model.dL_dw, model.dL_db):
            for l in sorted(s, reverse=True):
                buf = buffers.setdefault(tuple(s[l].shape), torch.empty_like(s[l]))
                buf.copy_(s[l])
                s[l] = buf
    return keep


SQUARE_BANK = [
    ("transposed only when the shape does not fit", make_bp(dw=_transposed_unless_it_does_not_fit),
     r"transposed on the square layers \(1, 2\), where the shape cannot tell"),
    ("W instead of Wᵀ on a square layer", make_bp(prop=_w_transposed_when_it_fits),
     r"propagated with W\^\(l\)ᵀ instead of W\^\(l\) on the square layers \(2\)"),
    ("f' one layer off", make_bp(df_hidden=lambda m, l: m.df[l + 1](m.z[l])),
     r"derivative of the layer above is used: Δ\^\(l-1\) needs model\.df\[l-1\]"),
    ("one buffer for same-shaped layers", make_bp(after=_shared_buffers()),
     r"model\.dL_dw\[2\] is the same memory as model\.dL_dw\[1\]"),
    ("hard-coded tanh'", make_bp(df_out=lambda m, l: 1 - torch.tanh(m.z[l]) ** 2,
                                 df_hidden=lambda m, l: 1 - torch.tanh(m.z[l]) ** 2),
     r"hard-coded as tanh'\(z\) = 1 - tanh²\(z\)"),
]


@pytest.mark.parametrize("name, fn, diagnosis", SQUARE_BANK, ids=[b[0] for b in SQUARE_BANK])
def test_bugs_hidden_by_the_course_nets_fail_only_the_square_check(name, fn, diagnosis):
    for model in (MyNet([2, 3, 2]), MyNet([2, 5, 4, 2])):
        result, exc, report = run(fn, model)
        assert exc is not None and list(failed(exc)) == ["square"], report
        assert re.search(diagnosis, failed(exc)["square"]), failed(exc)["square"]
        assert "MyNet([3, 3, 3, 2]) with sigmoid, tanh, identity" in failed(exc)["square"]


def test_square_check_on_a_class_that_cannot_build_it():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.L, self.n_l = 2, [2, 3, 2]
            self.z, self.a, self.dL_dw, self.dL_db = {}, {}, {}, {}
            self.f = {1: torch.tanh, 2: torch.tanh}
            self.df = {1: lambda z: 1 - torch.tanh(z) ** 2, 2: lambda z: 1 - torch.tanh(z) ** 2}
            self.fc = nn.ModuleDict({"1": nn.Linear(2, 3), "2": nn.Linear(3, 2)})

        def forward(self, x):
            self.a[0] = x
            for l in (1, 2):
                self.z[l] = self.fc[str(l)](self.a[l - 1])
                self.a[l] = torch.tanh(self.z[l])   # ignores self.f
            return self.a[2]
    result, exc, report = run(backpropagation, Fixed())
    assert exc is None and result.passed   # the harness cannot build it: skipped, never failed
    square = {c.id: c for c in result.checks}["square"]
    assert square.skipped and not square.passed and "SKIPPED" in report
    assert re.search(r"skipped: your Fixed\(\[3, 3, 3, 2\]\) cannot be built .* other arguments", square.message)
    assert "7 / 7: ALL TESTS PASSED" in report


# ---------------------------------------------------------------------------------------------
# cheats: autograd in disguise, numerical differentiation, forward-mode AD
# ---------------------------------------------------------------------------------------------
def _functional_params(model):
    return {f"fc.{l}.{k}": getattr(model.fc[str(l)], k).detach()
            for l in range(1, model.L + 1) for k in ("weight", "bias")}


def _from_functional(grads):
    return {f"fc[{n.split('.')[1]}].{n.split('.')[2]}": g for n, g in grads.items()}


def bp_jvp(model, y_true, y_pred):
    x, ps = model.a[0], _functional_params(model)
    grads = {}
    for name, p in ps.items():
        g = torch.zeros_like(p)
        for i in range(p.numel()):
            tangent = {n: torch.zeros_like(q) for n, q in ps.items()}
            tangent[name].view(-1)[i] = 1
            _, g.view(-1)[i] = torch.func.jvp(
                lambda q: sse(torch.func.functional_call(model, q, (x,)), y_true), (ps,), (tangent,))
        grads[name] = g
    store(model, _from_functional(grads))


def bp_jacfwd(model, y_true, y_pred):
    x, ps = model.a[0], _functional_params(model)
    store(model, _from_functional(torch.func.jacfwd(
        lambda q: sse(torch.func.functional_call(model, q, (x,)), y_true))(ps)))


def bp_forward_ad_by_hand(model, y_true, y_pred):
    """Forward-mode AD through a forward pass written by hand (no forward of the model)."""
    import torch.autograd.forward_ad as fwAD
    grads = {}
    for name, p in params(model).items():
        g = torch.zeros_like(p)
        for i in range(p.numel()):
            with fwAD.dual_level():
                tangent = torch.zeros_like(p)
                tangent.view(-1)[i] = 1
                moved = {**{k: q.detach() for k, q in params(model).items()}, name: fwAD.make_dual(p.detach(), tangent)}
                a = model.a[0]
                for l in range(1, model.L + 1):
                    a = torch.tanh(a @ moved[f"fc[{l}].weight"].T + moved[f"fc[{l}].bias"])
                g.view(-1)[i] = fwAD.unpack_dual(sse(a, y_true)).tangent
        grads[name] = g
    store(model, grads)


def bp_walks_grad_fn(model, y_true, y_pred):
    node = sse(y_pred, y_true).grad_fn
    for next_node, _ in node.next_functions:
        print(next_node)


def bp_revives_engine(model, y_true, y_pred):
    engine = torch.autograd.variable.Variable._execution_engine._engine
    engine.run_backward((sse(y_pred, y_true),), (torch.ones(()),), False, False, (), False)


def bp_fresh_engine(model, y_true, y_pred):
    """A new engine and its own graph from a forward written by hand."""
    with torch.enable_grad():
        ps = {k: p.detach().requires_grad_() for k, p in params(model).items()}
        a = model.a[0]
        for l in range(1, model.L + 1):
            a = torch.tanh(a @ ps[f"fc[{l}].weight"].T + ps[f"fc[{l}].bias"])
        engine = torch._C._ImperativeEngine()
        grads = engine.run_backward((sse(a, y_true),), (torch.ones(()),), False, False, tuple(ps.values()), False)
    store(model, dict(zip(ps, grads)))


def _finite_difference_bp(derivative):
    def bp(model, y_true, y_pred):
        x, grads = model.a[0].clone(), {}
        with torch.no_grad():
            for key, p in params(model).items():
                g, flat = torch.zeros_like(p), p.view(-1)
                for i in range(p.numel()):
                    orig = flat[i].item()

                    def loss_at(value, flat=flat, i=i):
                        flat[i] = value
                        out = sse(model(x), y_true).item()
                        flat[i] = orig
                        return out
                    g.view(-1)[i] = derivative(loss_at, orig)
                grads[key] = g
        store(model, grads)
    return bp


def _centred(loss_at, w, h=1e-6):
    return (loss_at(w + h) - loss_at(w - h)) / (2 * h)


def _richardson(loss_at, w):
    return (4 * _centred(loss_at, w, 1e-4) - _centred(loss_at, w, 2e-4)) / 3


def bp_course_way(model, y_true, y_pred, h=1e-6):
    """Two fresh models per entry, as the course's harness computes its finite differences."""
    x, grads = model.a[0].clone(), {}
    for key, p in params(model).items():
        g = torch.zeros_like(p)
        for i in range(p.numel()):
            losses = []
            for step in (h, -h):
                m = type(model)(model.n_l)
                m.load_state_dict(model.state_dict())
                params(m)[key].data.view(-1)[i] += step
                losses.append(sse(m(x), y_true).item())
            g.view(-1)[i] = (losses[0] - losses[1]) / (2 * h)
        grads[key] = g
    store(model, grads)


def bp_complex_step(model, y_true, y_pred):
    x, grads = model.a[0].to(torch.complex128), {}
    twin = copy.deepcopy(model).to(torch.complex128)
    with torch.no_grad():
        for key, p in params(twin).items():
            g, flat = torch.zeros(p.shape), p.view(-1)
            for i in range(p.numel()):
                orig = flat[i].clone()
                flat[i] = orig + 1e-20j
                g.view(-1)[i] = ((twin(x) - y_true) ** 2).sum().imag / 1e-20
                flat[i] = orig
            grads[key] = g
    store(model, grads)


CHEATS = [
    ("torch.func.jvp", bp_jvp, r"used forward-mode AD.*an evaluation of the model \(functional_call\)"),
    ("torch.func.jacfwd", bp_jacfwd, r"used forward-mode AD.*forward-mode AD \(jacfwd\)"),
    ("forward_ad through a hand-written forward", bp_forward_ad_by_hand, r"used forward-mode AD"),
    ("walking grad_fn", bp_walks_grad_fn, r"the autograd graph \(\.grad_fn\)"),
    ("reviving the engine from ._engine", bp_revives_engine, r"called autograd's backward engine"),
    ("a fresh _ImperativeEngine", bp_fresh_engine, r"built an autograd graph.*created a new autograd engine"),
    ("finite differences h=1e-6", _finite_difference_bp(_centred), r"evaluated the model or its layers \d+ times"),
    ("Richardson finite differences", _finite_difference_bp(_richardson), r"evaluated the model or its layers"),
    ("course-way finite differences", bp_course_way, r"evaluated the model or its layers"),
    ("complex step", bp_complex_step, r"evaluated the model.*complex numbers \(complex-step differentiation\)"),
]


@pytest.mark.filterwarnings("ignore:Complex modules")
@pytest.mark.parametrize("name, fn, diagnosis", CHEATS, ids=[c[0] for c in CHEATS])
def test_cheats_are_caught(name, fn, diagnosis):
    exc = _assert_caught(name, fn, None, "no_autograd", diagnosis, n_points=1, n_samples=2, batch=False)
    assert "square" in failed(exc)
    for check in ("autograd", "finite_differences"):   # the values are not theirs: not credited
        assert failed(exc)[check].startswith("not checked"), failed(exc)[check]


def test_numerical_differentiation_in_place_is_seen_by_the_parameters_version():
    exc = _assert_caught("fd", _finite_difference_bp(_centred), None, "unchanged",
                         r"changed in place and put back \(its version counter moved", n_points=1, n_samples=1)
    assert "no_autograd" in failed(exc)


def test_static_look_finds_autograd_names_in_helpers_too():
    def helper(t):
        return torch.autograd.backward(t)

    def bp(model, y_true, y_pred):
        backpropagation(model, y_true, y_pred)
        if y_pred is None:
            helper(y_pred)
    findings = harness.inspect_code(bp)
    assert len(findings) == 1
    assert re.match(r"autograd \(\.backward\(\)\): `backward` at line \d+ of helper", findings[0])
    assert harness.inspect_code(backpropagation) == [] and harness.inspect_code(bp_neurons) == []
    exc = _assert_caught("static", bp, None, "no_autograd", r"its code refers to autograd \(\.backward\(\)\)")
    assert list(failed(exc)) == ["no_autograd", "square"]


class _TanhLayer:
    """Lab 4's style: a layer object with its own hand-written backward() (not autograd's)."""

    def __init__(self, linear, df):
        self.linear, self.df = linear, df

    def backward(self, delta, a_prev, z):
        delta = delta * self.df(z)
        return delta @ self.linear.weight, delta.T @ a_prev, delta.sum(0)


def bp_layer_objects(model, y_true, y_pred):
    delta = 2 * (y_pred - y_true)
    for l in range(model.L, 0, -1):
        layer = _TanhLayer(model.fc[str(l)], model.df[l])
        delta, model.dL_dw[l], model.dL_db[l] = layer.backward(delta, model.a[l - 1], model.z[l])


def test_a_backward_method_of_the_students_own_layer_is_not_autograd():
    assert harness.inspect_code(bp_layer_objects) == []
    result, exc, report = run(bp_layer_objects)
    assert exc is None, report


def test_tensor_backward_in_code_that_runs_is_caught_at_run_time():
    def bp(model, y_true, y_pred):
        with torch.enable_grad():
            loss = ((model(model.a[0]) - y_true) ** 2).sum()
            loss.backward()
    assert harness.inspect_code(bp) == []          # a method on a variable: the guard decides
    _assert_caught("run time", bp, None, "no_autograd", r"autograd's backward engine|evaluated the model")


def test_autograd_and_the_model_class_are_restored_after_blocking():
    linear_forward, engine = nn.Linear.forward, torch.autograd.variable.Variable._execution_engine
    for fn in (bp_backward, bp_revives_engine, bp_jvp, bp_fresh_engine):
        run(fn, n_points=1, n_samples=1)
    assert vars(nn.Linear)["forward"] is linear_forward
    assert torch.autograd.variable.Variable._execution_engine is engine
    assert torch._C._ImperativeEngine is type(engine) and not hasattr(torch._C, "_EngineBase")
    assert "forward" in vars(MyNet) and vars(MyNet)["forward"].__name__ == "forward"
    assert not hasattr(vars(MyNet)["forward"], "__wrapped__")
    x = torch.ones(2, requires_grad=True)
    (x * x).sum().backward()
    assert torch.equal(x.grad, torch.full((2,), 2.0))
    _, tangent = torch.func.jvp(torch.sin, (torch.zeros(2),), (torch.ones(2),))
    assert torch.equal(tangent, torch.ones(2))


# ---------------------------------------------------------------------------------------------
# hangs, exits, errors inside
# ---------------------------------------------------------------------------------------------
def bp_endless(model, y_true, y_pred):
    while True:
        pass


def bp_endless_swallowing(model, y_true, y_pred):
    while True:
        try:
            time.sleep(5)
        except Exception:
            pass


def bp_exits(model, y_true, y_pred):
    sys.exit()


@pytest.mark.parametrize("fn", [bp_endless, bp_endless_swallowing], ids=["busy", "sleeping, swallowing"])
def test_an_endless_loop_ends_at_the_time_limit(fn):
    start = time.monotonic()
    exc = _assert_caught("endless", fn, None, "runs", r"^did not return within the time limit of 0.2 s \(sample 0, "
                         r"point 1\); an endless loop\? The remaining calls were skipped", timeout=0.2)
    assert time.monotonic() - start < 5
    assert [len(exc.result.checks), failed(exc)["square"]] == [8, "not run: the calls stopped at the time limit "
                                                                  "(sample 0, point 1) on MyNet([2, 3, 2])"]


def test_the_time_limit_works_outside_the_main_thread_and_restores_other_timers():
    outcome = {}

    def target():
        outcome["exc"] = run(bp_endless, timeout=0.2)[1]
    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and "time limit of 0.2 s" in failed(outcome["exc"])["runs"]
    handler = lambda *args: None  # noqa: E731
    old, old_timer = signal.signal(signal.SIGALRM, handler), signal.setitimer(signal.ITIMER_REAL, 50)
    try:
        run(bp_endless, timeout=0.2)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 40 < remaining < 50 and signal.getsignal(signal.SIGALRM) is handler
    finally:
        signal.signal(signal.SIGALRM, old)
        signal.setitimer(signal.ITIMER_REAL, *old_timer)


def test_sys_exit_is_caught_and_reported():
    _assert_caught("exit", bp_exits, None, "runs", r"^it called sys\.exit\(\) or exit\(\) \(code None\).*must return")


def test_harness_never_raises_from_inside_on_broken_gradients():
    def bp_garbage(model, y_true, y_pred):
        model.dL_dw = {1: "not a tensor", 2: torch.zeros(7)}
        model.dL_db = [None, None, None]
    result, exc, report = run(bp_garbage)
    assert isinstance(exc, AssertionError)
    assert "is a str, not a torch.Tensor" in str(exc)


# ---------------------------------------------------------------------------------------------
# arguments, data, standalone use
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0, -1e-6, 1e9, 1e-3, 1e-12, float("nan"), float("inf"), True, "1e-6"])
def test_eps_is_validated(eps):
    with pytest.raises(ValueError, match=r"eps must be a finite step between 1e-08 and 0\.0001"):
        harness.main_test(backpropagation, MyNet(), eps=eps)


@pytest.mark.parametrize("eps", [1e-8, 1e-4])
def test_eps_at_the_ends_of_the_range_passes_a_correct_implementation(eps):
    result, exc, report = run(backpropagation, MyNet([2, 5, 4, 2]), eps=eps)
    assert exc is None, report


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
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        harness.main_test(backpropagation, MyNet(), timeout=0)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        harness.main_test(backpropagation, MyNet(), n_samples=0)


def test_mnist_sample_is_real_mnist(shared_data):
    x, y = harness.load_mnist_sample(5)
    assert x.shape == (5, 1, 24, 24) and x.dtype == torch.float64
    assert y.shape == (5, 10) and torch.equal(y.sum(1), torch.ones(5))
    assert y.argmax(1).tolist() == [7, 2, 1, 0, 4]  # the first MNIST test labels
    assert abs(x.mean().item()) < 0.3 and 0.7 < x.std().item() < 1.5  # normalised


def test_mnist_missing_is_a_clear_error(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"No MNIST test split in .*Go online .*set DATA_DIR"):
        harness.load_mnist_sample(5)


def test_data_folder_default_is_next_to_the_harness(monkeypatch, tmp_path):
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert harness.data_folder() == ROOT / "data"
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert harness.data_folder() == tmp_path and harness.data_folder("elsewhere").name == "elsewhere"


STANDALONE = """
import sys, torch
torch.set_default_dtype(torch.double)
from tests_backpropagation import main_test
from torch import nn
class Net(nn.Module):
    def __init__(self, n_l=[2, 3, 2]):
        super().__init__()
        self.L, self.n_l = len(n_l) - 1, n_l
        self.z, self.a, self.dL_dw, self.dL_db = {}, {}, {}, {}
        self.f = {i: torch.tanh for i in range(1, self.L + 1)}
        self.df = {i: (lambda x: 1 - torch.tanh(x) ** 2) for i in range(1, self.L + 1)}
        self.fc = nn.ModuleDict({str(i): nn.Linear(n_l[i - 1], n_l[i]) for i in range(1, self.L + 1)})
    def forward(self, x):
        self.a[0] = torch.flatten(x, 1)
        for i in range(1, self.L + 1):
            self.z[i] = self.fc[str(i)](self.a[i - 1]); self.a[i] = self.f[i](self.z[i])
        return self.a[self.L]
def bp(model, y_true, y_pred):
    with torch.no_grad():
        d = 2 * (y_pred - y_true) * model.df[model.L](model.z[model.L])
        for l in range(model.L, 0, -1):
            model.dL_dw[l] = d.T @ model.a[l - 1]; model.dL_db[l] = d.sum(0)
            if l > 1: d = (d @ model.fc[str(l)].weight) * model.df[l - 1](model.z[l - 1])
assert main_test(bp, Net([3, 4, 2]), data='toy')
assert main_test(bp, Net([576, 16, 10]), data='mnist')
assert not [m for m in sys.modules if m.startswith('inf265')]
"""


def test_standalone_copy_works(tmp_path, shared_data):
    """The two files copied alone next to a notebook: torch and torchvision only, MNIST from data/."""
    for name in ("tests_backpropagation.py", "harness_core.py"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    (tmp_path / "data" / "MNIST").mkdir(parents=True)
    (tmp_path / "data" / "MNIST" / "raw").symlink_to((shared_data / "MNIST" / "raw").resolve())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATA_DIR")}
    env["INF265_OFFLINE"] = "1"
    proc = subprocess.run([sys.executable, "-c", STANDALONE], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("8 / 8: ALL TESTS PASSED") == 2


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


# ---------------------------------------------------------------------------------------------
# the two halves: collect (untrusted side) and judge (trusted side)
# ---------------------------------------------------------------------------------------------
PLAIN = (str, bool, int, float, type(None), torch.Tensor)


def _assert_plain(value, where="collection"):
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), where
            _assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _assert_plain(v, f"{where}[{i}]")
    else:
        assert isinstance(value, PLAIN), f"{where} is a {type(value).__name__}"


@pytest.mark.parametrize("fn", [backpropagation, make_bp(dy=lambda y, yp: -(y - yp)), bp_overwrites_y_pred,
                                bp_copy_grad, bp_backward, bp_changes_L],
                         ids=["right", "factor 2", "y_pred", ".grad", "backward", "model.L"])
def test_collect_records_are_plain_data_that_judge_alone_decides_on(fn, tmp_path):
    """As a grader would: collect in one place, serialise, judge with a ReferenceNet elsewhere."""
    model = MyNet([2, 3, 2])
    x, y = harness.toy_data(model, 4)
    points = harness.parameter_points(model, x, y, n_points=2)
    collection = harness.collect(fn, model, x, y, points, batch=True, timeout=10)
    _assert_plain(collection)
    assert {"label", "point", "samples", "batch_size", "error", "timed_out", "exited", "autograd_used",
            "autograd_how", "forward_evaluations", "changed_parameters", "changed_grads", "changed_inputs",
            "changed_attributes", "stored"} == set(collection["calls"][0])
    torch.save(collection, tmp_path / "collection.pt")
    received = torch.load(tmp_path / "collection.pt", weights_only=True)
    reference = harness.ReferenceNet([2, 3, 2], "tanh")
    reference.load_state_dict(model.state_dict())
    judged = harness.judge(received, reference, x, y, points, batch=True)
    result, exc, _ = run(fn, model, n_samples=4, n_points=2, batch=True, square=False)
    expected = result if exc is None else exc.result
    assert [(c.id, c.name, c.passed, c.message) for c in judged.checks] == \
        [(c.id, c.name, c.passed, c.message) for c in expected.checks]


def test_square_halves_with_a_trusted_reference():
    collection = harness.collect_square(bp_tanh_from_a, MyNet([2, 3, 2]))
    _assert_plain(collection)
    check = harness.judge_square(collection)
    assert check.id == "square" and not check.passed and "hard-coded as tanh' = 1 - a²" in check.message
    assert harness.judge_square(harness.collect_square(backpropagation, harness.ReferenceNet)).passed


def test_parameter_points_leave_the_model_unchanged_and_step_downhill():
    model = MyNet([2, 3, 2])
    x, y = harness.toy_data(model, 10)
    before = {k: p.detach().clone() for k, p in params(model).items()}
    points = harness.parameter_points(model, x, y, n_points=3)
    assert all(torch.equal(p, before[k]) for k, p in params(model).items())
    assert all(torch.equal(points[0][k], before[k]) for k in before)
    losses = []
    for point in points:
        reference = harness.ReferenceNet([2, 3, 2])
        reference.load_state_dict({k.replace("[", ".").replace("]", ""): t for k, t in point.items()})
        losses.append(sse(reference(x), y).item())
    assert losses[0] > losses[1] > losses[2]


def test_finite_differences_are_the_course_ones(shared_data):
    """The batched finite differences equal the plain in-place ones (same steps, same losses)."""
    torch.manual_seed(0)
    model = MyNet([2, 4, 3, 2], activations=["sigmoid", "relu", "tanh"])
    x, y = harness.toy_data(model, 3)
    with torch.no_grad():
        fast, _ = harness_core._finite_differences(model, x, y, "sse", 1e-6)
        plain = harness_core._fd_in_place(model, x, y, "sse", 1e-6)
    for key in fast:
        assert harness.relative_error(fast[key], plain[key]) < 1e-8, key


# ---------------------------------------------------------------------------------------------
# the harness's own shape
# ---------------------------------------------------------------------------------------------
STDLIB = {"__future__", "_thread", "contextlib", "ctypes", "dis", "functools", "gzip", "math", "os", "signal", "sys",
          "tempfile", "threading", "types", "dataclasses", "pathlib", "time"}


def _tree(name):
    tree = ast.parse((ROOT / name).read_text())
    imports = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imports |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    return tree, imports, names


def test_harness_structure():
    """What a student opens is short (main_test and its report, the course's ~200 lines is the scale);
    the guard, the judge and the diagnoses are in harness_core.py beside it; torch and torchvision only."""
    tree, imports, names = _tree("tests_backpropagation.py")
    assert len((ROOT / "tests_backpropagation.py").read_text().splitlines()) <= 260
    assert imports <= STDLIB | {"torch", "harness_core"}, imports
    assert [n for n in names if not n.startswith("_")] == ["main_test"]
    core, core_imports, core_names = _tree("harness_core.py")
    assert core_imports <= STDLIB | {"torch", "torchvision"}, core_imports
    public = [name for name in core_names if not name.startswith("_")]
    assert public[:2] == ["collect", "call_plan"] and "judge" in public[:5] and set(public) <= set(harness.__all__)
    first_internal = core_names.index("_guarded_call")   # the public API first, then the internals
    assert all(core_names.index(name) < first_internal for name in public if not name.startswith("sgd_"))
    for node in [*ast.walk(tree), *ast.walk(core)]:
        if isinstance(node, ast.FunctionDef):
            body = node.body[1:] if ast.get_docstring(node) else node.body
            assert body[-1].end_lineno - body[0].lineno + 1 <= 40, node.name
    for check_id in harness.CHECKS:
        assert f"[{check_id}]" in harness.__doc__, check_id


# ---------------------------------------------------------------------------------------------
# the third bank (issue 21) and the trusted plan (issue 20), as students write them
# ---------------------------------------------------------------------------------------------
def bp_accumulates(model, y_true, y_pred):
    """The stores added to once they hold something: passes a harness that empties them."""
    delta = 2 * (y_pred - y_true) * model.df[model.L](model.z[model.L])
    for l in range(model.L, 0, -1):
        if model.dL_dw[l] is None:
            model.dL_dw[l], model.dL_db[l] = delta.T @ model.a[l - 1], delta.sum(0)
        else:
            model.dL_dw[l] += delta.T @ model.a[l - 1]
            model.dL_db[l] += delta.sum(0)
        if l > 1:
            delta = (delta @ model.fc[str(l)].weight) * model.df[l - 1](model.z[l - 1])


def bp_own_forward(model, y_true, y_pred):
    """A forward pass written by hand instead of the stored a/z (no model call, no autograd)."""
    a, z = {0: model.a[0]}, {}
    for l in range(1, model.L + 1):
        z[l] = a[l - 1] @ model.fc[str(l)].weight.T + model.fc[str(l)].bias
        a[l] = model.f[l](z[l])
    delta = 2 * (a[model.L] - y_true) * model.df[model.L](z[model.L])
    for l in range(model.L, 0, -1):
        model.dL_dw[l], model.dL_db[l] = delta.T @ a[l - 1], delta.sum(0)
        if l > 1:
            delta = (delta @ model.fc[str(l)].weight) * model.df[l - 1](z[l - 1])


def bp_transposes_and_restores(model, y_true, y_pred):
    delta = 2 * (y_pred - y_true) * model.df[model.L](model.z[model.L])
    for l in range(model.L, 0, -1):
        a_prev = model.a[l - 1].t_()
        model.dL_dw[l] = (a_prev @ delta).T
        model.a[l - 1].t_()
        model.dL_db[l] = delta.sum(0)
        if l > 1:
            delta = (delta @ model.fc[str(l)].weight) * model.df[l - 1](model.z[l - 1])


def bp_zero_dim_bias(model, y_true, y_pred):
    delta = 2 * (y_pred - y_true) * model.df[model.L](model.z[model.L])
    for l in range(model.L, 0, -1):
        model.dL_dw[l], model.dL_db[l] = delta.T @ model.a[l - 1], torch.sum(delta)
        if l > 1:
            delta = (delta @ model.fc[str(l)].weight) * model.df[l - 1](model.z[l - 1])


def test_adding_to_the_stores_fails_as_in_the_courses_call_pattern():
    _assert_caught("+=", bp_accumulates, None, "autograd", r"added to what model.dL_dw\[l\].*\(`\+=`\)")


def test_only_the_stored_activations_pass_the_stale_check():
    exc = _assert_caught("own forward", bp_own_forward, None, "stored_activations",
                         r"recomputes the forward pass .* instead of using the stored")
    assert list(failed(exc)) == ["stored_activations", "square"]   # right on the model's own forward pass


def test_an_input_changed_and_put_back_is_not_a_change():
    result, exc, report = run(bp_transposes_and_restores)
    assert exc is None, report


def test_a_zero_dim_bias_gradient_is_named_by_its_shape():
    _assert_caught("sum without dim", bp_zero_dim_bias, None, "stored", r"model.dL_db\[1\] has shape \(\), expected \(3,\)")


def test_judge_reads_records_only_as_answers_to_its_own_calls():
    """A forged collection (fewer calls, other samples, zeros) is invalid or judged on the judge's plan."""
    model = MyNet([2, 3, 2])
    x, y = harness.toy_data(model, 3)
    points = harness.parameter_points(model, x, y, n_points=1)
    plan = harness.call_plan(3, 1)
    collection = harness.collect(backpropagation, model, x, y, points, plan=plan, timeout=10)
    reference = harness.ReferenceNet([2, 3, 2])
    reference.load_state_dict(model.state_dict())
    assert harness.judge(collection, reference, x, y, points, plan=plan).passed
    forged = copy.deepcopy(collection)
    for rec in forged["calls"]:
        rec["samples"], rec["point"] = [], 0
        for entry in rec["stored"].values():
            entry["tensor"] = torch.zeros_like(entry["tensor"])
    assert not harness.judge(forged, reference, x, y, points, plan=plan).passed   # judged on the plan's samples
    for broken in ({"calls": collection["calls"][:2]}, {"calls": collection["calls"] * 2},
                   {"calls": [{**collection["calls"][0], "autograd_how": "x"}] + collection["calls"][1:]}):
        with pytest.raises(harness.InvalidRecords):
            harness.judge(broken, reference, x, y, points, plan=plan)
