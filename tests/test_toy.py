"""inf265.toy: the toy problems' data, the training loops (full batch and per sample), the
autograd references, the figures; results that do not depend on the number of threads; and
toy_problems.ipynb's use of the notebook's own backpropagation, with computed prose."""
import hashlib
import math
import os
import re
import subprocess
import sys
import types

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from inf265 import ROOT, toy  # noqa: E402
from inf265.nbdefs import load_definitions  # noqa: E402
from tests_backpropagation import relative_error  # noqa: E402

torch.set_default_dtype(torch.double)


@pytest.fixture(scope="module")
def bp():
    """The hand-written MyNet and backpropagation of backpropagation.ipynb (never a copy), the
    backpropagation the one that takes the loss by name, as the toy notebook uses it."""
    return _loss_general(load_definitions(ROOT / "backpropagation.ipynb",
                                          name="nb_backpropagation_for_toy_tests"))


def _loss_general(definitions):
    return types.SimpleNamespace(MyNet=definitions.MyNet,
                                 backpropagation=toy.loss_backpropagation(definitions))


def autograd_backpropagation(model, y_true, y_pred, loss="sse"):
    """A reference 'backpropagation' for testing the loop alone: recomputes the loss from the
    stored input with autograd and fills dL_dw / dL_db like the contract asks."""
    with torch.enable_grad():
        model.zero_grad()
        toy.loss_value(model(model.a[0]), y_true, loss).backward()
    for l in range(1, model.L + 1):
        model.dL_dw[l] = model.fc[str(l)].weight.grad.clone()
        model.dL_db[l] = model.fc[str(l)].bias.grad.clone()
    model.zero_grad()


# ---------------------------------------------------------------------------------------- data
def test_five_points():
    X, y = toy.five_points()
    assert X.shape == (5, 2) and y.shape == (5, 1) and X.dtype == torch.double
    assert y.sum() == 1 and X[y[:, 0] == 1].abs().sum() == 0          # the positive is the origin
    assert torch.equal(X[y[:, 0] == 0].norm(dim=1), torch.ones(4))      # negatives at distance 1


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_generate_linear_labels_by_diagonal(n, seed):
    X, y = toy.generate_linear(n=n, seed=seed)
    assert X.shape == (n, 2) and y.shape == (n, 1)
    assert X.min() >= 0 and X.max() <= 1
    assert torch.equal(y[:, 0] == 1, X[:, 0] <= X[:, 1])
    X2, y2 = toy.generate_linear(n=n, seed=seed)
    assert torch.equal(X, X2) and torch.equal(y, y2)


def test_generate_linear_seeds_and_global_state():
    state = torch.random.get_rng_state()
    a, _ = toy.generate_linear(100, seed=0)
    b, _ = toy.generate_linear(100, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state), "the global random state was touched"
    assert not torch.equal(a, b)
    _, y = toy.generate_linear()
    assert 30 < y.sum() < 70  # both classes present in the default draw


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10"])
def test_generate_linear_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        toy.generate_linear(n=n)


def test_generate_xor_easy():
    X, y = toy.generate_XOR_easy()
    assert X.shape == (21, 2) and y.shape == (21, 1)
    zeros, ones = X[y[:, 0] == 0], X[y[:, 0] == 1]
    assert len(zeros) == 11 and len(ones) == 10
    assert torch.allclose(zeros[:, 0], zeros[:, 1])                     # on x2 = x1
    assert torch.allclose(ones[:, 0] + ones[:, 1], torch.ones(10))     # on x2 = 1 - x1
    assert not any(torch.allclose(p, torch.tensor([0.5, 0.5])) for p in ones)
    assert len({tuple(p) for p in X.tolist()}) == 21


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 600), seed=st.integers(0, 1000))
def test_generate_circles_radii(n, seed):
    X, y = toy.generate_circles(n=n, seed=seed)
    r = X.norm(dim=1)
    assert X.shape == (n, 2) and y.shape == (n, 1) and y.sum() == n // 2
    assert (r[y[:, 0] == 1] < 2.5).all()
    outer = r[y[:, 0] == 0]
    assert (outer >= 3.5).all() and (outer <= 5).all()


