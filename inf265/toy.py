"""Toy problems for the hand-written backpropagation (``toy_problems.ipynb``).

Data generators for the neighbouring labs' problems, the loss values and accuracies they are
judged by, two training loops that call a hand-written ``backpropagation`` (passed in, never
defined here) and apply ``w -= lr * dL_dw``: full-batch (:func:`gradient_descent`) and one
sample at a time (:func:`sgd_per_sample`); autograd references (the gradients, and the size of
the output's gradient that bounds a per-sample learning rate); the figures (decision boundary or
1-D fit, loss curves) and plain-text tables.

Every generator returns ``(X, y)`` as tensors of the default dtype: ``X`` of shape ``(n, d)``
and ``y`` of shape ``(n, 1)``. Randomness comes from a ``torch.Generator`` seeded by ``seed``,
so the global random state is left alone and the same seed gives the same points.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.lines import Line2D

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
def loss_backpropagation(definitions) -> Callable:
    """The hand-written backpropagation of ``backpropagation.ipynb`` (its definitions, from
    ``inf265.nbdefs.load_definitions``) that takes the loss by name, ``(model, y_true, y_pred,
    loss=...)``: ``backpropagation_with_loss`` where the notebook's graded ``backpropagation`` is
    the course's sum of squared errors only, else ``backpropagation`` itself."""
    function = getattr(definitions, "backpropagation_with_loss", None)
    return function if function is not None else definitions.backpropagation


def predict(model: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The network's output on ``X`` without recording a graph."""
    with torch.no_grad():
        return model(X)


def _check_training(X: torch.Tensor, y: torch.Tensor, loss: str, lr, count_name: str, count) -> None:
    _check_loss(loss)
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"{count_name} must be a non-negative integer, got {count!r}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]}: they must pair up")


def _layers(model) -> list:
    """``(l, W, b)`` for l = 1..L, looked up once per training run (not at every update)."""
    return [(l, model.fc[str(l)].weight, model.fc[str(l)].bias) for l in range(1, model.L + 1)]


def _update(model, layers: list, lr: float) -> None:
    """One gradient-descent update of every layer from the hand-written gradients:
    ``w <- w - lr * dL_dw``, ``b <- b - lr * dL_db``, computed as ``torch.optim.SGD`` computes it
    (``p.add_(grad, alpha=-lr)``)."""
    for l, weight, bias in layers:
        dw, db = model.dL_dw.get(l), model.dL_db.get(l)
        if dw is None or db is None:
            raise RuntimeError(f"backpropagation did not fill model.{'dL_dw' if dw is None else 'dL_db'}[{l}]")
        weight.add_(dw, alpha=-lr)
        bias.add_(db, alpha=-lr)


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
    _check_training(X, y, loss, lr, "steps", steps)
    history, layers = [], _layers(model)
    with torch.no_grad():
        for _ in range(steps):
            y_pred = model(X)
            history.append(loss_value(y_pred, y, loss).item())
            backpropagation(model, y, y_pred, loss=loss)
            _update(model, layers, lr)
        history.append(loss_value(model(X), y, loss).item())
    return history


def sgd_per_sample(model, X: torch.Tensor, y: torch.Tensor, backpropagation: Callable,
                   loss: str = "mse", lr: float = 0.01, epochs: int = 100, record: str = "after",
                   tol: float | None = None) -> list[float]:
    """Stochastic gradient descent on one sample at a time (a batch of one), in data order.

    Each update: forward pass on one row ``X[i:i+1]``, ``backpropagation`` on it, then the same
    update as :func:`gradient_descent`; an epoch is one pass over the ``n`` rows (``n`` updates).

    ``record="after"``: the loss on all of ``X`` before training and after each epoch
    (``epochs + 1`` values). ``record="running"``: what a per-sample loop can report without an
    extra pass, one value per epoch: the *sum* over the epoch of each sample's loss, taken just
    before that sample's own update (the "loss" of the linear/XOR lab's tables).
    ``tol``: stop after the first epoch whose recorded value differs from the previous one by less
    than ``tol`` (the linear/XOR lab's early stopping; before the first epoch of a running record
    the previous value is 0, as in that lab). Training also stops after the first epoch whose
    value is not finite (diverged), so the list can be shorter than ``epochs``.
    """
    _check_training(X, y, loss, lr, "epochs", epochs)
    if record not in ("after", "running"):
        raise ValueError(f"record must be 'after' or 'running', got {record!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number or None, got {tol!r}")
    samples, layers = [(X[i:i + 1], y[i:i + 1]) for i in range(X.shape[0])], _layers(model)
    with torch.no_grad():
        history = [loss_value(model(X), y, loss).item()] if record == "after" else []
        for _ in range(epochs):
            total = 0.0
            for x_i, y_i in samples:
                y_pred = model(x_i)
                if record == "running":
                    total += loss_value(y_pred, y_i, loss).item()
                backpropagation(model, y_i, y_pred, loss=loss)
                _update(model, layers, lr)
            previous = history[-1] if history else 0.0
            history.append(loss_value(model(X), y, loss).item() if record == "after" else total)
            if not math.isfinite(history[-1]) or (tol is not None and abs(previous - history[-1]) < tol):
                break
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


