"""Property tests (hypothesis) of the notebook's own ``MyNet`` and ``backpropagation``.

Random depths, widths, batch sizes, activations and losses: the hand-written gradients match
autograd to 1e-10 (relative, per layer and parameter), leave parameters and ``.grad`` alone,
and have the shape and dtype of their parameters. f' is the model's own ``df[l]``, evaluated at
``z[l]`` as equations (5) and (6) say, whatever the activation. The definitions come from
``backpropagation.ipynb`` itself (``inf265.nbdefs``), not from a copy.
"""
from __future__ import annotations

import contextlib
import io

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import tests_backpropagation as harness
from inf265 import ROOT
from inf265.nbdefs import load_definitions

NB = load_definitions(ROOT / "backpropagation.ipynb")
MyNet = NB.MyNet
# the course's loss ("sse") goes to backpropagation itself, the others through its e' (5)
backpropagation = NB.backpropagation_with_loss


pytestmark = pytest.mark.usefixtures("float64")

ACTS = ["tanh", "sigmoid", "relu", "identity"]
TORCH_LOSSES = {"sse": lambda yp, y: nn.MSELoss(reduction="none")(yp, y).sum(), "mse": nn.MSELoss(),
                "bce": nn.BCELoss(), "logistic": nn.BCEWithLogitsLoss()}


@st.composite
def problems(draw):
    depth = draw(st.integers(1, 4))
    n_l = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    loss = draw(st.sampled_from(list(TORCH_LOSSES)))
    acts = draw(st.lists(st.sampled_from(ACTS), min_size=depth, max_size=depth))
    if loss == "bce":
        acts[-1] = "sigmoid"  # BCELoss needs probabilities
    batch = draw(st.integers(1, 16))
    seed = draw(st.integers(0, 2**31 - 1))
    return n_l, acts, loss, batch, seed


def build(n_l, acts, loss, batch, seed):
    torch.manual_seed(seed)
    model = MyNet(n_l, activations=acts)
    x = torch.randn(batch, n_l[0])
    y = torch.rand(batch, n_l[-1]) if loss in ("bce", "logistic") else torch.randn(batch, n_l[-1])
    return model, x, y


def params(model):
    return [(l, kind, getattr(model.fc[str(l)], kind)) for l in range(1, model.L + 1) for kind in ("weight", "bias")]


@settings(max_examples=300, deadline=None)
@given(problems())
def test_matches_autograd(problem):
    model, x, y = build(*problem)
    loss = problem[2]
    y_pred = model(x)
    before = [p.detach().clone() for *_, p in params(model)]
    backpropagation(model, y, y_pred, loss=loss)
    # no autograd was used: .grad untouched, parameters bitwise unchanged
    assert all(p.grad is None for *_, p in params(model))
    assert all(torch.equal(p, b) for (*_, p), b in zip(params(model), before))
    TORCH_LOSSES[loss](y_pred, y).backward()
    for l, kind, p in params(model):
        ours = (model.dL_dw if kind == "weight" else model.dL_db)[l]
        assert ours.shape == p.shape and ours.dtype == p.dtype and not ours.requires_grad
        assert harness.relative_error(ours, p.grad) <= 1e-10, (l, kind, problem)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_f_prime_is_the_models_own_df_evaluated_at_z(problem):
    """Any activation the model carries, here sin with cos, not one of the notebook's: each
    model.df[l] is called once, on model.z[l] itself, and the gradients match autograd."""
    n_l, _, loss, batch, seed = problem
    model, x, y = build(n_l, ["identity"] * (len(n_l) - 1), loss, batch, seed)
    calls = []

    def cos_at(l):
        def df(z):
            calls.append((l, z))
            return torch.cos(z)
        return df

    for l in range(1, model.L + 1):
        model.f[l], model.df[l] = torch.sin, cos_at(l)
    if loss == "bce":
        model.f[model.L], model.df[model.L] = torch.sigmoid, lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))
    y_pred = model(x)
    backpropagation(model, y, y_pred, loss=loss)
    expected = range(1, model.L + 1) if loss != "bce" else range(1, model.L)
    assert sorted(l for l, _ in calls) == list(expected)
    assert all(z is model.z[l] for l, z in calls)
    TORCH_LOSSES[loss](y_pred, y).backward()
    for l, kind, p in params(model):
        ours = (model.dL_dw if kind == "weight" else model.dL_db)[l]
        assert harness.relative_error(ours, p.grad) <= 1e-10, (l, kind, problem)