def test_generate_circles_rejects_overlapping_rings():
    with pytest.raises(ValueError, match="inner <= outer"):
        toy.generate_circles(inner=4.0, outer=(3.5, 5.0))


def test_generate_regression_1d():
    X, y = toy.generate_regression_1d(n=64, seed=0)
    assert X.shape == y.shape == (64, 1)
    assert X.min() >= -3 and X.max() <= 3 and torch.equal(X, X.sort(dim=0).values)
    residual = y - torch.sin(X)
    assert 0.05 < residual.std() < 0.2                                 # noise 0.1
    X0, y0 = toy.generate_regression_1d(n=64, seed=0, noise=0.0)
    assert torch.equal(y0, torch.sin(X0))
    with pytest.raises(ValueError, match="noise"):
        toy.generate_regression_1d(noise=-1.0)


# ------------------------------------------------------------------------------- loss, accuracy
def test_loss_value_matches_torch_losses():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 1, generator=g)
    p = torch.sigmoid(z)
    y = (torch.rand(7, 1, generator=g) > 0.5).double()
    nn = torch.nn
    assert toy.loss_value(p, y, "sse").item() == pytest.approx(nn.MSELoss(reduction="sum")(p, y).item(), rel=1e-14)
    assert toy.loss_value(p, y, "mse").item() == pytest.approx(nn.MSELoss()(p, y).item(), rel=1e-14)
    assert toy.loss_value(p, y, "bce").item() == pytest.approx(nn.BCELoss()(p, y).item(), rel=1e-14)
    assert toy.loss_value(z, y, "logistic").item() == pytest.approx(nn.BCELoss()(p, y).item(), rel=1e-12)


def test_loss_value_errors():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        toy.loss_value(torch.zeros(3, 1), torch.zeros(3, 1), "hinge")
    with pytest.raises(ValueError, match=r"shape \(3,\) differs .* \(3, 1\)"):
        toy.loss_value(torch.zeros(3), torch.zeros(3, 1), "mse")


def test_accuracy_thresholds():
    y = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    assert toy.accuracy(torch.tensor([[0.9], [0.1], [0.4], [0.6]]), y) == 0.5
    assert toy.accuracy(torch.tensor([[0.3], [-2.0], [0.1], [-0.1]]), y, logits=True) == 1.0
    assert toy.accuracy(torch.tensor([[0.3], [-2.0], [0.1], [-0.1]]), y) == 0.5


# ------------------------------------------------------------------------------------ training
def _sgd_reference(model, X, y, loss, lr, steps):
    """The same model trained by autograd + torch.optim.SGD; returns its loss curve."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        value = toy.loss_value(model(X), y, loss)
        history.append(value.item())
        value.backward()
        optimizer.step()
    with torch.no_grad():
        history.append(toy.loss_value(model(X), y, loss).item())
    return history


def _pair(bp, n_l, activations, seed=0):
    torch.manual_seed(seed)
    a = bp.MyNet(n_l, activations)
    torch.manual_seed(seed)
    b = bp.MyNet(n_l, activations)
    return a, b


def test_loop_applies_the_sgd_update(bp):
    """The loop alone (gradients from autograd) is torch.optim.SGD, bit for bit: same update formula."""
    X, y = toy.generate_circles(n=40, seed=1)
    hand, ref = _pair(bp, [2, 3, 1], ["tanh", "identity"])
    a = toy.gradient_descent(hand, X, y, autograd_backpropagation, loss="logistic", lr=0.5, steps=30)
    b = _sgd_reference(ref, X, y, "logistic", 0.5, 30)
    assert len(a) == 31 and a[-1] < a[0]
    assert a == b
    assert all(torch.equal(p, q) for p, q in zip(hand.parameters(), ref.parameters()))


def _sgd_per_sample_reference(model, X, y, loss, lr, epochs):
    """autograd + torch.optim.SGD on batches of one row, in data order; loss on all rows per epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with torch.no_grad():
        history = [toy.loss_value(model(X), y, loss).item()]
    for _ in range(epochs):
        for i in range(X.shape[0]):
            optimizer.zero_grad()
            toy.loss_value(model(X[i:i + 1]), y[i:i + 1], loss).backward()
            optimizer.step()
        with torch.no_grad():
            history.append(toy.loss_value(model(X), y, loss).item())
    return history


