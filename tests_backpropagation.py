"""Graded test harness for ``backpropagation`` (INF265 Project 1, section 2).

Drop-in replacement for the course's ``tests_backpropagation.py``: copy this file next to your
notebook and run ::

    from tests_backpropagation import main_test
    main_test(backpropagation, MyNet([2, 3, 2]), data="toy")
    main_test(backpropagation, MyNet([24 * 24, 16, 10]), data="mnist")

It needs only ``torch`` (and ``torchvision`` for ``data="mnist"``) and works for any model with
the course's ``MyNet`` interface (``L``, ``n_l``, ``fc["1".."L"]``, ``z``, ``a``, ``f``, ``df``,
``dL_dw``, ``dL_db``). What it checks, for a few parameter points, each sample on its own (as the
course harness did) and all samples as one batch:

1. ``backprop_fn`` runs without error and **without autograd**: it is called before any
   ``backward`` with ``.grad`` emptied (filled with NaN) and autograd blocked;
2. it changes no parameter (bitwise) and no ``.grad``;
3. it stores ``model.dL_dw[l]`` / ``model.dL_db[l]`` for every layer with the shape and dtype of
   ``fc[str(l)].weight`` / ``.bias``;
4. the gradients match autograd (relative error ``|g - r| / (|g| + |r|)`` per layer and
   parameter, in float64);
5. they match centred finite differences over every parameter entry (each entry perturbed in
   place and restored, one forward pass of all samples per perturbation).

On failure it says which layer and parameter, the relative error and, when it recognises it,
the likely cause (factor 2, sign, transposed, activation derivative missing or taken at ``a``,
mean instead of sum, ...). It prints a PASSED/FAILED report ending in ``N / N``, returns a
:class:`BackpropTestResult` (truthy when everything passed) and raises ``AssertionError``
(after printing) when a check failed. The model is left as it was found.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["main_test", "BackpropTestResult", "Check", "LOSSES", "relative_error", "load_mnist_sample"]

#: losses the harness knows: name -> (element-wise torch loss, reduction over entries, description)
LOSSES = {
    "sse": (nn.MSELoss(reduction="none"), "sum", "sum of squared errors, MSELoss(reduction='none') summed"),
    "mse": (nn.MSELoss(reduction="none"), "mean", "mean squared error, nn.MSELoss()"),
    "bce": (nn.BCELoss(reduction="none"), "mean", "binary cross-entropy on probabilities, nn.BCELoss()"),
    "logistic": (nn.BCEWithLogitsLoss(reduction="none"), "mean",
                 "logistic loss on logits, nn.BCEWithLogitsLoss()"),
}

_FUNCTIONAL = {"sse": nn.functional.mse_loss, "mse": nn.functional.mse_loss,
               "bce": nn.functional.binary_cross_entropy,
               "logistic": nn.functional.binary_cross_entropy_with_logits}

# relative-error tolerances by parameter dtype: (autograd, finite differences)
TOLERANCES = {torch.float64: (1e-8, 1e-6), torch.float32: (1e-4, 1e-2)}
MATCH = 1e-6          # "is exactly this other thing" when diagnosing
N_TOY, N_MNIST = 10, 5
SEED = 265


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One check of the report."""

    name: str
    passed: bool
    message: str
    details: list = field(default_factory=list)

    def line(self) -> str:
        return f" {'PASSED' if self.passed else 'FAILED'}  {self.name}: {self.message}"


@dataclass
class BackpropTestResult:
    """What ``main_test`` found: truthy when every check passed."""

    model: str
    data: str
    loss: str
    checks: list = field(default_factory=list)
    #: worst relative error per parameter, e.g. errors["fc[1].weight"]["autograd"]
    errors: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def n_passed(self) -> int:
        return sum(c.passed for c in self.checks)

    @property
    def failed(self) -> list:
        return [c for c in self.checks if not c.passed]

    def __bool__(self) -> bool:
        return self.passed

    def __iter__(self):
        return iter(self.checks)

    def summary(self) -> str:
        n, total = self.n_passed, len(self.checks)
        if self.passed:
            return f" {n} / {total}: ALL TESTS PASSED :)"
        return f" {n} / {total}: SOME TESTS FAILED, see the FAILED lines above (verbose=True shows the gradients)"

    def failure_message(self) -> str:
        lines = [f"backpropagation failed {len(self.failed)} of {len(self.checks)} checks "
                 f"({self.model}, {self.data} data, loss '{self.loss}'):"]
        for c in self.failed:
            lines.append(f"- {c.name}: {c.message}")
            lines.extend(f"    {d}" for d in c.details[:6])
        return "\n".join(lines)