@pytest.mark.parametrize("name", ACTS)
def test_the_output_layers_f_prime_is_taken_at_z_not_from_a(name):
    """With the notebook's own pairs (f, f') too, f'[L] is evaluated at z[L], as (5) says, not
    written with a[L] = f(z[L]): with a[L] overwritten after the forward pass (y_pred, given as an
    argument, is what (5) needs) the gradients are still autograd's."""
    torch.manual_seed(3)
    model = MyNet([3, 4, 2], activations=name)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    y_pred = model(x)
    model.a[model.L] = torch.full_like(y_pred, 0.5)
    backpropagation(model, y, y_pred)
    TORCH_LOSSES["sse"](y_pred, y).backward()
    for l, kind, p in params(model):
        ours = (model.dL_dw if kind == "weight" else model.dL_db)[l]
        assert harness.relative_error(ours, p.grad) <= 1e-10, (name, l, kind)


@settings(max_examples=40, deadline=None)
@given(problems())
def test_batch_gradient_is_the_sum_of_sample_gradients(problem):
    n_l, acts, _, batch, seed = problem
    model, x, y = build(n_l, acts, "sse", batch, seed)
    backpropagation(model, y, model(x))
    whole = {(l, k): (model.dL_dw if k == "weight" else model.dL_db)[l].clone() for l, k, _ in params(model)}
    total = {key: torch.zeros_like(v) for key, v in whole.items()}
    for i in range(batch):
        backpropagation(model, y[i:i + 1], model(x[i:i + 1]))
        for l, k, _ in params(model):
            total[(l, k)] += (model.dL_dw if k == "weight" else model.dL_db)[l]
    for key in whole:
        assert torch.allclose(whole[key], total[key], rtol=1e-10, atol=1e-12), key


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=4), st.integers(0, 2**31 - 1))
def test_default_is_the_course_network(n_l, seed):
    """activations=None is the course's MyNet: tanh everywhere, derivative 1/cosh^2."""
    torch.manual_seed(seed)
    model = MyNet(n_l)
    x = torch.randn(3, n_l[0])
    a = x
    for l in range(1, len(n_l)):
        a = torch.tanh(model.fc[str(l)](a))
    assert torch.equal(model(x), a)
    z = torch.randn(7)
    assert all(torch.equal(model.df[l](z), 1 / torch.cosh(z) ** 2) for l in range(1, len(n_l)))
    assert model.L == len(n_l) - 1 and list(model.fc) == [str(l) for l in range(1, len(n_l))]
    assert set(model.a) == set(range(len(n_l))) and set(model.dL_dw) == set(range(1, len(n_l)))


@settings(max_examples=40, deadline=None)
@given(problems())
def test_harness_passes_the_notebook_on_random_nets(problem):
    n_l, acts, loss, _, seed = problem
    torch.manual_seed(seed)
    model = MyNet(n_l, activations=acts)
    with contextlib.redirect_stdout(io.StringIO()):
        result = harness.main_test(backpropagation, model, loss=loss, n_samples=4, n_points=2)
    assert result and [c.id for c in result.checks] == ["runs", "no_autograd", "unchanged", "stored", "autograd",
                                                        "autograd_batch", "finite_differences", "stored_activations",
                                                        "square"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="'sse', 'mse', 'bce', 'logistic'"):
        model = MyNet()
        backpropagation(model, torch.zeros(1, 2), model(torch.zeros(1, 2)), loss="hinge")
    with pytest.raises(ValueError, match="tanh, sigmoid, relu, identity"):
        MyNet([2, 3, 2], activations="softmax")
    with pytest.raises(ValueError, match="expected 2 names"):
        MyNet([2, 3, 2], activations=["relu"])