@pytest.mark.parametrize("loss, activations", [("mse", ["sigmoid", "sigmoid", "identity"]),
                                               ("bce", ["tanh", "relu", "sigmoid"])])
def test_per_sample_training_equals_sgd_on_batches_of_one(bp, loss, activations):
    """The notebook's backpropagation on one row at a time == autograd + torch.optim.SGD on the same rows."""
    X, y = toy.generate_XOR_easy()
    hand, ref = _pair(bp, [2, 6, 4, 1], activations, seed=4)
    a = toy.sgd_per_sample(hand, X, y, bp.backpropagation, loss=loss, lr=0.05, epochs=5)
    b = _sgd_per_sample_reference(ref, X, y, loss, 0.05, 5)
    assert len(a) == 6 and abs(a[-1] - a[0]) > 1e-4                      # it did train
    assert max(abs(u - v) for u, v in zip(a, b)) < 1e-12
    assert all(torch.allclose(p, q, rtol=0, atol=1e-12) for p, q in zip(hand.parameters(), ref.parameters()))


def test_per_sample_training_stops_when_it_diverges(bp):
    X, y = toy.generate_linear(n=20, seed=3)
    torch.manual_seed(0)
    model = bp.MyNet([2, 16, 1], ["relu", "identity"])
    history = toy.sgd_per_sample(model, X * 100, y, bp.backpropagation, loss="mse", lr=10.0, epochs=50)
    assert len(history) < 51 and not math.isfinite(history[-1]) and all(map(math.isfinite, history[:-1]))
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        toy.sgd_per_sample(model, X, y, bp.backpropagation, epochs=-1)
    assert toy.sgd_per_sample(model, X, y, bp.backpropagation, epochs=0) == \
        [toy.loss_value(toy.predict(model, X), y, "mse").item()]


def _lab1_reference(model, X, y, lr, epochs, tol):
    """Lab 1's loop as its report writes it, with autograd for the gradients: per sample in data
    order, the gradient of the squared error *without* the factor 2 (that of (y_hat - y)^2 / 2),
    w -= lr * gradient; the epoch's loss is the sum of each sample's (y_hat - y)^2 before its
    update; stop when it changes by less than tol from the previous epoch's (0 before the first)."""
    history, previous = [], 0.0
    for _ in range(epochs):
        total = 0.0
        for i in range(X.shape[0]):
            model.zero_grad()
            error = model(X[i:i + 1]) - y[i:i + 1]
            total += (error ** 2).sum().item()
            (error ** 2 / 2).sum().backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
        history.append(total)
        if abs(previous - total) < tol:
            break
        previous = total
    return history


def test_per_sample_running_record_and_early_stop_are_lab_1s_at_half_its_learning_rate(bp):
    """Lab 1's loss sums, early stopping and halved gradient: sgd_per_sample(record="running",
    tol=...) on the true MSE at lr / 2 is the lab's loop at lr (halving is exact in floating
    point, so the two agree to rounding)."""
    X, y = toy.generate_XOR_easy()
    hand, ref = _pair(bp, [2, 8, 1], ["sigmoid", "identity"], seed=2)
    a = toy.sgd_per_sample(hand, X, y, bp.backpropagation, loss="mse", lr=0.5 / 2, epochs=300,
                           record="running", tol=0.02)
    b = _lab1_reference(ref, X, y, lr=0.5, epochs=300, tol=0.02)
    assert 2 < len(a) < 300, "the early stop should fire within the budget here"
    assert len(a) == len(b) and max(abs(u - v) for u, v in zip(a, b)) < 1e-10
    assert all(torch.allclose(p, q, rtol=0, atol=1e-12) for p, q in zip(hand.parameters(), ref.parameters()))
    assert abs(a[-1] - a[-2]) < 0.02 <= min(abs(u - v) for u, v in zip(a[1:-1], a[:-2]))
    with pytest.raises(ValueError, match="record must be"):
        toy.sgd_per_sample(hand, X, y, bp.backpropagation, record="sum")
    with pytest.raises(ValueError, match="tol must be a positive number"):
        toy.sgd_per_sample(hand, X, y, bp.backpropagation, tol=0)