def relative_error(g: torch.Tensor, r: torch.Tensor, floor: float = 0.0) -> float:
    """``|g - r| / max(|g| + |r|, floor)`` in float64 (Frobenius norms); 0 when both are zero.

    ``floor`` is the noise level of the reference (finite differences): gradients smaller than
    it (saturated units) are compared in absolute terms.
    """
    g, r = g.detach().to(torch.float64), r.detach().to(torch.float64)
    den = max((g.norm() + r.norm()).item(), floor)
    return 0.0 if den == 0 else (g - r).norm().item() / den


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _mnist_transform():
    from torchvision import transforms
    return transforms.Compose([transforms.CenterCrop(24), transforms.ToTensor(),
                               transforms.Normalize(0.1306, 0.3080)])


def load_mnist_sample(n: int = N_MNIST, dtype=torch.float64):
    """The first ``n`` MNIST test images (24x24 centre crop, normalised) and one-hot targets."""
    try:
        from inf265.data import get_mnist_test
    except ImportError:  # the harness copied alone next to a student's notebook
        get_mnist_test = None
    if get_mnist_test is not None:
        ds = get_mnist_test(transform=_mnist_transform())
    else:
        from torchvision.datasets import MNIST
        ds = MNIST(root=os.environ.get("DATA_DIR", "data"), train=False, download=True,
                   transform=_mnist_transform())
    images, labels = zip(*(ds[i] for i in range(n)))
    x = torch.stack(images).to(dtype)                       # (n, 1, 24, 24)
    y = nn.functional.one_hot(torch.tensor(labels), 10).to(dtype)
    return x, y


def _toy_data(model, n, loss, dtype):
    """The course's toy data: x_i = i + noise, y_i = ((-1)^j i)_j (binary targets for bce/logistic)."""
    gen = torch.Generator().manual_seed(SEED)
    n0, nL = model.n_l[0], model.n_l[-1]
    x = torch.arange(n, dtype=dtype)[:, None] + torch.randn(n, n0, generator=gen, dtype=dtype)
    i, j = torch.arange(n)[:, None], torch.arange(nL)[None, :]
    if loss in ("bce", "logistic"):
        y = ((i + j) % 2).to(dtype)
    else:
        y = ((-1.0) ** j * i).to(dtype)
    return x, y


# --------------------------------------------------------------------------------------------
# model access
# --------------------------------------------------------------------------------------------
def _params(model):
    """[(key, layer, kind, store name, parameter)] for layers 1..L."""
    out = []
    for l in range(1, model.L + 1):
        layer = model.fc[str(l)]
        out.append((f"fc[{l}].weight", l, "weight", "dL_dw", layer.weight))
        out.append((f"fc[{l}].bias", l, "bias", "dL_db", layer.bias))
    return out


def _describe(model) -> str:
    return f"{type(model).__name__}({list(model.n_l)})"


def _fetch(model, store_name, l):
    store = getattr(model, store_name, None)
    if store is None:
        return None, f"model.{store_name} does not exist"
    try:
        return store[l], None
    except (KeyError, IndexError, TypeError):
        if isinstance(store, dict) and str(l) in store:
            return None, f"model.{store_name} is keyed by strings ('{l}'); key it by the int layer number {l}"
        return None, f"model.{store_name}[{l}] was not stored"


# --------------------------------------------------------------------------------------------
# calling the student's function under guard
# --------------------------------------------------------------------------------------------
class _AutogradUsed(RuntimeError):
    pass


class _BlockedEngine:
    """Stands in for autograd's engine while ``backprop_fn`` runs: any backward pass raises."""

    def __init__(self, engine):
        self._engine = engine
        self.used = False

    def run_backward(self, *args, **kwargs):
        self.used = True
        raise _AutogradUsed("autograd is blocked while backpropagation runs (the gradients must be "
                            "computed by hand): do not call .backward() or torch.autograd.grad")

    def __getattr__(self, name):
        return getattr(self._engine, name)


@contextlib.contextmanager
def _autograd_blocked():
    from torch.autograd.variable import Variable
    engine = Variable._execution_engine
    blocked = _BlockedEngine(engine)
    Variable._execution_engine = blocked
    try:
        yield blocked
    finally:
        Variable._execution_engine = engine


@dataclass
class _Call:
    label: str
    x: torch.Tensor = None
    y: torch.Tensor = None
    batch: int = 1
    error: str | None = None
    autograd_used: bool = False
    changed: list = field(default_factory=list)
    problems: dict = field(default_factory=dict)   # key -> (category, message)
    grads: dict = field(default_factory=dict)      # key -> float64 tensor (valid shape)
    refs: dict = field(default_factory=dict)       # key -> autograd's gradient
    errors: dict = field(default_factory=dict)     # key -> relative error vs autograd


