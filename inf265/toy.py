"""Toy problems for the hand-written backpropagation (``toy_problems.ipynb``).

Data generators for the neighbouring labs' problems, the loss values and accuracies they are
judged by, a full-batch gradient-descent loop that calls a hand-written ``backpropagation``
(passed in, never defined here) and applies ``w -= lr * dL_dw``, an autograd gradient check,
and the two figure types (decision boundary or 1-D fit, loss curves).

Every generator returns ``(X, y)`` as tensors of the default dtype: ``X`` of shape ``(n, d)``
and ``y`` of shape ``(n, 1)``. Randomness comes from a ``torch.Generator`` seeded by ``seed``,
so the global random state is left alone and the same seed gives the same points.
"""
from __future__ import annotations

import math
from typing import Callable

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

LOSSES = ("sse", "mse", "bce", "logistic")
"""Loss names understood by :func:`loss_value` (the same names as the notebook's ``backpropagation``)."""


# ---------------------------------------------------------------------------------------- data
def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def five_points() -> tuple[torch.Tensor, torch.Tensor]:
    """One positive point at the origin, four negatives at (+-1, 0) and (0, +-1)."""
    X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = torch.tensor([[1.0], [0.0], [0.0], [0.0], [0.0]])
    return X, y


def generate_linear(n: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points uniform in [0, 1]^2; label 0 below the diagonal (x1 > x2), 1 on or above it."""
    n = _positive_int("n", n)
    X = torch.rand(n, 2, generator=_generator(seed), dtype=torch.get_default_dtype())
    y = (X[:, 0] <= X[:, 1]).to(X.dtype).unsqueeze(1)
    return X, y


def generate_XOR_easy() -> tuple[torch.Tensor, torch.Tensor]:
    """21 points on the two diagonals of [0, 1]^2: label 0 on y = x (11 points), 1 on y = 1 - x
    (10 points: the centre belongs to the first diagonal only)."""
    points, labels = [], []
    for i in range(11):
        t = 0.1 * i
        points.append([t, t])
        labels.append(0.0)
        if i == 5:
            continue
        points.append([t, 1.0 - t])
        labels.append(1.0)
    return torch.tensor(points), torch.tensor(labels).unsqueeze(1)


def generate_circles(n: int = 500, seed: int = 0, inner: float = 2.5,
                     outer: tuple[float, float] = (3.5, 5.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points in the plane: the first ``n // 2`` positive (label 1) at radius < ``inner``,
    the rest negative (label 0) at radius in ``outer``; uniform angle, uniform radius."""
    n = _positive_int("n", n)
    lo, hi = outer
    if not 0 < inner <= lo < hi:
        raise ValueError(f"need 0 < inner <= outer[0] < outer[1], got inner={inner}, outer={outer}")
    g = _generator(seed)
    dtype = torch.get_default_dtype()
    n_pos = n // 2
    radius = torch.rand(n, generator=g, dtype=dtype)
    radius = torch.cat([inner * radius[:n_pos], lo + (hi - lo) * radius[n_pos:]])
    angle = 2 * math.pi * torch.rand(n, generator=g, dtype=dtype)
    X = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    y = torch.cat([torch.ones(n_pos, dtype=dtype), torch.zeros(n - n_pos, dtype=dtype)]).unsqueeze(1)
    return X, y


def generate_regression_1d(n: int = 64, seed: int = 0, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points x uniform in [-3, 3], target y = sin(x) + ``noise`` * N(0, 1)."""
    n = _positive_int("n", n)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    g = _generator(seed)
    dtype = torch.get_default_dtype()
    X = (6 * torch.rand(n, 1, generator=g, dtype=dtype) - 3).sort(dim=0).values
    y = torch.sin(X) + noise * torch.randn(n, 1, generator=g, dtype=dtype)
    return X, y


# ------------------------------------------------------------------------------- loss, accuracy
def _check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: use one of {', '.join(LOSSES)}")
    return loss


def _check_pair(y_pred: torch.Tensor, y_true: torch.Tensor) -> None:
    if y_pred.shape != y_true.shape:
        raise ValueError(f"prediction shape {tuple(y_pred.shape)} differs from target shape "
                         f"{tuple(y_true.shape)}; give y as a column (n, 1) like the generators do")


def loss_value(y_pred: torch.Tensor, y_true: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """The scalar loss the hand-written gradients are gradients of (torch's own loss functions).

    ``sse``: sum of squared errors; ``mse``: ``nn.MSELoss()``; ``bce``: ``nn.BCELoss()`` on
    probabilities; ``logistic``: ``nn.BCEWithLogitsLoss()`` on logits.
    """
    _check_loss(loss)
    _check_pair(y_pred, y_true)
    if loss == "sse":
        return ((y_pred - y_true) ** 2).sum()
    if loss == "mse":
        return F.mse_loss(y_pred, y_true)
    if loss == "bce":
        return F.binary_cross_entropy(y_pred, y_true)
    return F.binary_cross_entropy_with_logits(y_pred, y_true)


def accuracy(y_out: torch.Tensor, y_true: torch.Tensor, logits: bool = False) -> float:
    """Fraction of points on the right side of the threshold (0.5 on probabilities, 0 on logits)."""
    _check_pair(y_out, y_true)
    predicted = (y_out > (0.0 if logits else 0.5)).to(y_true.dtype)
    return (predicted == y_true).to(torch.double).mean().item()


# ------------------------------------------------------------------------------------ training
def predict(model: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The network's output on ``X`` without recording a graph."""
    with torch.no_grad():
        return model(X)


def gradient_descent(model, X: torch.Tensor, y: torch.Tensor, backpropagation: Callable,
                     loss: str = "mse", lr: float = 0.1, steps: int = 1000) -> list[float]:
    """Full-batch gradient descent with hand-written gradients.

    Each step: forward pass on all of ``X``, ``backpropagation(model, y, y_pred, loss=loss)``
    fills ``model.dL_dw[l]`` and ``model.dL_db[l]``, then every layer is updated in place by
    ``w -= lr * dL_dw`` and ``b -= lr * dL_db``. Returns the ``steps + 1`` loss values
    L(w_0), ..., L(w_steps): the loss before each update, then after the last one.
    Everything runs under ``torch.no_grad()``: autograd records nothing, so the gradients can
    only come from ``backpropagation``. Full-batch steps with this rule are the iterates of
    ``torch.optim.SGD(lr=lr)`` (no momentum, no weight decay) on the same loss.
    """
    _check_loss(loss)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}: they must pair up")
    history = []
    with torch.no_grad():
        for _ in range(steps):
            y_pred = model(X)
            history.append(loss_value(y_pred, y, loss).item())
            backpropagation(model, y, y_pred, loss=loss)
            for l in range(1, model.L + 1):
                layer = model.fc[str(l)]
                missing = [name for name, grads in (("dL_dw", model.dL_dw), ("dL_db", model.dL_db))
                           if l not in grads]
                if missing:
                    raise RuntimeError(f"backpropagation did not fill model.{missing[0]}[{l}]")
                w, b = layer.weight, layer.bias
                w -= lr * model.dL_dw[l]
                b -= lr * model.dL_db[l]
        history.append(loss_value(model(X), y, loss).item())
    return history


def autograd_gradients(model, X: torch.Tensor, y: torch.Tensor, loss: str = "mse") -> dict:
    """Reference gradients from ``torch.autograd``: ``{l: (dL/dW_l, dL/db_l)}`` for l = 1..L."""
    model.zero_grad()
    with torch.enable_grad():
        loss_value(model(X), y, loss).backward()
    grads = {l: (model.fc[str(l)].weight.grad.clone(), model.fc[str(l)].bias.grad.clone())
             for l in range(1, model.L + 1)}
    model.zero_grad()
    return grads


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / max(||a|| + ||b||, 1e-300)``: 0 when equal, about 1 when unrelated."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return ((a - b).norm() / max((a.norm() + b.norm()).item(), 1e-300)).item()


def gradient_check(model, X: torch.Tensor, y: torch.Tensor, backpropagation: Callable,
                   loss: str = "mse") -> float:
    """Largest relative error, over all weights and biases, between the hand-written gradients
    and autograd's at the model's current parameters."""
    reference = autograd_gradients(model, X, y, loss)
    with torch.no_grad():
        y_pred = model(X)
        backpropagation(model, y, y_pred, loss=loss)
    return max(max(relative_error(model.dL_dw[l], dw), relative_error(model.dL_db[l], db))
               for l, (dw, db) in reference.items())


# ------------------------------------------------------------------------------------- figures
def plot_decision_boundary(ax, model, X: torch.Tensor, y: torch.Tensor, lim=None, logits: bool = False,
                           resolution: int = 200, title: str | None = None):
    """Filled contours of the predicted probability of class 1 over a square, the 0.5 level as a
    black line, and the points coloured by label. ``lim``: (low, high) for both axes; by default
    the data range plus a margin. ``logits``: the model outputs logits (sigmoid applied here)."""
    if lim is None:
        span = X.abs().max().item()
        lim = (X.min().item() - 0.1 * span - 0.1, X.max().item() + 0.1 * span + 0.1)
    lo, hi = lim
    grid = torch.linspace(lo, hi, resolution, dtype=X.dtype)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    out = predict(model, torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1))
    prob = (torch.sigmoid(out) if logits else out).reshape(resolution, resolution)
    ax.contourf(gx.numpy(), gy.numpy(), prob.numpy(), levels=torch.linspace(0, 1, 11).tolist(),
                cmap="RdBu_r", alpha=0.6)
    if prob.min() < 0.5 < prob.max():
        ax.contour(gx.numpy(), gy.numpy(), prob.numpy(), levels=[0.5], colors="k", linewidths=1.2)
    labels = y.reshape(-1)
    for value, colour, marker in ((1.0, "tab:red", "o"), (0.0, "tab:blue", "s")):
        pts = X[labels == value]
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), c=colour, marker=marker, s=18,
                   edgecolors="k", linewidths=0.4, label=f"y = {int(value)}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_fit(ax, model, X: torch.Tensor, y: torch.Tensor, title: str | None = None):
    """A 1-D regression: the data points and the network's prediction on a fine grid."""
    grid = torch.linspace(X.min().item(), X.max().item(), 400, dtype=X.dtype).unsqueeze(1)
    ax.scatter(X.reshape(-1).numpy(), y.reshape(-1).numpy(), s=12, c="k", label="data")
    ax.plot(grid.reshape(-1).numpy(), predict(model, grid).reshape(-1).numpy(), c="tab:red", label="network")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_loss_curves(ax, curves: dict[str, list[float]], logy: bool = True, title: str | None = None):
    """One line per named loss history (step 0 = before the first update)."""
    for name, history in curves.items():
        ax.plot(range(len(history)), history, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("gradient-descent step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def figure(ncols: int, width: float = 3.3, height: float = 3.0):
    """A row of ``ncols`` panels."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


# -------------------------------------------------------------------------------------- tables
def format_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str | dict = ".4g") -> str:
    """A plain-text table (one dict per row), right-aligned, floats formatted with ``floatfmt``
    (one format for all columns, or ``{column: format}`` with ".4g" for the others)."""
    if not rows:
        raise ValueError("format_table needs at least one row")
    columns = columns or list(rows[0])
    fmt = floatfmt if isinstance(floatfmt, dict) else {}
    default = ".4g" if isinstance(floatfmt, dict) else floatfmt
    cells = [[format(r[c], fmt.get(c, default)) if isinstance(r[c], float) else str(r[c]) for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