def test_the_loss_general_backpropagation_is_found_by_either_name(bp):
    plain = types.SimpleNamespace(backpropagation=bp.backpropagation)
    assert toy.loss_backpropagation(plain) is bp.backpropagation
    both = types.SimpleNamespace(backpropagation=print, backpropagation_with_loss=bp.backpropagation)
    assert toy.loss_backpropagation(both) is bp.backpropagation


@pytest.mark.parametrize("loss, activations, data", [
    ("logistic", ["tanh", "identity"], "circles"),
    ("mse", ["tanh", "sigmoid"], "five"),
    ("bce", ["relu", "sigmoid"], "circles"),
    ("sse", ["sigmoid", "sigmoid"], "xor"),
])
def test_hand_written_training_equals_sgd(bp, loss, activations, data):
    """The notebook's backpropagation inside the loop == autograd + torch.optim.SGD, every step."""
    X, y = {"circles": toy.generate_circles(n=60, seed=2), "five": toy.five_points(),
            "xor": toy.generate_XOR_easy()}[data]
    hand, ref = _pair(bp, [2, 5, 1], activations, seed=3)
    a = toy.gradient_descent(hand, X, y, bp.backpropagation, loss=loss, lr=0.3, steps=50)
    b = _sgd_reference(ref, X, y, loss, 0.3, 50)
    assert max(abs(u - v) for u, v in zip(a, b)) < 1e-10


@settings(max_examples=12, deadline=None)
@given(hidden=st.lists(st.integers(1, 6), min_size=0, max_size=3),
       act=st.sampled_from(["tanh", "sigmoid", "relu", "identity"]),
       loss=st.sampled_from(["sse", "mse", "bce", "logistic"]), seed=st.integers(0, 10_000))
def test_hand_written_training_equals_sgd_any_network(bp, hidden, act, loss, seed):
    X, y = toy.generate_circles(n=30, seed=seed)
    X = X / 5
    out = "sigmoid" if loss == "bce" else "identity"
    hand, ref = _pair(bp, [2, *hidden, 1], [act] * len(hidden) + [out], seed=seed)
    lr = 0.005 if loss == "sse" else 0.1  # the sum over 30 points takes a 30x larger step
    a = toy.gradient_descent(hand, X, y, bp.backpropagation, loss=loss, lr=lr, steps=5)
    b = _sgd_reference(ref, X, y, loss, lr, 5)
    assert all(abs(u - v) <= 1e-10 * max(1.0, abs(v)) for u, v in zip(a, b)), (a, b)


def test_loop_detects_a_wrong_gradient(bp):
    """A backpropagation that forgets the factor 2 of the MSE trains differently: caught."""
    def half_gradient(model, y_true, y_pred, loss="mse"):
        bp.backpropagation(model, y_true, y_pred, loss=loss)
        for l in range(1, model.L + 1):
            model.dL_dw[l], model.dL_db[l] = model.dL_dw[l] / 2, model.dL_db[l] / 2
    X, y = toy.five_points()
    hand, ref = _pair(bp, [2, 4, 1], ["tanh", "sigmoid"])
    a = toy.gradient_descent(hand, X, y, half_gradient, loss="mse", lr=1.0, steps=20)
    b = _sgd_reference(ref, X, y, "mse", 1.0, 20)
    assert max(abs(u - v) for u, v in zip(a, b)) > 1e-6