def _loss_value(loss, y_pred, y_true):
    fn, reduction, _ = LOSSES[loss]
    e = fn(y_pred, y_true)
    return e.sum() if reduction == "sum" else e.mean()


def _per_sample_losses(loss, y_pred, y_true):
    fn, reduction, _ = LOSSES[loss]
    e = fn(y_pred, y_true).flatten(1)
    return e.sum(1) if reduction == "sum" else e.mean(1)


def _shape_problem(g, p, key, where, batch):
    """A message when ``g`` cannot be the gradient of ``p`` (shape), else None."""
    shape, got = tuple(p.shape), tuple(g.shape)
    if got == shape:
        return None
    kind = "weight" if p.dim() == 2 else "bias"
    msg = f"{where} has shape {got}, expected {shape} (the shape of {key})"
    if kind == "weight" and got == shape[::-1]:
        return ("transposed", msg + ": it is transposed; dL_dw[l] = Δᵀ A^(l-1) has shape (n_l, n_(l-1))")
    if kind == "bias" and len(got) == 2 and got[1] == shape[0] and got[0] == batch and batch > 1:
        return ("bias not summed", msg + f": one row per sample; the bias gradient sums Δ over the "
                "batch: dL_db[l] = Δ.sum(dim=0)")
    if g.numel() == p.numel():
        return ("shape", msg + ": same entries, extra or missing dimension (sum Δ over dim 0 for the "
                "bias, do not keep the batch dimension)")
    if kind == "bias" and len(got) == 2 and got[1] == shape[0]:
        return ("bias not summed", msg + ": the bias gradient must be summed over the batch: dL_db[l] = Δ.sum(dim=0)")
    return ("shape", msg)


def _call(backprop_fn, model, x, y, loss, label, batch, tol):
    """Forward, call ``backprop_fn`` under guard, collect its gradients and autograd's."""
    call = _Call(label, x, y, batch)
    named = _params(model)
    with torch.enable_grad():
        y_pred = model(x)
    sentinels, snaps = {}, {}
    for key, l, kind, _, p in named:
        sentinels[key] = torch.full_like(p, float("nan"))
        p.grad = sentinels[key]
        snaps[key] = p.detach().clone()
    # empty the gradient stores, so that a gradient left over from a previous call is not taken
    # for this call's (the student's function must store every layer each time)
    for store_name in ("dL_dw", "dL_db"):
        store = getattr(model, store_name, None)
        if isinstance(store, dict):
            for key in store:
                store[key] = None
    args = (model, y.clone(), y_pred)
    kwargs = {} if loss == "sse" else {"loss": loss}
    with _autograd_blocked() as engine:
        try:
            backprop_fn(*args, **kwargs)
        except _AutogradUsed:
            pass
        except Exception as exc:  # reported as a failed check, never raised from the harness
            call.error = f"{type(exc).__name__}: {exc}"
    call.autograd_used = engine.used
    # parameters and .grad untouched?  (then restore both, whatever happened)
    for key, l, kind, _, p in named:
        current = getattr(model.fc[str(l)], kind)
        if current is not p:
            call.changed.append(f"{key} was replaced by a new tensor")
            setattr(model.fc[str(l)], kind, p)
        elif not torch.equal(p.detach(), snaps[key]):
            delta = (p.detach() - snaps[key]).abs().max().item()
            call.changed.append(f"{key} was modified (largest change {delta:.3g})")
        g = p.grad
        if g is not sentinels[key] or not torch.isnan(g).all():
            call.changed.append(f"{key}.grad was changed")
        with torch.no_grad():
            p.copy_(snaps[key])
        p.grad = None
    # the student's gradients
    for key, l, kind, store, p in named:
        if call.error or call.autograd_used:
            break
        where = f"model.{store}[{l}]"
        g, why = _fetch(model, store, l)
        if g is None:
            call.problems[key] = ("missing", why or f"{where} is None: no gradient stored for layer {l}")
            continue
        if not isinstance(g, torch.Tensor):
            call.problems[key] = ("type", f"{where} is a {type(g).__name__}, not a torch.Tensor")
            continue
        s = sentinels[key]
        if g is s or (g.numel() and g.untyped_storage().data_ptr() == s.untyped_storage().data_ptr()) \
                or (g.numel() and g.is_floating_point() and torch.isnan(g).all()):
            call.problems[key] = ("copied .grad", f"{where} was copied from {key}.grad: the harness empties "
                                  ".grad (fills it with NaN) while backpropagation runs, so the gradient must "
                                  "be computed by hand, not taken from autograd")
            continue
        bad = _shape_problem(g, p, key, where, batch)
        if bad:
            call.problems[key] = bad
            continue
        if g.dtype != p.dtype:
            call.problems[key] = ("dtype", f"{where} has dtype {g.dtype}, expected {p.dtype} (the dtype of "
                                  f"{key}); compute with the model's tensors, do not create float32 tensors")
            continue
        if g.device != p.device:
            call.problems[key] = ("device", f"{where} is on {g.device}, expected {p.device}")
            continue
        if not torch.isfinite(g).all():
            call.problems[key] = ("nan", f"{where} contains NaN or inf")
            continue
        call.grads[key] = g.detach().to(torch.float64).clone()
    # autograd's gradients, on a fresh forward pass (the student may have changed model.a / z)
    with torch.enable_grad():
        refs = torch.autograd.grad(_loss_value(loss, model(x), y), [p for *_, p in named])
    # autograd is not exact either: with saturated tanh/sigmoid units, 1 - tanh(z)^2 cancels; its
    # absolute error is about u times the gradient with every f' replaced by 1 (the floor below)
    try:
        undamped = _variant_grads(model, x, y, loss, {l: "none" for l in range(1, model.L + 1)})
    except Exception:  # a model without f / df: plain relative error
        undamped = {}
    unit = torch.finfo(named[0][-1].dtype).eps
    for (key, *_), r in zip(named, refs):
        call.refs[key] = r.detach().to(torch.float64)
        floor = 1e3 * unit * undamped[key].norm().item() / tol if key in undamped else 0.0
        if key in call.grads:
            call.errors[key] = relative_error(call.grads[key], call.refs[key], floor)
    return call