def output_jacobian(model, X: torch.Tensor) -> torch.Tensor:
    """``J[i] = d y_hat(x_i) / d theta`` for every row ``x_i`` of ``X``: shape ``(n, P)``, theta all
    weights and biases in ``model.parameters()`` order (a network with one output), from autograd.

    With ``K = J J^T`` (the network linearised around its current weights), a gradient step on
    the MSE of all ``n`` points multiplies the errors by ``I - (2 lr / n) K``, and a step on one
    sample's squared error multiplies that sample's error by ``1 - 2 lr K_ii``: the steps
    diverge, to first order, when ``lr > n / lambda_max(K)`` (full batch) or
    ``lr > 1 / K_ii`` (per sample).
    """
    params = list(model.parameters())
    rows = []
    with torch.enable_grad():
        for i in range(X.shape[0]):
            out = model(X[i:i + 1])
            if out.numel() != 1:
                raise ValueError(f"the network has {out.numel()} outputs; output_jacobian needs exactly one")
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out.sum(), params)]))
    return torch.stack(rows).detach()


@contextmanager
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def step_limits(J: torch.Tensor) -> dict:
    """The learning rates above which gradient descent diverges, to first order, for the
    network whose output Jacobian is ``J`` (:func:`output_jacobian`), with ``K = J J^T``:
    ``"per sample"``: ``1 / max_i K_ii``; ``"full batch"`` (MSE over the ``n`` rows):
    ``n / lambda_max(K)``; ``"median K_ii"``, the typical squared size of the output's gradient;
    and ``"top share"``, ``lambda_max / trace(K)``: near 1 when the rows' gradients point the same
    way (then the full-batch limit is about ``1 / mean K_ii``, no larger than per sample).

    The eigenvalue is computed on one thread: LAPACK's eigensolver splits its sums by thread,
    so with more threads its last digits would depend on how many there are.
    """
    K = J @ J.T
    with _one_thread():
        lambda_max = torch.linalg.eigvalsh(K)[-1].item()
    diagonal = K.diagonal()
    return {"median K_ii": diagonal.median().item(), "per sample": 1 / diagonal.max().item(),
            "full batch": J.shape[0] / lambda_max, "top share": lambda_max / diagonal.sum().item()}


# ------------------------------------------------------------------------------------- figures
def plot_decision_boundary(ax, model, X: torch.Tensor, y: torch.Tensor, lim=None, logits: bool = False,
                           resolution: int = 200, title: str | None = None, legend: bool = True):
    """Filled contours of the network's output over a square (the predicted probability of class
    1, or the raw output of a linear output layer, read with the same threshold 0.5), the 0.5 level
    as a black line, and the points by class. Axes $x_1$, $x_2$; the classes and the boundary in a
    legend under the panel. ``lim``: (low, high) for both axes; by default the data range plus a
    margin. ``logits``: the model outputs logits (sigmoid applied here)."""
    if lim is None:
        span = X.abs().max().item()
        lim = (X.min().item() - 0.1 * span - 0.1, X.max().item() + 0.1 * span + 0.1)
    lo, hi = lim
    grid = torch.linspace(lo, hi, resolution, dtype=X.dtype)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    out = predict(model, torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1))
    prob = (torch.sigmoid(out) if logits else out).reshape(resolution, resolution)
    ax.contourf(gx.numpy(), gy.numpy(), prob.numpy(), levels=torch.linspace(0, 1, 11).tolist(),
                cmap="RdBu_r", alpha=0.6, extend="both")
    handles = []
    if prob.min() < 0.5 < prob.max():
        ax.contour(gx.numpy(), gy.numpy(), prob.numpy(), levels=[0.5], colors="k", linewidths=1.2)
        handles.append(Line2D([], [], color="k", linewidth=1.2, label="output 0.5"))
    labels = y.reshape(-1)
    for value, colour, marker in ((1.0, "tab:red", "o"), (0.0, "tab:blue", "s")):
        pts = X[labels == value]
        handles.append(ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), c=colour, marker=marker, s=18,
                                  edgecolors="k", linewidths=0.4, label=f"class {int(value)}"))
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.grid(False)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if legend:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(handles),
                  fontsize=8, handlelength=1.2, columnspacing=0.8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_fit(ax, model, X: torch.Tensor, y: torch.Tensor, title: str | None = None):
    """A 1-D regression: the data points and the network's prediction on a fine grid."""
    grid = torch.linspace(X.min().item(), X.max().item(), 400, dtype=X.dtype).unsqueeze(1)
    ax.scatter(X.reshape(-1).numpy(), y.reshape(-1).numpy(), s=12, c="k", label="data")
    ax.plot(grid.reshape(-1).numpy(), predict(model, grid).reshape(-1).numpy(), c="tab:red", label="network")
    ax.set_xlabel("$x$")
    ax.set_ylabel("$y$")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_loss_curves(ax, curves: dict[str, list[float]], logy: bool = True, title: str | None = None,
                     xlabel: str = "gradient-descent step", ylabel: str = "loss", top: float | None = None):
    """One line per named loss history (0 = before the first update); values that are not
    finite (a diverged run) are left out. ``top``: upper limit of the loss axis (a diverging run
    then leaves the plot instead of squashing the others)."""
    lowest = math.inf
    for name, history in curves.items():
        finite = [(t, value) for t, value in enumerate(history) if math.isfinite(value)]
        ax.plot([t for t, _ in finite], [value for _, value in finite], label=name)
        lowest = min([lowest] + [value for _, value in finite])
    if logy:
        ax.set_yscale("log")
    if top is not None:
        ax.set_ylim(lowest / 2 if logy else None, top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
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