def test_loop_input_errors(bp):
    X, y = toy.five_points()
    torch.manual_seed(0)
    model = bp.MyNet([2, 3, 1], ["tanh", "sigmoid"])
    with pytest.raises(ValueError, match="lr must be a positive number"):
        toy.gradient_descent(model, X, y, bp.backpropagation, lr=-1.0)
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        toy.gradient_descent(model, X, y, bp.backpropagation, steps=2.5)
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        toy.gradient_descent(model, X, y, bp.backpropagation, loss="l1")
    with pytest.raises(ValueError, match="X has 5 rows but y has 4"):
        toy.gradient_descent(model, X, y[:4], bp.backpropagation)

    def lazy(model, y_true, y_pred, loss="mse"):
        model.dL_dw, model.dL_db = {1: torch.zeros(3, 2)}, {1: torch.zeros(3)}
    with pytest.raises(RuntimeError, match=r"did not fill model.dL_dw\[2\]"):
        toy.gradient_descent(model, X, y, lazy, steps=1)
    assert toy.gradient_descent(model, X, y, bp.backpropagation, steps=0) == \
        [toy.loss_value(toy.predict(model, X), y, "mse").item()]


@pytest.fixture(scope="module")
def nb_toy():
    """toy_problems.ipynb's own helper definitions (never a copy)."""
    return load_definitions(ROOT / "toy_problems.ipynb", name="nb_toy_problems_for_tests")


def test_notebook_gradient_check_separates_right_from_wrong(bp, nb_toy):
    X, y = toy.generate_circles(n=50, seed=0)
    torch.manual_seed(0)
    model = bp.MyNet([2, 6, 1], ["relu", "sigmoid"])
    assert nb_toy.gradient_check(model, X, y, bp.backpropagation, loss="bce") < 1e-12

    def transposed_bias(model, y_true, y_pred, loss="bce"):
        bp.backpropagation(model, y_true, y_pred, loss=loss)
        model.dL_db[1] = model.dL_db[1].flip(0)
    assert nb_toy.gradient_check(model, X, y, transposed_bias, loss="bce") > 1e-3
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # grads left clean


def test_autograd_gradients_are_the_loss_gradients(bp):
    X, y = toy.generate_circles(n=30, seed=2)
    torch.manual_seed(1)
    model = bp.MyNet([2, 4, 1], ["tanh", "sigmoid"])
    grads = toy.autograd_gradients(model, X, y, loss="bce")
    with torch.no_grad():
        bp.backpropagation(model, y, model(X), loss="bce")
    assert sorted(grads) == [1, 2]
    assert all(relative_error(model.dL_dw[l], grads[l][0]) < 1e-12 for l in grads)


def test_output_jacobian_is_exact_for_a_linear_model_and_bounds_the_step(bp):
    """For y_hat = w.x + b the linearisation is exact: J_i = (x_i, 1), and one per-sample step
    multiplies that sample's error by 1 - 2 lr K_ii, so it diverges exactly when lr > 1 / K_ii."""
    X = torch.tensor([[1.0, 2.0], [-0.5, 0.25]])
    y = torch.tensor([[3.0], [-1.0]])
    torch.manual_seed(0)
    model = bp.MyNet([2, 1], ["identity"])
    J = toy.output_jacobian(model, X)
    assert torch.equal(J, torch.tensor([[1.0, 2.0, 1.0], [-0.5, 0.25, 1.0]]))
    K = J @ J.T
    for factor in (0.4, 1.3):  # below and above the limit 1 / K_00
        lr = factor / K[0, 0].item()
        torch.manual_seed(0)
        model = bp.MyNet([2, 1], ["identity"])
        error = (toy.predict(model, X[:1]) - y[:1]).item()
        toy.sgd_per_sample(model, X[:1], y[:1], bp.backpropagation, loss="mse", lr=lr, epochs=1)
        after = (toy.predict(model, X[:1]) - y[:1]).item()
        assert after == pytest.approx(error * (1 - 2 * factor), rel=1e-12)
        assert (abs(after) > abs(error)) == (factor > 1)
    with pytest.raises(ValueError, match="has 2 outputs"):
        toy.output_jacobian(bp.MyNet([2, 2], ["identity"]), X)
    limits = toy.step_limits(J)
    assert limits["per sample"] == pytest.approx(1 / 6) and limits["median K_ii"] == 1.3125  # torch: the lower middle value
    assert limits["full batch"] == pytest.approx(2 / torch.linalg.eigvalsh(K)[-1].item())
    assert limits["top share"] == pytest.approx(torch.linalg.eigvalsh(K)[-1].item() / (6 + 1.3125))