# --------------------------------------------------------------------------------------------
# finite differences
# --------------------------------------------------------------------------------------------
def _finite_differences(model, x, y, loss, h):
    """Centred differences of every per-sample loss.

    Returns ``({key: (n_samples, *param.shape)}, {key: (n_samples,) noise level})`` in float64.
    Each parameter entry is perturbed in place and restored bitwise; one forward pass of all the
    samples per perturbation. The noise level of a difference quotient is the rounding error of
    the loss divided by the step, ``(|L| + 1) u / h`` per entry (u the unit roundoff), times 100.
    """
    out, noise = {}, {}
    reduction = LOSSES[loss][1]
    functional = _FUNCTIONAL[loss]

    def per_sample(outputs):  # (..., n_samples, n_L) outputs -> (..., n_samples) losses
        e = functional(outputs, y.expand_as(outputs), reduction="none")
        return e.sum(-1) if reduction == "sum" else e.mean(-1)

    with torch.no_grad():
        unit = torch.finfo(_params(model)[0][-1].dtype).eps
        base = per_sample(model(x).flatten(1)).to(torch.float64).abs()
        for key, l, kind, _, p in _params(model):
            flat = p.view(-1)
            if p.device.type == "cpu" and p.dtype in (torch.float64, torch.float32) and p.is_contiguous():
                flat = p.detach().numpy().reshape(-1)  # same memory; setting an entry is 30x faster
            values = p.detach().reshape(-1).tolist()
            ups, downs = [], []
            for k, orig in enumerate(values):  # the model's outputs only; the losses come after
                flat[k] = orig + h
                ups.append(model(x))
                flat[k] = orig - h
                downs.append(model(x))
                flat[k] = orig
            v = torch.tensor(values, dtype=p.dtype)
            steps = ((v + h) - (v - h)).to(torch.float64)  # the perturbations actually made
            diff = per_sample(torch.stack(ups).flatten(2)) - per_sample(torch.stack(downs).flatten(2))
            rows = diff.to(torch.float64) / steps[:, None]                     # (entries, samples)
            out[key] = rows.T.reshape(x.shape[0], *p.shape)
            noise[key] = 100 * unit * (base + 1) / h * math.sqrt(p.numel())
    return out, noise


# --------------------------------------------------------------------------------------------
# diagnosis
# --------------------------------------------------------------------------------------------
def _variant_grads(model, x, y, loss, mode):
    """Autograd's gradients when the activation derivative is dropped or taken at ``a``.

    ``mode`` maps a layer to "none" (f' treated as 1) or "at_a" (f'(a) used instead of f'(z)).
    """
    a = torch.flatten(x, 1)
    with torch.enable_grad():
        for l in range(1, model.L + 1):
            z = model.fc[str(l)](a)
            fz = model.f[l](z)
            how = mode.get(l)
            if how == "none":
                a = fz.detach() + (z - z.detach())
            elif how == "at_a":
                a = fz.detach() + (z - z.detach()) * model.df[l](fz.detach())
            else:
                a = fz
        grads = torch.autograd.grad(_loss_value(loss, a, y), [p for *_, p in _params(model)])
    return {key: g.detach().to(torch.float64) for (key, *_), g in zip(_params(model), grads)}