def test_full_batch_step_limit_is_where_training_starts_to_diverge(bp):
    """For a linear model the first-order limit is exact: just below it full-batch MSE training
    converges, just above it diverges."""
    X, y = toy.generate_linear(n=30, seed=5)
    torch.manual_seed(0)
    limit = toy.step_limits(toy.output_jacobian(bp.MyNet([2, 1], ["identity"]), X))["full batch"]
    for factor, converges in ((0.98, True), (1.02, False)):
        torch.manual_seed(0)
        model = bp.MyNet([2, 1], ["identity"])
        history = toy.gradient_descent(model, X, y, bp.backpropagation, loss="mse", lr=factor * limit, steps=3000)
        assert (history[-1] < history[0]) == converges


# ------------------------------------------------------------------------------------- figures
def test_decision_boundary_draws_the_half_level(bp):
    X, y = toy.five_points()
    torch.manual_seed(0)
    model = bp.MyNet([2, 1], ["sigmoid"])
    with torch.no_grad():   # p = sigmoid(x1): boundary is the vertical line x1 = 0
        model.fc["1"].weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.fc["1"].bias.zero_()
    fig, ax = plt.subplots()
    toy.plot_decision_boundary(ax, model, X, y, lim=(-2, 2), resolution=41)
    assert ax.get_xlim() == (-2, 2) and ax.get_ylim() == (-2, 2)
    contour = ax.collections[-3]  # contourf, contour at 0.5, then the two scatter sets
    assert list(contour.levels) == [0.5]
    (path,) = [p for p in contour.get_paths() if len(p.vertices)]
    assert abs(path.vertices[:, 0]).max() < 1e-9       # the 0.5 level is x1 = 0
    assert len(ax.collections[-2].get_offsets()) == 1 and len(ax.collections[-1].get_offsets()) == 4
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("$x_1$", "$x_2$")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["output 0.5", "class 1", "class 0"]
    plt.close(fig)


def test_loss_curves_and_fit(bp):
    fig, axes = toy.figure(3)
    toy.plot_loss_curves(axes[0], {"a": [1.0, 0.5, 0.25], "b": [2.0, 1.0]})
    assert [len(line.get_xdata()) for line in axes[0].lines] == [3, 2]
    assert axes[0].get_yscale() == "log" and axes[0].get_xlabel() == "gradient-descent step"
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["a", "b"]
    toy.plot_loss_curves(axes[2], {"diverged": [0.5, 3e200, float("inf")], "ok": [0.5, 0.1]}, xlabel="epoch", top=10)
    assert list(axes[2].lines[0].get_xdata()) == [0, 1]          # the infinite value is not drawn
    assert axes[2].get_ylim() == pytest.approx((0.05, 10)) and axes[2].get_xlabel() == "epoch"
    X, y = toy.generate_regression_1d(n=10, seed=0)
    torch.manual_seed(0)
    toy.plot_fit(axes[1], bp.MyNet([1, 4, 1], ["relu", "identity"]), X, y)
    assert len(axes[1].lines) == 1 and len(axes[1].lines[0].get_xdata()) == 400
    assert (axes[1].get_xlabel(), axes[1].get_ylabel()) == ("$x$", "$y$")
    plt.close(fig)