def _variants(model):
    L = model.L
    hidden = range(1, L)
    out = [("the activation derivative f'(z) is missing (at every layer)", {l: "none" for l in range(1, L + 1)}),
           ("the activation derivative f'(z^(L)) of the output layer is missing", {L: "none"}),
           ("the activation derivative is taken at a = f(z) instead of z (at every layer)",
            {l: "at_a" for l in range(1, L + 1)}),
           ("the activation derivative of the output layer is taken at a = f(z) instead of z", {L: "at_a"})]
    if L > 1:
        out += [("the activation derivative f'(z^(l-1)) is missing when δ is propagated back "
                 "(Δ^(l-1) = Δ^(l) W^(l) ⊙ f'(Z^(l-1)))", {l: "none" for l in hidden}),
                ("the activation derivative of the hidden layers is taken at a = f(z) instead of z",
                 {l: "at_a" for l in hidden})]
    return out


def _scale_name(c, batch, n_out, loss):
    mean = LOSSES[loss][1] == "mean"
    names = [(-1.0, "the sign is flipped: ∂L/∂ŷ = -2(y - ŷ) = 2(ŷ - y)" if loss in ("sse", "mse")
              else "the sign is flipped"),
             (2.0, "off by a factor 2 (too large)"), (0.5, "off by a factor 2 (too small): "
                                                        "d/dŷ (y - ŷ)² = -2(y - ŷ)"),
             (-2.0, "sign flipped and off by a factor 2"), (-0.5, "sign flipped and off by a factor 2")]
    if not mean:
        names += [(1.0 / (batch * n_out) if batch > 1 else 1.0, "mean instead of sum: divided by batch size x outputs "
                   f"({batch} x {n_out}); the loss is the SUM of squared errors, not nn.MSELoss()'s mean"),
                  (1.0 / batch, f"mean instead of sum over the batch: divided by the batch size {batch}; the "
                   "loss sums over the samples"),
                  (1.0 / n_out, f"mean instead of sum over the outputs: divided by n_L = {n_out}; the loss "
                   "sums the squared errors")]
    else:
        names += [(batch * n_out if batch > 1 else 1.0, f"sum instead of mean: {batch * n_out} times too large; loss '{loss}' is "
                   "a mean over all entries"),
                  (float(batch), f"sum instead of mean over the batch: {batch} times too large"),
                  (float(n_out), f"sum instead of mean over the outputs: {n_out} times too large")]
    found = [name for value, name in names if value != 1.0 and abs(c - value) <= 1e-6 * abs(value)]
    if found:  # several readings when they coincide (e.g. n_L = 2: factor 2 or mean over outputs)
        return ", or ".join(dict.fromkeys(found))
    return f"every gradient is scaled by {c:.6g}" if abs(c - 1) > 1e-3 else None


def _diagnose(call, failing, model=None, x=None, y=None, loss="sse", batch=1, refs=None):
    """The likely cause of the failing parameters (a sentence), or None."""
    refs = refs if refs is not None else call.refs
    keys = [k for k in failing if k in call.grads]
    if not keys:
        return None
    layer_of = lambda k: int(k[3:k.index("]")])  # noqa: E731
    L = model.L if model is not None else max(layer_of(k) for k in call.grads)
    ok = lambda k: k in call.grads and k not in failing  # noqa: E731
    where = None
    if L > 1 and L not in {layer_of(k) for k in keys} and ok(f"fc[{L}].weight") and ok(f"fc[{L}].bias"):
        where = ("only the last layer is right: the output δ^(L) is correct but its propagation back is "
                 "wrong; check Δ^(l-1) = (Δ^(l) W^(l)) ⊙ f'(Z^(l-1)) and which a / z / W each layer uses")
    elif all(k.endswith(".bias") for k in keys):
        where = "only the biases are wrong: dL_db[l] is Δ^(l) summed over the rows (samples)"
    elif all(k.endswith(".weight") for k in keys):
        where = "only the weights are wrong: dL_dw[l] = Δ^(l)ᵀ A^(l-1), with A^(l-1) = a[l-1]"
    how = _how(call, keys, refs, model, x, y, loss, batch)
    if where and how:
        return f"{where}; there: {how}"
    return where or how


def _how(call, keys, refs, model, x, y, loss, batch):
    g = {k: call.grads[k] for k in keys}
    r = {k: refs[k] for k in keys}
    if all(g[k].abs().max() == 0 for k in keys):
        return "the gradients are all zero"
    # one scale factor for every failing parameter?
    num = sum((g[k] * r[k]).sum().item() for k in keys)
    den = sum((r[k] * r[k]).sum().item() for k in keys)
    if den > 0:
        c = num / den
        if all((g[k] - c * r[k]).norm().item() <= MATCH * g[k].norm().item() for k in keys):
            name = _scale_name(c, batch, model.n_l[-1] if model is not None else 1, loss)
            if name:
                return name
    # transposed square weights
    if all(g[k].dim() == 2 and g[k].shape[0] == g[k].shape[1] for k in keys) and \
            all(relative_error(g[k], r[k].T) <= MATCH for k in keys):
        return "the weight gradient is transposed: dL_dw[l] = Δᵀ A^(l-1), shape (n_l, n_(l-1))"
    # a known wrong variant of backpropagation?
    if model is not None and hasattr(model, "f") and hasattr(model, "df"):
        for name, mode in _variants(model):
            try:
                v = _variant_grads(model, x, y, loss, mode)
            except Exception:
                break
            if all(relative_error(call.grads[k], v[k]) <= MATCH for k in call.grads) and \
                    any(relative_error(v[k], refs[k]) > MATCH for k in keys):
                return name
    return None


# --------------------------------------------------------------------------------------------
# the test
# --------------------------------------------------------------------------------------------
def _print_side_by_side(call, max_rows=8):
    print("\n --------- Our gradients and autograd's, side by side ---------")
    for key in call.refs:
        ours = call.grads.get(key)
        ref = call.refs[key].flatten()
        print(f"\n ******* {key} ({call.label}) *******")
        if ours is None:
            print(f"  ours: {call.problems.get(key, ('', 'not available'))[1]}")
            continue
        ours = ours.flatten()
        print(f"  {'entry':>8} {'ours':>14} {'autograd':>14}")
        for i in range(min(len(ref), max_rows)):
            print(f"  {i:>8} {ours[i].item():>14.6g} {ref[i].item():>14.6g}")
        if len(ref) > max_rows:
            print(f"  ... {len(ref) - max_rows} more entries")
        print(f"  relative error: {call.errors.get(key, float('nan')):.2e}")