def test_format_table():
    text = toy.format_table([{"name": "a", "loss": 0.123456}, {"name": "bbb", "loss": 2.0}])
    lines = text.splitlines()
    assert lines[0] == "name    loss" and lines[2] == "   a  0.1235" and lines[3] == " bbb       2"
    assert len({len(line) for line in lines}) == 1
    per_column = toy.format_table([{"a": 0.5, "b": 1.5e-16}], floatfmt={"b": ".1e"}).splitlines()[2]
    assert per_column.split() == ["0.5", "1.5e-16"]
    with pytest.raises(ValueError, match="at least one row"):
        toy.format_table([])


# ------------------------------------------------------------------- threads do not change results
def _probe(bp) -> str:
    """A digest of every kind of computation toy_problems.ipynb does, at its sizes: full-batch and
    per-sample training with the hand-written gradients, autograd training as torch.optim.SGD
    does it, the output Jacobian and the step limits, a decision-boundary grid, the rounding of
    the notebook's JSON export."""
    from inf265.results import rounded
    out = []
    Xc, yc = toy.generate_circles(n=500, seed=0)
    torch.manual_seed(0)
    model = bp.MyNet([2, 16, 16, 16, 16, 16, 1], ["relu"] * 5 + ["sigmoid"])
    out += toy.gradient_descent(model, Xc, yc, bp.backpropagation, loss="bce", lr=1.0, steps=20)
    out += [p.detach() for p in model.parameters()]
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    for _ in range(20):  # torch.optim.SGD's step, without its first-use import of torch._dynamo (seconds)
        reference.zero_grad()
        torch.nn.BCEWithLogitsLoss()(reference(Xc), yc).backward()
        with torch.no_grad():
            for p in reference.parameters():
                p.add_(p.grad, alpha=-1.0)
    out += [p.detach() for p in reference.parameters()]
    X, y = toy.generate_linear(n=100, seed=0)
    torch.manual_seed(0)
    model = bp.MyNet([2, 256, 64, 1], ["sigmoid", "sigmoid", "identity"])
    J = toy.output_jacobian(model, X)
    out += [J, *toy.step_limits(J).values()]
    out += toy.sgd_per_sample(model, X, y, bp.backpropagation, loss="mse", lr=0.01, epochs=2)
    grid = torch.linspace(-0.1, 1.1, 200)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    out.append(toy.predict(model, torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)))
    digest = hashlib.sha256()
    for item in out:
        digest.update(item.detach().contiguous().numpy().tobytes() if torch.is_tensor(item) else float(item).hex().encode())
    digest.update(repr(rounded(out[:20], 4)).encode())
    return digest.hexdigest()


PROBE_SCRIPT = """
import sys, torch
sys.path[:0] = [{root!r}, {tests!r}]
import test_toy
from inf265.nbdefs import load_definitions
torch.set_default_dtype(torch.double)
print(torch.get_num_threads(),
      test_toy._probe(test_toy._loss_general(load_definitions({notebook!r}))))
"""


def _probe_with_omp_threads(threads: int) -> str:
    """The probe in a fresh process whose thread count comes from OMP_NUM_THREADS (MKL's too)."""
    script = PROBE_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), notebook=str(ROOT / "backpropagation.ipynb"))
    # PASSIVE: idle OpenMP threads sleep instead of spinning (much faster on a loaded machine;
    # how threads wait does not change what they compute)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MPLBACKEND": "Agg",
           "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    used, digest = proc.stdout.split()
    assert used == str(threads), "OMP_NUM_THREADS did not take effect"
    return digest


def test_results_are_the_same_with_one_and_two_threads(bp):
    """torch.set_num_threads(1) and (2) in this process, and OMP_NUM_THREADS=2 in a fresh one."""
    before = torch.get_num_threads()
    try:
        digests = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            digests.append(_probe(bp))
    finally:
        torch.set_num_threads(before)
    digests.append(_probe_with_omp_threads(2))
    assert digests[0] == digests[1] == digests[2]