def main_test(backprop_fn, model, eps=1e-6, verbose=False, data="toy", loss="sse",
              n_samples=None, n_points=None, lr=0.01):
    """Test ``backprop_fn(model, y_true, y_pred)`` on ``model``; print a report; raise if wrong.

    Parameters
    ----------
    backprop_fn : the function under test; it must store ``model.dL_dw[l]`` and ``model.dL_db[l]``.
    model : a ``MyNet``-like model (``L``, ``n_l``, ``fc``, ``z``, ``a``, ``f``, ``df``).
    eps : step of the centred finite differences.
    verbose : also print every gradient next to autograd's.
    data : ``"toy"`` (the course's random toy data) or ``"mnist"`` (the first MNIST test images,
        24x24 centre crop, one-hot targets; needs ``n_l[0] == 576`` and ``n_l[-1] == 10``).
    loss : ``"sse"`` (the course's sum of squared errors; ``backprop_fn`` is called with three
        arguments) or ``"mse"``, ``"bce"``, ``"logistic"`` (then called with ``loss=...``).
    n_samples : number of samples (default 10 toy, 5 MNIST); they are checked one at a time and
        as one batch.
    n_points : number of parameter points (default 3 toy, 1 MNIST); between two points the model
        takes a gradient step (``lr`` times autograd's gradient of the mean loss; undone at the end).

    Returns a :class:`BackpropTestResult`; raises ``AssertionError`` (after the report) when a
    check fails. Bad arguments raise ``ValueError``.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(map(repr, LOSSES))}")
    if data not in ("toy", "mnist"):
        raise ValueError(f"unknown data {data!r}; use data='toy' or data='mnist'")
    for attr in ("L", "n_l", "fc"):
        if not hasattr(model, attr):
            raise ValueError(f"the model has no attribute {attr!r}: main_test needs the course's MyNet "
                             "interface (L, n_l, fc, z, a, f, df, dL_dw, dL_db)")
    try:
        params = [p for *_, p in _params(model)]
    except (KeyError, AttributeError, TypeError) as exc:
        raise ValueError(f"model.fc must map '1'..'{model.L}' to nn.Linear layers (the course's MyNet): "
                         f"{type(exc).__name__}: {exc}") from None
    dtype = params[0].dtype
    if data == "mnist":
        if model.n_l[0] != 24 * 24:
            raise ValueError(f"data='mnist' needs a model with 24*24 = 576 inputs (MNIST images centre-"
                             f"cropped to 24x24), but n_l[0] = {model.n_l[0]}: use e.g. MyNet([24*24, 16, 10])")
        if model.n_l[-1] != 10:
            raise ValueError(f"data='mnist' needs 10 outputs (one per digit, one-hot targets), but "
                             f"n_l[-1] = {model.n_l[-1]}: use e.g. MyNet([24*24, 16, 10])")
        n = n_samples or N_MNIST
        x, y = load_mnist_sample(n, dtype)
        points = n_points or 1
    else:
        n = n_samples or N_TOY
        x, y = _toy_data(model, n, loss, dtype)
        points = n_points or 3
    tol_ag, tol_fd = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    if dtype != torch.float64:
        eps = max(eps, 1e-3)
    result = BackpropTestResult(_describe(model), data, loss)
    keys = [k for k, *_ in _params(model)]
    worst = {k: {"autograd": 0.0, "finite_differences": 0.0} for k in keys}
    start = [p.detach().clone() for p in params]
    start_grads = [p.grad for p in params]
    bce_message = ("loss='bce' needs probabilities in [0, 1]: use a sigmoid output layer "
                   "(or loss='logistic' with an identity output layer)")
    with torch.no_grad():
        probe = model(x)
    if loss == "bce" and not ((probe >= 0) & (probe <= 1)).all():
        raise ValueError(bce_message)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (x10 on a loaded machine)
    singles, batches, fd_fail = [], [], []
    ag_single_fail, ag_batch_fail = [], []
    first_batch_call = None
    try:
        for point in range(points):
            where = f"point {point + 1}"
            for i in range(n):
                c = _call(backprop_fn, model, x[i:i + 1], y[i:i + 1], loss, f"sample {i}, {where}", 1, tol_ag)
                singles.append(c)
            c = _call(backprop_fn, model, x, y, loss, f"batch of {n}, {where}", n, tol_ag)
            batches.append(c)
            first_batch_call = first_batch_call or c
            calls = singles[-n:] + [c]
            for call in calls:
                for k, e in call.errors.items():
                    worst[k]["autograd"] = max(worst[k]["autograd"], e)
                failing = [k for k, e in call.errors.items() if e > tol_ag]
                if failing:
                    fails = ag_batch_fail if call is c else ag_single_fail
                    # the report gives the likely cause of the first failure (diagnosing is slower)
                    diag = None if fails else _diagnose(call, failing, model, call.x, call.y, loss, call.batch)
                    fails.append((call, failing, diag))
            # finite differences for every sample, one sweep per point
            if any(call.grads for call in calls):
                fd, noise = _finite_differences(model, x, y, loss, eps)
                mean = LOSSES[loss][1] == "mean"
                fd_batch = {k: v.mean(0) if mean else v.sum(0) for k, v in fd.items()}
                # an absolute error below the noise of the differences passes (saturated units)
                noise_batch = {k: v.sum().item() / (n if mean else 1) / tol_fd for k, v in noise.items()}
                for i, call in enumerate(calls):
                    if call is c:
                        ref, floor = fd_batch, noise_batch
                    else:
                        ref, floor = {k: v[i] for k, v in fd.items()}, {k: v[i].item() / tol_fd for k, v in noise.items()}
                    errs = {k: relative_error(call.grads[k], ref[k], floor[k]) for k in call.grads}
                    for k, e in errs.items():
                        worst[k]["finite_differences"] = max(worst[k]["finite_differences"], e)
                    failing = [k for k, e in errs.items() if e > tol_fd]
                    if failing:
                        fd_fail.append((call, failing, errs))
            if point + 1 < points:  # move to another point: one gradient step on the mean loss
                scale = n if LOSSES[loss][1] == "sum" else 1
                with torch.no_grad():  # (torch.optim would import torch._dynamo: 3 s)
                    for p, r in zip(params, c.refs.values()):
                        p -= lr * r.to(p.dtype) / scale
    except RuntimeError as exc:  # nn.BCELoss on an output that left [0, 1]
        if loss == "bce" and "between 0 and 1" in str(exc):
            raise ValueError(bce_message) from None
        raise
    finally:
        torch.set_num_threads(threads)
        with torch.no_grad():
            for p, s, g in zip(params, start, start_grads):
                p.copy_(s)
                p.grad = g
    result.errors = worst
    all_calls = singles + batches

    # ---- the checks -------------------------------------------------------------------------
    def add(name, passed, message, details=()):
        result.checks.append(Check(name, bool(passed), message, list(details)))

    errored = [c for c in all_calls if c.error and not c.autograd_used]
    if errored:
        single_ok = not any(c in errored for c in singles)
        hint = (f" (it works one sample at a time but not on a batch of {n}: make it vectorised over the "
                "batch dimension)") if single_ok else ""
        add("runs without error", False, f"raised {errored[0].error} ({errored[0].label}){hint}",
            [f"{c.label}: {c.error}" for c in errored])
    else:
        add("runs without error", True, f"{len(all_calls)} calls ({n} samples one at a time and as one batch, "
            f"{points} parameter point{'s' if points > 1 else ''})")
    used = [c for c in all_calls if c.autograd_used]
    add("uses no autograd", not used,
        "backpropagation called autograd (.backward() or torch.autograd.grad); gradients must be computed "
        "by hand from model.a, model.z, model.df and the weights" if used else
        "backpropagation ran before any backward pass, with .grad emptied and autograd blocked")
    changed = [c for c in all_calls if c.changed]
    add("changes no parameter and no .grad", not changed,
        (f"{changed[0].changed[0]} ({changed[0].label}); backpropagation must only compute dL_dw / dL_db: "
         "the parameter update belongs to the training loop") if changed else
        "every weight and bias bitwise unchanged, .grad untouched",
        sorted({msg for c in changed for msg in c.changed}))
    problems = [(c, k, cat, msg) for c in all_calls for k, (cat, msg) in c.problems.items()]
    if problems:
        seen, details = set(), []
        for c, k, cat, msg in problems:
            if msg not in seen:
                seen.add(msg)
                details.append(f"{msg} ({c.label})")
        c, k, cat, msg = problems[0]
        add("gradients stored with the shape and dtype of their parameters", False, f"{msg} ({c.label})", details)
    else:
        add("gradients stored with the shape and dtype of their parameters", True,
            f"dL_dw[l], dL_db[l] for l = 1..{model.L}")

    def value_check(name, calls, fails, tol):
        if not any(c.grads for c in calls):
            add(name, False, "not checked: no usable gradient was stored")
            return
        if not fails:
            add(name, True, f"relative error below {tol:.0e} for every layer and parameter")
            return
        call, failing, diag = fails[0]
        k = max(failing, key=lambda key: call.errors[key])
        where = ", ".join(f"{key} ({call.errors[key]:.2e})" for key in failing)
        msg = f"wrong gradient for {where}, tolerance {tol:.0e} ({call.label})"
        msg += f"; likely cause: {diag}" if diag else ""
        details = [f"{c.label}: " + ", ".join(f"{key} {c.errors[key]:.2e}" for key in f) for c, f, _ in fails]
        add(name, False, msg, details)

    value_check("matches autograd, one sample at a time", singles, ag_single_fail, tol_ag)
    value_check(f"matches autograd, batch of {n} samples", batches, ag_batch_fail, tol_ag)
    n_entries = sum(p.numel() for p in params)
    if not any(c.grads for c in all_calls):
        add("matches finite differences", False, "not checked: no usable gradient was stored")
    elif fd_fail:
        call, failing, errs = fd_fail[0]
        where = ", ".join(f"{k} ({errs[k]:.2e})" for k in failing)
        add("matches finite differences", False,
            f"wrong gradient for {where}, tolerance {tol_fd:.0e} ({call.label}; centred differences, step {eps:g})",
            [f"{c.label}: " + ", ".join(f"{k} {e[k]:.2e}" for k in f) for c, f, e in fd_fail])
    else:
        add("matches finite differences", True,
            f"centred differences over all {n_entries} parameter entries (step {eps:g}): relative error "
            f"below {tol_fd:.0e}")

    # ---- the report -------------------------------------------------------------------------
    print("\n __________________________________________________________________ ")
    print(f"  Check backpropagation: {result.model}, {data} data, loss '{loss}'")
    print(f"  {n} samples, one at a time and as one batch; {points} parameter point{'s' if points > 1 else ''}")
    if dtype != torch.float64:
        print(f"  note: the model is {dtype}; the project uses torch.set_default_dtype(torch.double)."
              f"\n  Tolerances loosened to {tol_ag:.0e} (autograd) and {tol_fd:.0e} (finite differences, step {eps:g}).")
    print(" __________________________________________________________________ ")
    if verbose and first_batch_call is not None:
        _print_side_by_side(first_batch_call)
        print("\n --------- Worst relative errors per parameter ---------")
        for k in keys:
            print(f"  {k:<14} autograd {worst[k]['autograd']:.2e}   finite differences "
                  f"{worst[k]['finite_differences']:.2e}")
        print()
    for chk in result.checks:
        print(chk.line())
        if not chk.passed:
            for d in chk.details[:3]:
                print(f"           {d}")
            if len(chk.details) > 3:
                print(f"           ... and {len(chk.details) - 3} more")
    print("\n" + result.summary())
    if not result.passed:
        err = AssertionError(result.failure_message())
        err.result = result
        raise err
    return result