# ------------------------------------------------------------------------------------ notebook
def test_notebook_imports_the_backpropagation_instead_of_retyping_it():
    nb = nbformat.read(ROOT / "toy_problems.ipynb", as_version=4)
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'load_definitions("backpropagation.ipynb")' in sources
    assert "def backpropagation" not in sources and "class MyNet" not in sources
    assert "torch.set_default_dtype(torch.double)" in sources


def test_notebook_is_committed_executed_without_errors():
    nb = nbformat.read(ROOT / "toy_problems.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "run: python -m inf265.execute toy_problems.ipynb"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    diff = float(re.search(r"over the \d+ loss values: (\S+)", text).group(1))
    assert math.isfinite(diff) and diff < 1e-10


def _prose(cell) -> str:
    """A markdown cell without its math and code spans."""
    text = re.sub(r"\$\$.*?\$\$", " ", cell.source, flags=re.S)
    return re.sub(r"\$[^$]*\$|`[^`]*`", " ", text)


def test_notebook_prose_types_no_results():
    """Numbers in the prose come from code: no decimal numbers or percentages are typed in
    markdown (the 0.5 of the decision threshold is a definition, not a result)."""
    nb = nbformat.read(ROOT / "toy_problems.ipynb", as_version=4)
    typed = [(i, m.group()) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
             for m in re.finditer(r"\d*\.\d+|\d+\s*%", _prose(c)) if m.group() != "0.5"]
    assert not typed, f"typed numbers in markdown (cell index, text): {typed}"
    assert _prose(nbformat.v4.new_markdown_cell("MSE $0.25$ and `lr=0.1`, then 0.0087 and 98 %")) \
        .split() == ["MSE", "and", ",", "then", "0.0087", "and", "98", "%"]


def test_notebook_runs_each_lab_setup():
    """The labs' own setups are run: Lab 4's initialisation, Lab 1's per-sample updates at half its
    learning rate (its gradient lacks the factor 2), its loss sums and early stopping, its whole
    learning-rate grid; the lab's reported tables are printed beside ours."""
    nb = nbformat.read(ROOT / "toy_problems.ipynb", as_version=4)
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert '"network n_l": [2, 5, 3, 1], "learning rate": 0.25, "epochs": 2500' in sources
    assert '"initialisation": "glorot"}' in sources
    assert '"network n_l": [2, 256, 64, 1]' in sources and '"initialisation": "normal-all"' in sources
    assert '"learning rates": [1.0, 0.1, 0.01, 0.001, 0.0001]' in sources
    assert "toy.sgd_per_sample(" in sources and "lr=lr / 2" in sources
    assert 'record="running"' in sources and 'tol=lab1["early stop below"]' in sources
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Lab 1: loss" in text and "Lab 1: accuracy %" in text
    assert "All 5 seeds bring the MSE below 0.01 within the lab's 2500 epochs" in text
    assert "Linear task: at lr 0.1 to 0.0001 the lab's setup reaches" in text


def test_notebook_code_is_readable():
    """Code lines of at most 100 characters, code cells of at most 40 lines, headings named after
    the labs (no section numbers that collide with the project text's), and the kernelspec as
    ipykernel writes it (JupyterLab then opens the notebook unmodified)."""
    nb = nbformat.read(ROOT / "toy_problems.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert not [line for source in code for line in source.splitlines() if len(line) > 100]
    assert max(len(source.splitlines()) for source in code) <= 40
    headings = [line for c in nb.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("## ")]
    assert headings[:4] == ["## Lab 4: five points", "## Lab 1: linear and XOR",
                            "## CSC321 tutorial 5: circles, hand-written gradients against "
                            "`torch.optim.SGD`",
                            "## Homework 1: ReLU, sigmoid and binary cross-entropy"]
    assert nb.metadata.kernelspec == {"display_name": "Python 3 (ipykernel)", "language": "python",
                                      "name": "python3"}
