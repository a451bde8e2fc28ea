"""The guard, the judge and the diagnoses of the backpropagation harness (INF265 Project 1).

``tests_backpropagation.py`` (what a student opens: ``main_test`` and its report) runs on this
module, shipped beside it; it needs only torch and torchvision. The grader uses the same code on
either side of its sandbox:

* :func:`collect` calls the function under guard for the calls of a :func:`call_plan` and returns
  plain records (str, bool, int, float, list, dict and tensors; format in its docstring). It
  decides nothing.
* :func:`judge` never calls the function: it reads record i as the answer to call i of the plan
  (nothing in a record says which question it answers; a collection that does not fit raises
  :class:`InvalidRecords`), and from a reference model with the same parameters, the data and
  the points it computes autograd, finite differences, equations (4)-(7) on stored activations
  and the diagnoses, and returns the :class:`BackpropTestResult`.
* :func:`collect_square` / :func:`judge_square` do the same for the square net (one check).

Layout: the public API (collect, judge, data, results), then collect's guarded call and guard,
the static reading, the judge's references and checks, finite differences, and the diagnoses.
"""
from __future__ import annotations

import contextlib
import ctypes
import dis
import functools
import gzip
import math
import os
import signal
import sys
import tempfile
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["collect", "call_plan", "stale_point", "judge", "InvalidRecords", "collect_square", "judge_square",
           "CannotBuild", "toy_data", "load_mnist_sample", "data_folder", "parameter_points", "square_setup",
           "square_net", "inspect_code", "relative_error", "ReferenceNet", "BackpropTestResult", "Check",
           "CHECKS", "LOSSES", "ACTIVATIONS", "TOLERANCES", "DEFAULT_TIMEOUT", "sgd_reference", "sgd_mistakes",
           "sgd_diagnose", "SGD_RULE"]

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


def _dtanh(z):
    return 1 - torch.tanh(z) ** 2


def _dsigmoid(z):
    s = torch.sigmoid(z)
    return s * (1 - s)


def _drelu(z):
    return (z > 0).to(z.dtype)


def _identity(z):
    return z


#: activation name -> (f, f' taken at z), for ReferenceNet and the square net
ACTIVATIONS = {"tanh": (torch.tanh, _dtanh), "sigmoid": (torch.sigmoid, _dsigmoid),
               "relu": (torch.relu, _drelu), "identity": (_identity, torch.ones_like)}

#: check id -> name (the unit of partial credit; ids are stable)
CHECKS = {
    "runs": "runs without error",
    "no_autograd": "uses no autograd and does not evaluate the model",
    "unchanged": "changes no parameter, .grad, input or model attribute",
    "stored": "gradients stored with the shape and dtype of their parameters",
    "autograd": "matches autograd, one sample at a time",
    "autograd_batch": "matches autograd, batch of {n} samples",
    "finite_differences": "matches finite differences",
    "stored_activations": "uses the stored activations a[l], z[l]",
    "square": "square layers and mixed activations",
}

# relative-error tolerances by parameter dtype: (autograd, finite differences)
TOLERANCES = {torch.float64: (1e-8, 1e-6), torch.float32: (1e-4, 1e-2)}
MATCH = 1e-6                  # "is exactly this other thing" when diagnosing (float64)
EPS_RANGE = (1e-8, 1e-4)      # accepted finite-difference steps (1e-3 gives false failures)
DEFAULT_TIMEOUT = 60.0        # seconds per call of the student's function
N_TOY, N_MNIST, N_SQUARE = 10, 5, 8
N_STALE = 2                   # calls with stored a/z from other parameters (stale_point)
STORE_SENTINEL = 0.5          # what dL_dw[l] / dL_db[l] hold before a call (never emptied, as the course)
SEED = 265
SQUARE_LAYERS = (3, 3, 3, 2)
MNIST_MEAN, MNIST_STD = 0.1306, 0.3080
_GRAD_NAN = {torch.float64: (torch.int64, 0x7FF80000000F0265), torch.float32: (torch.int32, 0x7FC10265)}
_ABSENT = object()


# ============================================================================================
# public API: the two halves, data, results
# ============================================================================================
def collect(backprop_fn, model, x, y, points, *, loss="sse", batch=False, timeout=DEFAULT_TIMEOUT, plan=None):
    """Call ``backprop_fn`` under guard for every call of ``plan`` (default :func:`call_plan`).

    ``points`` come from :func:`parameter_points`. Each call gets a fresh forward pass (no graph),
    ``.grad`` filled with NaN and the gradient stores filled with :data:`STORE_SENTINEL` (as the
    course's harness, it never empties them: ``+=`` shows); a "stale" call gets the forward pass of
    :func:`stale_point` while the model holds the point's parameters. Afterwards the model is
    restored. Calls stop at the first one that exceeds ``timeout``. Returns a dict of plain data::

        {"model": "MyNet([2, 3, 2])", "loss": "sse", "dtype": "torch.float64", "n_samples": 10,
         "batch": False, "n_points": 3, "timeout": 60.0, "error": None,
         "stopped": None or why the calls stopped,
         "static_findings": [str, ...],       # autograd names found in the function's code
         "calls": [record, ...]}

    and each record::

        {"label": "sample 3, point 1", "point": 0, "samples": [3], "batch_size": 1,
         "error": None or "ValueError: ...", "timed_out": bool, "exited": bool,
         "autograd_used": bool, "autograd_how": [str, ...], "forward_evaluations": int,
         "changed_parameters": [str, ...], "changed_grads": [str, ...],
         "changed_inputs": [str, ...], "changed_attributes": [str, ...],
         "stored": {"fc[1].weight": {"tensor": Tensor or None, "problem": None or "missing" |
                    "string keys" | "type", "message": None or str,
                    "shares_memory_with": None or "fc[1].weight.grad" | "model.dL_dw[1]" | ...,
                    "from_grad": bool},
                    "fc[1].bias": {...}, ...}}
    """
    n = x.shape[0]
    plan = call_plan(n, len(points), batch) if plan is None else plan
    out = {"model": _describe(model), "loss": loss, "dtype": str(_dtype(model)), "n_samples": n,
           "batch": bool(batch), "n_points": len(points), "timeout": timeout, "error": None,
           "stopped": None, "static_findings": inspect_code(backprop_fn, model), "calls": []}
    original = _save_parameters(model)
    try:
        for call in plan:
            point = points[call["point"]]
            _load_point(model, point)
            record = _guarded_call(backprop_fn, model, x[call["samples"]], y[call["samples"]], loss, timeout,
                                   call["label"], stale_point(point) if call["stale"] else None)
            record.update(point=call["point"], samples=list(call["samples"]), batch_size=len(call["samples"]))
            out["calls"].append(record)
            if record["timed_out"]:
                out["stopped"] = f"the calls stopped at the time limit ({call['label']})"
                return out
    finally:
        _restore_parameters(model, original)
    return out


def call_plan(n, n_points, batch=False, stale=True) -> list:
    """The calls :func:`collect` makes and :func:`judge` expects, in order: every sample alone at every
    point (and the batch of ``n`` if ``batch``), then ``N_STALE`` samples with stored a/z from
    :func:`stale_point` (``stale``). Each ``{"label", "point", "samples", "stale"}``. The caller (the
    trusted side) chooses it; a record is read only as the answer to its call."""
    plan = []
    for p in range(n_points):
        groups = [[i] for i in range(n)] + ([list(range(n))] if batch and n > 1 else [])
        plan += [{"label": (f"sample {g[0]}" if len(g) == 1 else f"batch of {n}") + f", point {p + 1}",
                  "point": p, "samples": g, "stale": False} for g in groups]
    if stale:
        plan += [{"label": f"sample {i}, stored a/z from other parameters", "point": 0, "samples": [i],
                  "stale": True} for i in range(min(N_STALE, n))]
    return plan


def stale_point(point) -> dict:
    """Parameters θ1 near ``point`` (θ2), seeded: the stale check stores the a/z of a forward pass at θ1
    while the model holds θ2, so that only a backpropagation that uses the stored a[l], z[l] (equations
    (4)-(7) with θ2's weights) gives the expected gradients; a new forward pass, autograd or finite
    differences give θ2's own."""
    gen = torch.Generator().manual_seed(SEED + 1)
    out = {}
    for key, t in point.items():
        scale = 0.3 * max(float(t.detach().abs().mean()), 0.05)
        out[key] = t.detach() + scale * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)
    return out


def judge(collection, model, x, y, points, *, loss="sse", eps=1e-6, data="toy", plan=None, batch=False):
    """The checks of ``collection`` (from :func:`collect`); never calls the student's function.

    ``model`` is the reference: any module with the ``MyNet`` interface that computes the same
    function with the same parameters (the student's own model in ``main_test``; a
    :class:`ReferenceNet` in a grader). ``x``, ``y``, ``points``, ``loss`` and ``plan`` (default
    ``call_plan(len(x), len(points), batch)``) are those given to :func:`collect`: the judge decides
    which question each record answers (record i answers call i of the plan; nothing in a record
    says so), and a collection that does not fit the plan raises :class:`InvalidRecords`.
    Returns a :class:`BackpropTestResult` without the square check.
    """
    dtype = _dtype(model)
    tol_ag, tol_fd = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    plan = call_plan(x.shape[0], len(points), batch) if plan is None else plan
    ctx = _Context(model, x, y, points, loss, tol_ag, tol_fd, _step(eps, dtype))
    calls = _records(collection, plan, list(_stored_keys(model)))
    result = BackpropTestResult(_short_text(collection.get("model"), 80) or _describe(model), data, loss)
    result.notes = _notes(plan, x.shape[0], len(points), dtype, ctx)
    saved = _save_parameters(model)
    try:
        verdicts = _evaluate(calls, ctx)
        result.checks = _build_checks(collection, verdicts, ctx, plan)
    finally:
        _restore_parameters(model, saved)
    result.errors = _worst_errors([v for v in verdicts if not v.stale], ctx)
    result.comparison = _comparison([v for v in verdicts if not v.stale])
    return result


class InvalidRecords(ValueError):
    """A collection whose records do not answer the calls that were made (count, types)."""


def _records(collection, plan, keys) -> list:
    """The records of ``collection`` read as answers to ``plan``'s calls: record i gets call i's label,
    point, samples and staleness (the plan's, never the record's); every field type-checked; no record
    after one that timed out. Raises :class:`InvalidRecords`."""
    calls = collection.get("calls") if isinstance(collection, dict) else None
    if not isinstance(calls, list) or len(calls) > len(plan):
        raise InvalidRecords(f"the record of the calls is not a list of at most {len(plan)} calls")
    if len(calls) < len(plan) and not (calls and isinstance(calls[-1], dict) and calls[-1].get("timed_out") is True):
        raise InvalidRecords(f"{len(calls)} records for {len(plan)} calls (and the last did not time out)")
    return [_record(rec, call, keys) for rec, call in zip(calls, plan)]


def _record(rec, call, keys) -> dict:
    if not isinstance(rec, dict):
        raise InvalidRecords(f"the record of {call['label']} is not a dict")
    out = {"label": call["label"], "point": call["point"], "samples": list(call["samples"]),
           "batch_size": len(call["samples"]), "stale": call["stale"]}
    for name in ("timed_out", "exited", "autograd_used"):
        out[name] = _typed(rec.get(name, False), bool, name, call)
    out["error"] = None if rec.get("error") is None else _short_text(_typed(rec["error"], str, "error", call))
    count = _typed(rec.get("forward_evaluations", 0), int, "forward_evaluations", call)
    out["forward_evaluations"] = max(count, 0) if not isinstance(count, bool) else 1
    for name in ("autograd_how", *_CHANGE_FIELDS):
        out[name] = [_short_text(_typed(m, str, name, call)) for m in _typed(rec.get(name, []), list, name, call)[:20]]
    stored = _typed(rec.get("stored", {}), dict, "stored", call)
    out["stored"] = {key: _stored_entry(stored.get(key), key, call) for key in keys}
    return out


def _stored_entry(entry, key, call) -> dict:
    if entry is None:
        return {"problem": "missing", "message": None}
    entry = _typed(entry, dict, key, call)
    out = {"tensor": _typed(entry.get("tensor"), (torch.Tensor, type(None)), key, call),
           "from_grad": _typed(entry.get("from_grad", False), bool, key, call)}
    for name in ("problem", "message", "shares_memory_with"):
        value = entry.get(name)
        out[name] = None if value is None else _short_text(_typed(value, str, f"{key}.{name}", call), 300)
    return out


def _typed(value, kind, name, call):
    if not isinstance(value, kind):
        raise InvalidRecords(f"the record of {call['label']} has an invalid {name} ({type(value).__name__})")
    return value


def _short_text(value, limit=1000):
    if not isinstance(value, str):
        return None
    return value if len(value) <= limit else value[:limit] + " [...]"


def collect_square(backprop_fn, model, *, loss="sse", timeout=DEFAULT_TIMEOUT):
    """:func:`collect` on the square net built from ``model``'s class (:func:`square_net`).

    When the net cannot be built, the collection has no calls and ``"error"`` says why.
    """
    dtype = _dtype(model) if isinstance(model, nn.Module) else torch.get_default_dtype()
    _, x, y, points = square_setup(loss, dtype)
    try:
        net = square_net(model, loss)
    except ValueError as exc:
        return {"model": f"{_class_name(model)}({list(SQUARE_LAYERS)})", "loss": loss, "dtype": str(dtype),
                "error": str(exc), "skipped": isinstance(exc, CannotBuild), "stopped": None,
                "static_findings": [], "calls": []}
    return collect(backprop_fn, net, x, y, points, loss=loss, timeout=timeout)


def judge_square(collection, *, loss="sse", eps=1e-6):
    """The square check (one :class:`Check`) from :func:`collect_square`'s collection."""
    name = CHECKS["square"]
    dtype = {"torch.float32": torch.float32}.get(collection.get("dtype"), torch.float64)
    reference, x, y, points = square_setup(loss, dtype)
    what = f"{collection.get('model')} with {', '.join(reference.activations)}"
    if collection.get("error"):
        skipped = collection.get("skipped") is True
        return Check(name, False, f"{'skipped' if skipped else 'not run'}: {collection['error']}", id="square",
                     skipped=skipped)
    result = judge(collection, reference, x, y, points, loss=loss, eps=eps)
    if result.passed:
        return Check(name, True, f"{what}: {len(collection['calls'])} calls, every check passed", id="square")
    first, *others = result.failed
    return Check(name, False, f"{what}: {first.name}: {first.message}",
                 [f"{c.name}: {c.message}" for c in others] + first.details, id="square")


def toy_data(model, n=N_TOY, loss="sse", dtype=torch.float64):
    """The course's toy data for ``model`` (or its ``n_l``): x_i = i + noise, y_ij = (-1)^j i.

    Targets are binary ((i + j) mod 2) for ``"bce"`` and ``"logistic"``. Seeded, own generator.
    """
    n_l = list(getattr(model, "n_l", model))
    gen = torch.Generator().manual_seed(SEED)
    x = torch.arange(n, dtype=dtype)[:, None] + torch.randn(n, n_l[0], generator=gen, dtype=dtype)
    i, j = torch.arange(n)[:, None], torch.arange(n_l[-1])[None, :]
    y = ((i + j) % 2).to(dtype) if loss in ("bce", "logistic") else ((-1.0) ** j * i).to(dtype)
    return x, y


def data_folder(root=None) -> Path:
    """The data folder: ``root``, else ``$DATA_DIR``, else ``data/`` next to this file."""
    if root is not None:
        return Path(root)
    value = os.environ.get("DATA_DIR", "").strip()
    return Path(value).expanduser() if value else Path(__file__).resolve().parent / "data"


def load_mnist_sample(n=N_MNIST, dtype=torch.float64, root=None):
    """The first ``n`` MNIST test images (24x24 centre crop, normalised) and one-hot targets.

    Read from ``data_folder(root)``: torchvision's MNIST folder when complete, else the two test
    files ``MNIST/raw/t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]`` (with
    torchvision's idx readers), else torchvision's download (unless ``INF265_OFFLINE=1``).
    """
    images, labels = _mnist_test(str(data_folder(root).resolve()))
    crop = images[:n, 2:26, 2:26].to(dtype)                  # CenterCrop(24) of 28x28
    x = ((crop / 255 - MNIST_MEAN) / MNIST_STD)[:, None]      # (n, 1, 24, 24)
    y = nn.functional.one_hot(labels[:n].long(), 10).to(dtype)
    return x, y


def parameter_points(model, x, y, loss="sse", n_points=3, lr=0.01):
    """The parameter states the checks run at: ``[{"fc[1].weight": tensor, ...}, ...]``.

    The first is the model's own; each next one is one gradient step (``lr`` times autograd's
    gradient of the mean loss over the samples) from the previous. The model is left unchanged.
    """
    named, points = _params(model), []
    scale = x.shape[0] if LOSSES[loss][1] == "sum" else 1
    original = _save_parameters(model)
    try:
        for i in range(n_points):
            points.append({key: p.detach().clone() for key, *_, p in named})
            if i + 1 < n_points:
                with torch.enable_grad():
                    grads = torch.autograd.grad(_loss_value(loss, model(x), y) / scale, [p for *_, p in named])
                with torch.no_grad():  # (torch.optim would import torch._dynamo: 3 s)
                    for (*_, p), g in zip(named, grads):
                        p -= lr * g
    finally:
        _restore_parameters(model, original)
    return points


def square_setup(loss="sse", dtype=torch.float64):
    """The square check's reference net, data and points; the same on both sides of a grader.

    ``ReferenceNet([3, 3, 3, 2])`` with sigmoid, tanh and identity (sigmoid for ``"bce"``),
    seeded parameters, 8 standard-normal samples (targets in [0, 1] for bce/logistic), 2 points.
    """
    acts = ["sigmoid", "tanh", "sigmoid" if loss == "bce" else "identity"]
    gen = torch.Generator().manual_seed(SEED)
    with torch.random.fork_rng(devices=[]):
        net = ReferenceNet(SQUARE_LAYERS, acts).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=gen, dtype=dtype))
    x = torch.randn(N_SQUARE, SQUARE_LAYERS[0], generator=gen, dtype=dtype)
    shape = (N_SQUARE, SQUARE_LAYERS[-1])
    y = torch.rand(shape, generator=gen, dtype=dtype) if loss in ("bce", "logistic") else \
        torch.randn(shape, generator=gen, dtype=dtype)
    return net, x, y, parameter_points(net, x, y, loss, 2)


def square_net(model, loss="sse"):
    """``MyNet([3, 3, 3, 2])`` built from ``model``'s class (or ``model`` if it is a class), with
    the activations and parameters of :func:`square_setup`. ``ValueError`` when impossible."""
    cls = model if isinstance(model, type) else type(model)
    dtype = _dtype(model) if isinstance(model, nn.Module) else torch.get_default_dtype()
    reference, x, *_ = square_setup(loss, dtype)
    call = f"{cls.__name__}({list(SQUARE_LAYERS)})"
    try:
        with torch.random.fork_rng(devices=[]):
            net = cls(list(SQUARE_LAYERS)).to(dtype)
    except Exception as exc:
        raise CannotBuild(f"your {call} cannot be built the way the course builds MyNet(n_l) "
                          f"({type(exc).__name__}: {exc}); it takes other arguments than the course's, so this "
                          "extra check was skipped") from None
    try:
        for l in range(1, reference.L + 1):
            net.f[l], net.df[l] = reference.f[l], reference.df[l]
        _load_point(net, {key: p.detach() for key, *_, p in _params(reference)})
        with torch.no_grad():
            same = torch.allclose(net(x), reference(x), rtol=1e-5, atol=1e-7)
    except Exception as exc:
        raise ValueError(f"could not build {call} from your class with one activation per layer (set in "
                         f"model.f[l] / model.df[l]): {type(exc).__name__}: {exc}") from None
    if not same:
        raise ValueError(f"{call}'s forward does not compute a[l] = f[l](fc[l](a[l-1])) with the activations "
                         "set in model.f[l]: the forward pass must use model.f")
    return net


class CannotBuild(ValueError):
    """The student's class cannot be built as the course's MyNet(n_l): a check that needs it is skipped."""


def inspect_code(fn, model=None) -> list:
    """Autograd, forward-mode AD, graph or harness names in ``fn``'s code and the Python functions
    it refers to (globals, closures; not torch's). A list of findings, e.g.
    ``"autograd (.backward()): `backward` at line 3 of bp"``; methods of ``model``'s class do not
    count as autograd names."""
    own = set(dir(type(model))) - set(dir(nn.Module)) if model is not None else set()
    findings, seen, todo = [], set(), [fn]
    while todo and len(seen) < 100:
        f = _python_function(todo.pop())
        if f is None or f.__code__ in seen:
            continue
        seen.add(f.__code__)
        for cell in f.__closure__ or ():
            with contextlib.suppress(ValueError):
                todo.append(cell.cell_contents)
        for code in _code_objects(f.__code__):
            for finding in _scan_code(code, f.__globals__, own, todo):
                if finding not in findings:
                    findings.append(finding)
    return findings


class ReferenceNet(nn.Module):
    """The course's ``MyNet`` with a chosen activation per layer (names of :data:`ACTIVATIONS`).

    The harness's own reference model (square check; a grader's trusted side).
    """

    def __init__(self, n_l=(2, 3, 2), activations="tanh"):
        super().__init__()
        self.L, self.n_l = len(n_l) - 1, list(n_l)
        acts = [activations] * self.L if isinstance(activations, str) else list(activations)
        self.activations = acts
        self.f = {l: ACTIVATIONS[acts[l - 1]][0] for l in range(1, self.L + 1)}
        self.df = {l: ACTIVATIONS[acts[l - 1]][1] for l in range(1, self.L + 1)}
        self.z, self.a, self.dL_dw, self.dL_db = {}, {}, {}, {}
        self.fc = nn.ModuleDict({str(l): nn.Linear(n_l[l - 1], n_l[l]) for l in range(1, self.L + 1)})

    def forward(self, x):
        a = self.a[0] = torch.flatten(x, 1)
        for l in range(1, self.L + 1):
            self.z[l] = self.fc[str(l)](a)
            a = self.a[l] = self.f[l](self.z[l])
        return a


def relative_error(g: torch.Tensor, r: torch.Tensor, floor: float = 0.0) -> float:
    """``|g - r| / max(|g| + |r|, floor)`` in float64 (Frobenius norms); 0 when both are zero.

    ``floor`` is the noise level of the reference: gradients smaller than it (saturated units)
    are compared in absolute terms.
    """
    g, r = g.detach().to(torch.float64), r.detach().to(torch.float64)
    den = max((g.norm() + r.norm()).item(), floor)
    return 0.0 if den == 0 else (g - r).norm().item() / den


@dataclass
class Check:
    """One check of the report (``id``: a key of :data:`CHECKS`)."""

    name: str
    passed: bool
    message: str
    details: list = field(default_factory=list)
    id: str = ""
    #: the harness could not set it up (not the function's fault): neither passed nor failed
    skipped: bool = False

    def line(self) -> str:
        return f" {'SKIPPED' if self.skipped else 'PASSED' if self.passed else 'FAILED'}  {self.name}: {self.message}"


@dataclass
class BackpropTestResult:
    """What ``main_test`` found: truthy when every check passed."""

    model: str
    data: str
    loss: str
    checks: list = field(default_factory=list)
    #: worst relative error per parameter, e.g. errors["fc[1].weight"]["autograd"]
    errors: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)         # header lines of the report
    comparison: dict = field(default_factory=dict)    # verbose: {"label", "rows": {key: (ours, autograd)}}

    @property
    def passed(self) -> bool:
        return all(c.passed or c.skipped for c in self.checks)

    @property
    def n_passed(self) -> int:
        return sum(c.passed for c in self.checks)

    @property
    def run(self) -> list:
        return [c for c in self.checks if not c.skipped]

    @property
    def failed(self) -> list:
        return [c for c in self.checks if not (c.passed or c.skipped)]

    def __bool__(self) -> bool:
        return self.passed

    def __iter__(self):
        return iter(self.checks)

    def summary(self) -> str:
        n, total = self.n_passed, len(self.run)
        if self.passed:
            return f" {n} / {total}: ALL TESTS PASSED :)"
        return f" {n} / {total}: SOME TESTS FAILED, see the FAILED lines above (verbose=True shows the gradients)"

    def failure_message(self) -> str:
        lines = [f"backpropagation failed {len(self.failed)} of {len(self.run)} checks "
                 f"({self.model}, {self.data} data, loss '{self.loss}'):"]
        for c in self.failed:
            lines.append(f"- {c.name}: {c.message}")
            lines.extend(f"    {d}" for d in c.details[:6])
        return "\n".join(lines)


def _validate_eps(eps):
    low, high = EPS_RANGE
    ok = isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and low <= eps <= high
    if not ok:
        raise ValueError(f"eps must be a finite step between {low:g} and {high:g} for centred finite differences "
                         f"(got {eps!r}): smaller steps drown in rounding, larger ones in curvature; the course "
                         "uses 1e-6")



# ============================================================================================
# collect: one guarded call
# ============================================================================================
def _guarded_call(fn, model, x, y, loss, timeout, label, forward_point=None) -> dict:
    """Forward (at ``forward_point`` if given, then the model's parameters put back), then
    ``fn(model, y_true, y_pred)`` under guard; what it did, as a record."""
    record = {"label": label, "error": None, "timed_out": False, "exited": False, "autograd_used": False,
              "autograd_how": [], "forward_evaluations": 0, "changed_parameters": [], "changed_grads": [],
              "changed_inputs": [], "changed_attributes": [], "stored": {}}
    held = {key: p.detach().clone() for key, *_, p in _params(model)} if forward_point is not None else None
    if held:
        _load_point(model, forward_point)
    given = _forward(model, x)
    if held:
        _load_point(model, held)
    before = _Snapshot(model)
    given["y_true"] = y_true = y.clone()
    inputs = {name: (t, t.clone()) for name, t in given.items()}
    sentinels = _fill_stores(model)
    kwargs = {} if loss == "sse" else {"loss": loss}
    default_dtype = torch.get_default_dtype()
    guard = _Guard(type(model))
    _run(fn, (model, y_true, given["y_pred"]), kwargs, timeout, record, guard)
    torch.set_default_dtype(default_dtype)
    record.update(autograd_used=bool(guard.autograd), autograd_how=list(dict.fromkeys(guard.autograd)),
                  forward_evaluations=guard.forwards)
    record["changed_attributes"] = before.restore_attributes(model)
    record["changed_parameters"], record["changed_grads"] = before.restore_parameters()
    record["changed_inputs"] = [f"{name} was changed in place" for name, (t, copy) in inputs.items()
                                if not _same(t, copy)]  # changed and put back (a transpose undone) is no change
    record["stored"] = _read_stores(model, before, sentinels)
    return record


def _run(fn, args, kwargs, timeout, record, guard):
    """Call the student's function under ``guard`` (inside the time limit, whose watchdog thread starts
    before the guard refuses threads); its errors, time limit and exit go into ``record``."""
    try:
        with _TimeLimit(timeout), guard:
            fn(*args, **kwargs)
    except _Timeout:
        record.update(timed_out=True, error=f"TimeoutError: did not return within the time limit of {timeout:g} s")
    except SystemExit as exc:
        record.update(exited=True, error=f"SystemExit: it called sys.exit() or exit() (code {exc.code!r})")
    except _AutogradBlocked:
        pass  # the guard has recorded it
    except Exception as exc:  # reported as a failed check, never raised from the harness
        record["error"] = f"{type(exc).__name__}: {exc}"


def _forward(model, x) -> dict:
    """A forward pass without graph; the tensors the student's function is given, by name."""
    with torch.no_grad():
        y_pred = model(x.clone())
    given, seen = {"y_pred": y_pred}, {id(y_pred)}
    for store in ("a", "z"):
        values = getattr(model, store, None)
        for l, t in (values.items() if isinstance(values, dict) else ()):
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                given[f"model.{store}[{l}]"] = t
    return given


def _fill_stores(model) -> dict:
    """Every dL_dw[l] / dL_db[l] set to a tensor of its parameter's shape full of :data:`STORE_SENTINEL`
    (a dict store is created if missing): as in the course's harness, which never empties them, a
    gradient added with ``+=`` or a layer left unstored shows. ``{(store, l): the sentinel}``."""
    sentinels = {}
    for key, l, kind, store_name, p in _params(model):
        store = getattr(model, store_name, None)
        if store is None:
            with contextlib.suppress(Exception):
                setattr(model, store_name, {})
                store = getattr(model, store_name)
        if isinstance(store, dict):
            sentinels[store_name, l] = store[l] = torch.full_like(p.detach(), STORE_SENTINEL)
    return sentinels


class _Snapshot:
    """The model before a call: watched attributes, parameters (value, version), .grad sentinels.

    ``.grad`` gets a NaN with a payload: a stored gradient holding it was copied from ``.grad``.
    """

    WATCHED = ("L", "n_l", "fc", "f", "df")

    def __init__(self, model):
        self.params = _params(model)
        self.layers = {key: model.fc[str(l)] for key, l, *_ in self.params}
        self.values = {key: p.detach().clone() for key, *_, p in self.params}
        self.versions = {key: p._version for key, *_, p in self.params}
        self.requires = {key: p.requires_grad for key, *_, p in self.params}
        self.sentinels = {key: _grad_sentinel(p) for key, *_, p in self.params}
        for key, *_, p in self.params:
            p.grad = self.sentinels[key]
        self.sentinel_versions = {key: s._version for key, s in self.sentinels.items()}
        self.attributes = {}
        for name in self.WATCHED:
            value = getattr(model, name, _ABSENT)
            items = dict(value.items()) if isinstance(value, (dict, nn.ModuleDict)) else \
                list(value) if isinstance(value, list) else None
            self.attributes[name] = (value, items)

    def restore_attributes(self, model) -> list:
        changes = []
        for name, (value, items) in self.attributes.items():
            now = getattr(model, name, _ABSENT)
            if now is not value and not (isinstance(value, int) and type(now) is type(value) and now == value):
                changes.append(f"model.{name} was changed ({value!r} -> {now!r})" if name == "L" else
                               f"model.{name} was replaced")
                if value is not _ABSENT:
                    setattr(model, name, value)
            if items is not None and _items_changed(value, items):
                changes.append(f"the entries of model.{name} were changed")
                _put_items(value, items)
        return [f"{c} (the harness restored it)" for c in changes]

    def restore_parameters(self):
        """(parameter changes, .grad changes); both restored, .grad emptied."""
        params, grads = [], []
        for key, l, kind, _, p in self.params:
            layer = self.layers[key]
            if getattr(layer, kind) is not p:
                params.append(f"{key} was replaced by a new tensor")
                setattr(layer, kind, p)
            params.extend(_parameter_change(key, p, self.values[key], self.versions[key], self.requires[key]))
            s = self.sentinels[key]
            mask = _grad_nan_mask(s)
            if p.grad is not s or s._version != self.sentinel_versions[key] or (mask is not None and not mask.all()):
                grads.append(f"{key}.grad was changed")
            with torch.no_grad():
                p.copy_(self.values[key])
            p.requires_grad_(self.requires[key])
            p.grad = None
        return params, grads


def _parameter_change(key, p, value, version, requires) -> list:
    out = []
    if not _same(p.detach(), value):
        delta = (p.detach().to(torch.float64) - value.to(torch.float64)).abs().max().item()
        out.append(f"{key} was modified (largest change {delta:.3g})")
    elif p._version != version:
        out.append(f"{key} was changed in place and put back (its version counter moved: a parameter "
                   "was perturbed, as numerical differentiation does)")
    if p.requires_grad != requires:
        out.append(f"{key}.requires_grad was changed to {p.requires_grad}")
    return out


def _items_changed(container, items) -> bool:
    now = dict(container.items()) if isinstance(items, dict) else list(container)
    if isinstance(items, list):
        return now != items
    return now.keys() != items.keys() or any(now[k] is not v for k, v in items.items())


def _put_items(container, items):
    if isinstance(items, list):
        container[:] = items
    else:
        container.clear()
        container.update(items)


def _read_stores(model, before: _Snapshot, sentinels: dict) -> dict:
    """What the function stored in dL_dw / dL_db, by parameter: a copy or the problem."""
    stored, seen = {}, [(f"{key}.grad", s) for key, s in before.sentinels.items()]
    seen += [(key, p) for key, *_, p in before.params]
    for key, l, kind, store, p in before.params:
        entry = {"tensor": None, "problem": None, "message": None, "shares_memory_with": None, "from_grad": False}
        value, problem = _fetch(model, store, l)
        if not problem and value is sentinels.get((store, l)) and bool((value == STORE_SENTINEL).all()):
            problem = _unstored(model, store, l)
        if problem:
            entry.update(problem=problem[0], message=problem[1])
        elif not isinstance(value, torch.Tensor):
            entry.update(problem="type", message=f"model.{store}[{l}] is a {type(value).__name__}, not a torch.Tensor")
        else:
            shared = next((name for name, t in seen if _overlap(value, t)), None)
            mask = _grad_nan_mask(value)
            from_grad = bool(mask is not None and mask.any()) or bool(shared and shared.endswith(".grad"))
            entry.update(tensor=value.detach().clone(), shares_memory_with=shared, from_grad=from_grad)
            seen.append((f"model.{store}[{l}]", value))
        stored[key] = entry
    return stored


def _unstored(model, store_name, l):
    """(problem, message) of a store entry that still holds the sentinel the harness put there."""
    store = getattr(model, store_name)
    if str(l) in store:
        return "string keys", (f"model.{store_name} is keyed by strings ('{l}'); key it by the int layer "
                               f"number {l}")
    return "missing", (f"model.{store_name}[{l}] was not stored in this call (it still holds what was there "
                       "before: the course's harness never empties the stores, so every layer must be stored "
                       "by every call)")


def _fetch(model, store_name, l):
    """(value, None) or (None, (problem, message))."""
    store = getattr(model, store_name, None)
    if store is None:
        return None, ("missing", f"model.{store_name} does not exist")
    try:
        value = store[l]
    except (KeyError, IndexError, TypeError):
        if isinstance(store, dict) and str(l) in store:
            return None, ("string keys", f"model.{store_name} is keyed by strings ('{l}'); key it by the int "
                          f"layer number {l}")
        return None, ("missing", f"model.{store_name}[{l}] was not stored")
    if value is None:
        return None, ("missing", f"model.{store_name}[{l}] is None: no gradient stored for layer {l}")
    return value, None


def _grad_sentinel(p):
    s = torch.full_like(p, float("nan"))
    if p.dtype in _GRAD_NAN:
        int_type, bits = _GRAD_NAN[p.dtype]
        s.view(int_type).fill_(bits)
    return s


def _grad_nan_mask(t):
    """Entries of ``t`` holding the .grad sentinel's NaN (None for dtypes without one)."""
    if t.dtype not in _GRAD_NAN:
        return None
    int_type, bits = _GRAD_NAN[t.dtype]
    return t.detach().view(int_type) == bits


def _overlap(a, b) -> bool:
    """Do two tensors share memory (overlapping byte ranges of the same storage)?"""
    if not a.numel() or not b.numel() or a.device != b.device:
        return False

    def extent(t):
        start = t.data_ptr()
        return start, start + (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))) * t.element_size()
    (a0, a1), (b0, b1) = extent(a), extent(b)
    return a0 < b1 and b0 < a1


def _same(a, b) -> bool:
    """Bitwise equal values (NaN equals NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all()) if a.is_floating_point() else torch.equal(a, b)


# ============================================================================================
# collect: the guard (autograd blocked, forwards counted, time limit)
# ============================================================================================
class _AutogradBlocked(RuntimeError):
    pass


class _Guard:
    """While the student's function runs: grad mode off; autograd's engine, new engines,
    forward-mode AD and new threads refused (grad mode is per thread); autograd graphs and forwards
    of the model or its layers counted. Threads that already run are left to the stale check.

    The stand-in engine keeps no reference to the real one (nothing to revive).
    """

    def __init__(self, model_class):
        self.model_class, self.autograd, self.forwards = model_class, [], 0

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(torch.no_grad())
        self._stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._packed, _unpacked))
        self._stack.enter_context(_patched(self._patches()))
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)

    def _patches(self):
        import torch._functorch.predispatch as predispatch
        from torch.autograd import variable
        engine = self._refuse("called autograd's backward engine (.backward() or torch.autograd.grad)")
        new_engine = self._refuse("created a new autograd engine (torch._C._ImperativeEngine)")
        dual = self._refuse("used forward-mode AD (torch.func.jvp / jacfwd or torch.autograd.forward_ad)")
        thread = self._refuse("started a thread (no-grad mode and the guard hold in the calling thread; "
                              "backpropagation needs no thread)")
        import _thread
        return [(variable.Variable, "_execution_engine", _blocked_engine(engine)),
                (threading.Thread, "start", thread), (threading, "_start_new_thread", thread),
                (_thread, "start_new_thread", thread), (_thread, "start_new", thread),
                (variable, "ImperativeEngine", new_engine), (torch._C, "_ImperativeEngine", new_engine),
                (torch._C, "_enter_dual_level", dual), (predispatch, "_enter_dual_level", dual),
                (self.model_class, "forward", self._counted(self.model_class.forward)),
                (nn.Linear, "forward", self._counted(nn.Linear.forward))]

    def _refuse(self, what):
        seen = self.autograd

        def refuse(*args, **kwargs):
            seen.append(what)
            raise _AutogradBlocked(f"autograd is blocked while backpropagation runs ({what}): compute the "
                                   "gradients by hand")
        return refuse

    def _counted(self, forward):
        guard = self

        @functools.wraps(forward)
        def counted(module, *args, **kwargs):
            guard.forwards += 1
            return forward(module, *args, **kwargs)
        return counted

    def _packed(self, tensor):
        self.autograd.append("built an autograd graph (a tensor that requires grad, with grad mode on)")
        return tensor


def _unpacked(tensor):
    return tensor


def _blocked_engine(refuse):
    """A stand-in for ``Variable._execution_engine``: every attribute refuses."""
    class BlockedEngine:
        def __getattr__(self, name):
            refuse()
    return BlockedEngine()


@contextlib.contextmanager
def _patched(patches):
    """Set ``obj.name = value`` for each patch; put everything back afterwards."""
    saved = []
    try:
        for obj, name, value in patches:
            old = vars(obj).get(name, _ABSENT) if isinstance(obj, type) else getattr(obj, name, _ABSENT)
            saved.append((obj, name, old))
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, old in reversed(saved):
            if old is _ABSENT:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


class _Timeout(BaseException):
    """The time limit of one call (a BaseException: ``except Exception`` does not swallow it)."""


class _TimeLimit:
    """Raise :class:`_Timeout` in the student's code after ``seconds``, then every 50 ms while it
    keeps running (a swallowed one comes back); never inside the harness's own frames.

    SIGALRM in the main thread (the previous handler and timer are restored); in other threads an
    asynchronous exception from a watchdog thread.
    """

    def __init__(self, seconds):
        self.seconds, self.old_handler, self.watchdog = seconds, None, None

    def __enter__(self):
        if not self.seconds:
            return self
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            self.old_handler = signal.signal(signal.SIGALRM, self._on_alarm) or signal.SIG_DFL
            self.old_timer = signal.setitimer(signal.ITIMER_REAL, self.seconds, 0.05)
            self.started = _clock()
        else:
            self._start_watchdog(threading.get_ident())
        return self

    def __exit__(self, *exc):
        if self.old_handler is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old_handler)
            remaining, interval = self.old_timer
            if remaining > 0:  # someone else's timer (e.g. pytest-timeout): resumed, minus our time
                signal.setitimer(signal.ITIMER_REAL, max(remaining - (_clock() - self.started), 1e-3), interval)
        elif self.watchdog is not None:
            self.stop.set()
            self.watchdog.join()
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.target), None)  # drop a pending one
        return False

    @staticmethod
    def _in_student_code(frame) -> bool:
        return frame is not None and frame.f_globals is not globals()

    def _on_alarm(self, signum, frame):
        if self._in_student_code(frame):
            raise _Timeout()

    def _start_watchdog(self, target):
        self.target, self.stop = target, threading.Event()

        def watch():
            if self.stop.wait(self.seconds):
                return
            while not self.stop.is_set():
                if self._in_student_code(sys._current_frames().get(target)):
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(_Timeout))
                self.stop.wait(0.05)
        self.watchdog = threading.Thread(target=watch, daemon=True)
        self.watchdog.start()


def _clock():
    import time
    return time.monotonic()


# ============================================================================================
# collect: a static look at the function's code (second line behind the guard)
# ============================================================================================
_FORBIDDEN_NAMES = {
    "backward": "autograd (.backward())", "run_backward": "autograd's engine (run_backward)",
    "_execution_engine": "autograd's engine (_execution_engine)", "_engine": "autograd's engine (_engine)",
    "_ImperativeEngine": "autograd's engine (_ImperativeEngine)", "_EngineBase": "autograd's engine (_EngineBase)",
    "grad_fn": "the autograd graph (.grad_fn)", "next_functions": "the autograd graph (.next_functions)",
    "jvp": "forward-mode AD (jvp)", "jacfwd": "forward-mode AD (jacfwd)", "forward_ad": "forward-mode AD",
    "make_dual": "forward-mode AD (make_dual)", "dual_level": "forward-mode AD (dual_level)",
    "vjp": "autograd (vjp)", "jacrev": "autograd (jacrev)", "jacobian": "autograd (jacobian)",
    "hessian": "autograd (hessian)", "functional_call": "an evaluation of the model (functional_call)",
    "complex128": "complex numbers (complex-step differentiation)", "complex64": "complex numbers "
    "(complex-step differentiation)", "cdouble": "complex numbers (complex-step differentiation)",
    "cfloat": "complex numbers (complex-step differentiation)",
    "_getframe": "the harness's frames (sys._getframe)", "f_back": "the harness's frames (f_back)",
    "f_locals": "the harness's frames (f_locals)", "get_referrers": "the garbage collector (get_referrers)",
    "get_objects": "the garbage collector (get_objects)",
}


#: attribute names that are autograd only on torch's objects (resolved before a finding is made)
_RESOLVED_NAMES = {"backward", "run_backward", "_execution_engine", "_engine", "_ImperativeEngine", "_EngineBase",
                   "jvp", "jacfwd", "forward_ad", "make_dual", "dual_level", "vjp", "jacrev", "jacobian",
                   "hessian", "functional_call"}


def _is_torch(obj) -> bool:
    """Is ``obj`` torch itself, one of its modules, classes or functions?"""
    if obj is _ABSENT:
        return False
    name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None)
    return isinstance(name, str) and (name == "torch" or name.startswith(("torch.", "torch._")))


def _python_function(obj):
    """The Python function behind ``obj`` (itself, a partial's, a bound method's), or None."""
    for attr in ("func", "__func__"):   # functools.partial, bound method
        try:
            obj = getattr(obj, attr, obj)
        except Exception:
            return None
    return obj if isinstance(obj, types.FunctionType) else None


def _code_objects(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _scan_code(code, globals_, own, todo):
    """Findings in one code object. An autograd name read as an attribute (``.backward``, ``.jvp``) is
    a finding only on torch's own objects (``torch.autograd.backward``, ``torch.Tensor.backward``): on
    anything else (a student's Lab-4-style layer with its own ``backward()``, a tensor variable) the
    run-time guard is the evidence."""
    forbidden_objects = _forbidden_objects()
    previous, receiver = None, _ABSENT
    for ins in dis.get_instructions(code):
        what, name = None, ins.argval
        if ins.opname in ("LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR"):
            what = _FORBIDDEN_NAMES.get(name) if name not in own else None
            if name in _RESOLVED_NAMES and not _is_torch(receiver):
                what = None
            if name == "grad" and previous in ("autograd", "func"):
                what = "autograd (torch.autograd.grad / torch.func.grad)"
            previous = name
            receiver = getattr(receiver, name, _ABSENT) if _is_torch(receiver) else _ABSENT
        elif ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            obj = globals_.get(name, _ABSENT)
            what = forbidden_objects.get(id(obj))
            _queue_functions(obj, todo)
            previous = obj.__name__.rsplit(".", 1)[-1] if isinstance(obj, types.ModuleType) else name
            receiver = obj
        elif ins.opname in ("LOAD_FAST", "LOAD_DEREF"):
            previous, receiver = name, _ABSENT
        elif ins.opname == "LOAD_CONST" and isinstance(name, complex):
            what, name = "complex numbers (complex-step differentiation)", repr(name)
        if what:
            line = ins.positions.lineno if ins.positions and ins.positions.lineno else "?"
            yield f"{what}: `{name}` at line {line} of {code.co_name}"


def _queue_functions(obj, todo):
    """User functions referred to (directly or in a dict/list/tuple) are read too."""
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else (obj,)
    for v in list(values)[:50]:
        if isinstance(v, types.FunctionType) and not (v.__module__ or "").startswith("torch"):
            todo.append(v)


@functools.lru_cache(maxsize=1)
def _forbidden_objects() -> dict:
    import torch.autograd.forward_ad as forward_ad
    import torch.autograd.functional as functional
    import torch.func as func
    out = {id(torch.autograd.grad): "autograd (torch.autograd.grad)",
           id(torch.autograd.backward): "autograd (torch.autograd.backward)",
           id(forward_ad): "forward-mode AD (torch.autograd.forward_ad)",
           id(func.functional_call): "an evaluation of the model (functional_call)"}
    for name in ("jvp", "jacfwd", "vjp", "jacrev", "grad", "hessian"):
        kind = "forward-mode AD" if name in ("jvp", "jacfwd") else "autograd"
        out[id(getattr(func, name))] = f"{kind} (torch.func.{name})"
    for name in ("jacobian", "hessian", "jvp", "vjp"):
        out[id(getattr(functional, name))] = f"autograd (torch.autograd.functional.{name})"
    return out


# ============================================================================================
# judge: references, comparisons
# ============================================================================================
@dataclass
class _Context:
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    points: list
    loss: str
    tol_ag: float
    tol_fd: float
    h: float


@dataclass
class _Verdict:
    """One record, judged: the comparable gradients, their problems, references and errors."""

    rec: dict
    grads: dict = field(default_factory=dict)      # key -> float64 gradient that can be compared
    problems: list = field(default_factory=list)   # [(key, why it cannot be compared)]
    refs: dict = field(default_factory=dict)       # key -> autograd's gradient (float64)
    ag: dict = field(default_factory=dict)         # key -> relative error vs autograd
    fd_refs: dict = field(default_factory=dict)    # key -> finite differences
    fd: dict = field(default_factory=dict)         # key -> relative error vs finite differences
    causes: dict = field(default_factory=dict)     # failing keys -> likely cause (cache)

    @property
    def label(self):
        return self.rec.get("label", "?")

    @property
    def batch(self):
        return self.rec.get("batch_size", 1)

    @property
    def stale(self):
        return self.rec.get("stale", False)

    @property
    def by_hand(self):
        """Computed by the function itself: no error, no autograd, no evaluation of the model."""
        return not (self.rec.get("error") or self.rec.get("autograd_used") or self.rec.get("forward_evaluations"))


def _step(eps, dtype):
    _validate_eps(eps)
    return max(eps, 1e-3) if dtype != torch.float64 else eps


def _notes(plan, n, points, dtype, ctx) -> list:
    how = "one at a time and as one batch" if any(len(c["samples"]) > 1 for c in plan) else "one at a time"
    notes = [f"{n} samples, {how}; {points} parameter point{'s' if points != 1 else ''}"]
    if dtype != torch.float64:
        notes.append(f"note: the model is {dtype}; the project uses torch.set_default_dtype(torch.double).")
        notes.append(f"Tolerances loosened to {ctx.tol_ag:.0e} (autograd) and {ctx.tol_fd:.0e} "
                     f"(finite differences, step {ctx.h:g}).")
    return notes


def _evaluate(calls, ctx) -> list:
    verdicts = [_Verdict(rec) for rec in calls]
    for p, point in enumerate(ctx.points):
        here = [v for v in verdicts if v.rec["point"] == p]
        if not here:
            continue
        _load_point(ctx.model, point)
        cache = {}
        for v in here:
            samples = (tuple(v.rec["samples"]), v.stale)
            if samples not in cache:
                cache[samples] = _stale_references(ctx, list(samples[0]), stale_point(point)) if v.stale \
                    else _references(ctx, list(samples[0]))
            v.refs, floors = cache[samples]
            if v.by_hand:
                v.grads, v.problems = _comparable(v, ctx)
            v.ag = {k: relative_error(g, v.refs[k], floors[k]) for k, g in v.grads.items()}
        if any(v.grads for v in here if not v.stale):
            _compare_with_finite_differences([v for v in here if not v.stale], ctx)
    return verdicts


def _stale_references(ctx, samples, forward_point):
    """Equations (4)-(7) on the a/z stored by a forward pass at ``forward_point`` (θ1), with the
    weights the model holds (θ2): autograd of a net whose values are θ1's and whose derivatives are
    θ2's (each z = stored z + (W a + b) - (W a + b).detach()). No noise floors (same operations)."""
    model = ctx.model
    held = {key: p.detach().clone() for key, *_, p in _params(model)}
    _load_point(model, forward_point)
    with torch.no_grad():
        acts, zs = _layerwise(model, ctx.x[samples])
    _load_point(model, held)
    a = acts[0]
    with torch.enable_grad():
        for l in range(1, model.L + 1):
            linear = model.fc[str(l)](a)
            a = model.f[l](zs[l] + linear - linear.detach())
        grads = torch.autograd.grad(_loss_value(ctx.loss, a, ctx.y[samples]), [p for *_, p in _params(model)])
    refs = {key: g.detach().to(torch.float64) for (key, *_), g in zip(_params(model), grads)}
    return refs, {k: 0.0 for k in refs}


def _references(ctx, samples):
    """Autograd's gradients on ``samples`` and their noise floors.

    With saturated tanh/sigmoid units 1 - tanh(z)^2 cancels: autograd's absolute error is about u
    times the gradient with every f' replaced by 1, which gives the floor.
    """
    model, x, y = ctx.model, ctx.x[samples], ctx.y[samples]
    named = _params(model)
    with torch.enable_grad():
        refs = torch.autograd.grad(_loss_value(ctx.loss, model(x), y), [p for *_, p in named])
    refs = {key: r.detach().to(torch.float64) for (key, *_), r in zip(named, refs)}
    try:
        undamped = _variant_grads(model, x, y, ctx.loss, {l: _NO_DERIVATIVE for l in range(1, model.L + 1)})
    except Exception:  # a model without f / df: plain relative error
        undamped = {}
    unit = torch.finfo(named[0][-1].dtype).eps
    floors = {k: 1e3 * unit * undamped[k].norm().item() / ctx.tol_ag if k in undamped else 0.0 for k in refs}
    return refs, floors


def _comparable(v: _Verdict, ctx):
    """(gradients that can be compared, [(key, why not)]) for one record."""
    grads, problems = {}, []
    stored = v.rec.get("stored") or {}
    for key, l, kind, store, p in _params(ctx.model):
        where = f"model.{store}[{l}]"
        entry = stored.get(key) or {"problem": "missing", "message": f"{where} was not stored"}
        why = _stored_problem(entry, where, key, p, v.refs, v.batch)
        if why:
            problems.append((key, why))
        else:
            grads[key] = entry["tensor"].detach().to(torch.float64)
    return grads, problems


def _stored_problem(entry, where, key, p, refs, batch):
    """Why a stored gradient cannot be compared with its reference, or None."""
    if entry.get("problem"):
        return entry.get("message") or f"{where}: {entry['problem']}"
    g = entry.get("tensor")
    if not isinstance(g, torch.Tensor):
        return f"{where} is a {type(g).__name__}, not a torch.Tensor"
    if entry.get("from_grad"):
        return (f"{where} was copied from {key}.grad: the harness fills .grad with NaN while backpropagation "
                "runs, so the gradient must be computed by hand, not taken from autograd")
    shared = entry.get("shares_memory_with")
    if shared:
        return _sharing_problem(where, shared)
    return (_shape_problem(g, p, key, where, batch, refs) or _dtype_problem(g, p, key, where)
            or _finite_problem(g, where))


def _sharing_problem(where, other):
    if other.startswith("model."):
        return (f"{where} is the same memory as {other}: one buffer for layers of the same shape, so the "
                "later layer overwrites the earlier one; store a new tensor for every layer")
    return f"{where} is the parameter {other} itself, not its gradient"


def _shape_problem(g, p, key, where, batch, refs):
    shape, got = tuple(p.shape), tuple(g.shape)
    if got == shape:
        return None
    msg = f"{where} has shape {got}, expected {shape} (the shape of {key})"
    g64 = g.detach().to(torch.float64) if g.is_floating_point() else None
    match = lambda r: g64 is not None and r.shape == g64.shape and relative_error(g64, r) <= 1e-4  # noqa: E731
    other = next((k for k, r in refs.items() if k != key and match(r)), None)
    if other:
        return msg + f": it holds the gradient of {other}; store layer l's gradients in dL_dw[l] and dL_db[l]"
    if p.dim() == 2 and got == shape[::-1]:
        how = "it is transposed" if match(refs[key].T) else "the transposed shape"
        return msg + f": {how}; dL_dw[l] = Δᵀ A^(l-1) has shape (n_l, n_(l-1))"
    if p.dim() == 1 and len(got) == 2 and got[1] == shape[0]:
        if got[0] == batch and batch > 1:
            return msg + ": one row per sample; the bias gradient sums Δ over the batch: dL_db[l] = Δ.sum(dim=0)"
        return msg + ": an extra dimension; dL_db[l] = Δ.sum(dim=0) has shape (n_l,) (no keepdim)"
    if g.numel() == p.numel():
        return msg + ": same entries, extra or missing dimension (do not keep the batch dimension)"
    return msg


def _dtype_problem(g, p, key, where):
    if g.dtype != p.dtype:
        return (f"{where} has dtype {g.dtype}, expected {p.dtype} (the dtype of {key}); compute with the "
                "model's tensors, do not create float32 tensors")
    if g.device != p.device:
        return f"{where} is on {g.device}, expected {p.device}"
    return None


def _finite_problem(g, where):
    if not g.is_floating_point() or torch.isfinite(g).all():
        return None
    bad = (~torch.isfinite(g)).nonzero()[0].tolist()
    if torch.isnan(g).all():
        return f"{where} is NaN everywhere (a 0/0, or an overflow upstream)"
    return f"{where} contains NaN or inf, first at {bad} (a division by zero or an overflow)"


def _compare_with_finite_differences(verdicts, ctx):
    """Finite differences at this point, reduced to each record's samples, and the errors."""
    fd, noise = _finite_differences(ctx.model, ctx.x, ctx.y, ctx.loss, ctx.h)
    mean = LOSSES[ctx.loss][1] == "mean"
    for v in verdicts:
        idx = v.rec["samples"]
        v.fd_refs = {k: t[idx].mean(0) if mean else t[idx].sum(0) for k, t in fd.items()}
        floors = {k: t[idx].sum().item() / (len(idx) if mean else 1) / ctx.tol_fd for k, t in noise.items()}
        v.fd = {k: relative_error(g, v.fd_refs[k], floors[k]) for k, g in v.grads.items()}


def _worst_errors(verdicts, ctx) -> dict:
    worst = {key: {"autograd": 0.0, "finite_differences": 0.0} for key, *_ in _params(ctx.model)}
    for v in verdicts:
        for k, e in v.ag.items():
            worst[k]["autograd"] = max(worst[k]["autograd"], e)
        for k, e in v.fd.items():
            worst[k]["finite_differences"] = max(worst[k]["finite_differences"], e)
    return worst


def _comparison(verdicts) -> dict:
    """Our gradients next to autograd's for verbose output: the batch record if any, else the first."""
    usable = [v for v in verdicts if v.grads]
    if not usable:
        return {}
    v = max(usable, key=lambda v: v.batch)
    return {"label": v.label, "rows": {k: (v.grads[k], v.refs[k]) for k in v.grads}}


# ============================================================================================
# judge: the checks
# ============================================================================================
def _build_checks(collection, verdicts, ctx, plan) -> list:
    fresh = [v for v in verdicts if not v.stale]
    singles = [v for v in fresh if v.batch == 1]
    batches = [v for v in fresh if v.batch > 1]
    n_entries = sum(p.numel() for *_, p in _params(ctx.model))
    checks = [_check_runs(plan, verdicts), _check_no_autograd(collection, verdicts),
              _check_unchanged(verdicts), _check_stored(verdicts, ctx),
              _check_values("autograd", CHECKS["autograd"], singles, "ag", ctx)]
    if any(len(c["samples"]) > 1 for c in plan):
        name = CHECKS["autograd_batch"].format(n=ctx.x.shape[0])
        checks.append(_check_values("autograd_batch", name, batches, "ag", ctx))
    checks.append(_check_values("finite_differences", CHECKS["finite_differences"], fresh, "fd", ctx,
                                passed=f"centred differences over all {n_entries} parameter entries "
                                       f"(step {ctx.h:g}): relative error below {ctx.tol_fd:.0e}"))
    if any(c["stale"] for c in plan):
        checks.append(_check_stale([v for v in verdicts if v.stale], checks[4], ctx))
    return checks


def _check_stale(verdicts, autograd: Check, ctx) -> Check:
    """The stored activations are used: a/z stored from θ1 while the model holds θ2 (:func:`stale_point`)."""
    name = CHECKS["stored_activations"]
    if not autograd.passed:
        return Check(name, False, "not checked: the gradients are already wrong on the model's own forward pass "
                                  "(see 'matches autograd')", id="stored_activations")
    check = _check_values("stored_activations", name, verdicts, "ag", ctx,
                          passed="with a[l], z[l] stored from other parameters than the model holds, the gradients "
                                 "are equations (4)-(7) on the stored a[l], z[l] with the model's weights")
    if not check.passed and any(v.grads for v in verdicts):
        v = next(v for v in verdicts if v.grads)
        _load_point(ctx.model, ctx.points[v.rec["point"]])
        fresh, _ = _references(ctx, v.rec["samples"])
        if all(relative_error(v.grads[k], fresh[k]) <= _match_tol(ctx) for k in v.grads):
            check.message = (f"given a[l], z[l] stored from other parameters than the model holds ({v.label}), it "
                             "returned the gradients of the model as it is now: it recomputes the forward pass (a "
                             "hand-written forward, autograd or finite differences) instead of using the stored "
                             "model.a[l], model.z[l]. The course's backpropagation uses the a[l], z[l] of the forward "
                             "pass it is given, with the model's weights")
    return check


def _check_runs(plan, verdicts) -> Check:
    name = CHECKS["runs"]
    if not verdicts:
        return Check(name, False, "not run: no call was made", id="runs")
    failed = [v for v in verdicts if v.rec.get("error") and not v.rec.get("autograd_used")]
    if not failed:
        n = len({i for c in plan for i in c["samples"]})
        points = len({c["point"] for c in plan})
        how = "one at a time and as one batch" if any(len(c["samples"]) > 1 for c in plan) else "one at a time"
        return Check(name, True, f"{len(verdicts)} calls ({n} samples {how}, {points} parameter "
                                 f"point{'s' if points != 1 else ''})", id="runs")
    first = failed[0]
    if first.rec.get("timed_out"):
        hint = ("; an endless loop? The remaining calls were skipped (main_test(..., timeout=SECONDS) sets "
                "the limit)")
    elif first.rec.get("exited"):
        hint = "; backpropagation must return, not exit (sys.exit() would stop the notebook or the grader)"
    elif "does not require grad" in first.rec["error"] or "grad_fn" in first.rec["error"]:
        hint = "; y_pred, a[l] and z[l] are given without their autograd graph: compute the gradients by hand"
    elif not any(v.rec.get("error") for v in verdicts if v.batch == 1):
        hint = (f" (it works one sample at a time but not on a batch of {first.batch}: make it vectorised "
                "over the batch dimension)")
    else:
        hint = ""
    error = first.rec["error"]
    what = error.split(": ", 1)[1] if first.rec.get("timed_out") or first.rec.get("exited") else f"raised {error}"
    return Check(name, False, f"{what} ({first.label}){hint}",
                 [f"{v.label}: {v.rec['error']}" for v in failed], id="runs")


def _check_no_autograd(collection, verdicts) -> Check:
    name = CHECKS["no_autograd"]
    used = [v for v in verdicts if v.rec.get("autograd_used")]
    evaluated = [v for v in verdicts if v.rec.get("forward_evaluations")]
    static = collection.get("static_findings")
    static = [_short_text(f, 300) for f in static[:20] if isinstance(f, str)] if isinstance(static, list) else []
    if not (used or evaluated or static):
        return Check(name, True, "given y_pred, a[l], z[l] without their graph, with autograd blocked, it "
                                 "evaluated no forward pass", id="no_autograd")
    parts = []
    if used:
        how = "; ".join(dict.fromkeys(h for v in used for h in v.rec.get("autograd_how") or []))
        parts.append(f"it used autograd: {how or 'autograd'} ({used[0].label})")
    if evaluated:
        parts.append(f"it evaluated the model or its layers {evaluated[0].rec['forward_evaluations']} times "
                     f"({evaluated[0].label}): backpropagation runs without evaluating the model (no forward "
                     "pass, no finite differences, no forward-mode AD); use the a[l], z[l] of the forward pass")
    if static:
        parts.append("its code refers to " + "; ".join(static[:3]))
    message = "; ".join(parts) + ". Compute the gradients by hand from model.a, model.z, model.df and the weights"
    details = [f"{v.label}: " + "; ".join(v.rec.get("autograd_how") or []) for v in used] + static
    return Check(name, False, message, details, id="no_autograd")


_CHANGE_FIELDS = ("changed_parameters", "changed_grads", "changed_inputs", "changed_attributes")


def _check_unchanged(verdicts) -> Check:
    name = CHECKS["unchanged"]
    found = [(v, msg) for v in verdicts for f in _CHANGE_FIELDS for msg in v.rec.get(f) or []]
    if not found:
        return Check(name, True, "every weight and bias bitwise unchanged (values and versions); .grad, y_pred, "
                                 "y_true, a[l], z[l], L, n_l, fc, f, df untouched", id="unchanged")
    v, msg = found[0]
    return Check(name, False, f"{_change_message(msg)} ({v.label})", list(dict.fromkeys(m for _, m in found)),
                 id="unchanged")


def _change_message(msg):
    if msg.startswith("y_pred"):
        return ("y_pred was changed in place: `delta = y_pred` does not copy, so `delta -= y_true` changes "
                "y_pred (and model.a[L]); write delta = y_pred - y_true")
    if msg.startswith(("y_true", "model.a", "model.z")):
        return f"{msg.split(' ')[0]} was changed in place: backpropagation only reads its inputs"
    if "was modified" in msg or "replaced by a new tensor" in msg:
        return (msg + "; backpropagation must only compute dL_dw / dL_db: the parameter update belongs to the "
                "training loop")
    return msg


def _check_stored(verdicts, ctx) -> Check:
    name = CHECKS["stored"]
    problems = [(v, key, why) for v in verdicts for key, why in v.problems]
    if not problems:
        if not any(v.grads for v in verdicts):
            return Check(name, False, "not checked: " + _why_not_compared(verdicts), id="stored")
        return Check(name, True, f"dL_dw[l], dL_db[l] for l = 1..{ctx.model.L}", id="stored")
    details = list(dict.fromkeys(f"{why} ({v.label})" for v, _, why in problems))
    v, key, why = problems[0]
    return Check(name, False, f"{why} ({v.label})", details, id="stored")


def _why_not_compared(verdicts) -> str:
    if all(v.rec.get("error") for v in verdicts):
        return "backpropagation raised an error in every call"
    if not any(v.by_hand for v in verdicts):
        return "the gradients were not computed by hand (autograd or evaluations of the model, see above)"
    return "no gradient was stored with the right shape and dtype"


def _check_values(check_id, name, verdicts, attr, ctx, passed=None) -> Check:
    """Agreement with autograd (``attr="ag"``) or finite differences (``"fd"``)."""
    tol = ctx.tol_ag if attr == "ag" else ctx.tol_fd
    if not any(v.grads for v in verdicts):
        return Check(name, False, "not checked: " + (_why_not_compared(verdicts) if verdicts else "no call"),
                     id=check_id)
    fails = [(v, [k for k, e in getattr(v, attr).items() if e > tol]) for v in verdicts]
    fails = [(v, keys) for v, keys in fails if keys]
    if not fails:
        return Check(name, True, passed or f"relative error below {tol:.0e} for every layer and parameter",
                     id=check_id)
    v, keys = fails[0]
    message = _failure_text(v, keys, attr, tol, ctx) + f"; likely cause: {_cause(v, keys, ctx, attr)}"
    details = [f"{w.label}: " + ", ".join(f"{k} {getattr(w, attr)[k]:.2e}" for k in ks) for w, ks in fails]
    return Check(name, False, message, details, id=check_id)


def _failure_text(v, keys, attr, tol, ctx) -> str:
    errors = getattr(v, attr)
    refs = v.refs if attr == "ag" else v.fd_refs
    reference = "autograd" if attr == "ag" else f"finite differences (step {ctx.h:g})"
    worst = max(keys, key=errors.get)
    index, ours, theirs = _worst_entry(v.grads[worst], refs[worst])
    text = (f"{worst} (layer {_layer(worst)} {_kind(worst)}) is wrong: relative error {errors[worst]:.2e} > "
            f"{tol:.0e} ({v.label}); worst entry {worst}{index}: ours {ours:.6g} vs {reference} {theirs:.6g}")
    others = [k for k in keys if k != worst]
    if others:
        text += "; also wrong: " + ", ".join(f"{k} ({errors[k]:.2e})" for k in others)
    return text


def _worst_entry(g, r):
    diff = (g - r).abs().flatten()
    i = int(diff.argmax()) if diff.numel() else 0
    index = list(torch.unravel_index(torch.tensor(i), g.shape)) if g.dim() else []
    return [int(j) for j in index], g.flatten()[i].item(), r.flatten()[i].item()


def _layer(key) -> int:
    return int(key[key.index("[") + 1:key.index("]")])


def _kind(key) -> str:
    return key.rsplit(".", 1)[-1]


def _cause(v, keys, ctx, attr) -> str:
    cache_key = frozenset(keys)
    if cache_key not in v.causes:
        _load_point(ctx.model, ctx.points[v.rec["point"]])
        found = _diagnose(v, [k for k in keys if k in v.grads], ctx)
        if not found and attr == "fd" and all(e <= ctx.tol_ag for e in v.ag.values()):
            found = (f"the gradients agree with autograd but not with finite differences: the step {ctx.h:g} may "
                     "be too large, or the model has kinks (relu at 0)")
        v.causes[cache_key] = found or "not recognised; compare the gradients with autograd's (verbose=True)"
    return v.causes[cache_key]


# ============================================================================================
# judge: finite differences
# ============================================================================================
def _finite_differences(model, x, y, loss, h):
    """Centred differences of every per-sample loss with respect to every parameter entry.

    Returns ``({key: (n_samples, *param.shape)}, {key: (n_samples,) error level})`` in float64.
    Each entry's difference is (L(θ + h e_i) - L(θ - h e_i)) / (actual step), both losses from a
    forward pass of the network with that one entry moved. Batched: the layers below the entry's
    layer do not change; in its layer only the entry's output unit changes, recomputed from the
    moved weight row; the layers above run for many entries at once. Models whose forward is not
    fc[l] then f[l] get the plain way: each entry moved in place, ``model(x)``, put back.

    The error level (a norm over the entries) is the rounding noise, 100 (|L| + 1) u / h per entry,
    plus the truncation error h² L'''/6 estimated from the differences at 2h: twice |D(2h) - D(h)|/3.
    A gradient closer than that to the differences cannot be told wrong by them.
    """
    with torch.no_grad():
        acts, _ = _layerwise(model, x)
        layerwise = torch.allclose(acts[-1], model(x), rtol=1e-10, atol=0) if acts else False
        differences = _fd_layerwise if layerwise else _fd_in_place
        out, double = differences(model, x, y, loss, h), differences(model, x, y, loss, 2 * h)
        unit = torch.finfo(_dtype(model)).eps
        base = _per_sample_loss(loss, model(x).flatten(1), y).to(torch.float64).abs()
        noise = {key: 100 * unit * (base + 1) / h * math.sqrt(p.numel())
                 + 2 / 3 * (double[key] - out[key]).flatten(1).norm(dim=1) for key, *_, p in _params(model)}
    return out, noise


def _layerwise(model, x):
    """a[0..L], z[1..L] computed layer by layer (empty lists when the model has no f)."""
    if not isinstance(getattr(model, "f", None), dict):
        return [], []
    try:
        acts, zs = [torch.flatten(x, 1)], [None]
        for l in range(1, model.L + 1):
            zs.append(model.fc[str(l)](acts[-1]))
            acts.append(model.f[l](zs[-1]))
        return acts, zs
    except Exception:
        return [], []


def _fd_layerwise(model, x, y, loss, h):
    acts, zs = _layerwise(model, x)
    out = {}
    for key, l, kind, _, p in _params(model):
        W, b = model.fc[str(l)].weight, model.fc[str(l)].bias
        n_out, n_in = W.shape
        rows = torch.arange(n_out).repeat_interleave(n_in) if kind == "weight" else torch.arange(n_out)
        values = p.detach().reshape(-1)
        chunk = max(1, 2 ** 22 // (acts[0].shape[0] * max(model.n_l)))
        diffs = [_fd_chunk(model, l, kind, acts, zs, y, loss, h, rows[s:s + chunk], values[s:s + chunk],
                           torch.arange(s, min(s + chunk, len(rows))) % n_in, W, b)
                 for s in range(0, len(rows), chunk)]
        out[key] = torch.cat(diffs).T.reshape(acts[0].shape[0], *p.shape)
    return out


def _fd_chunk(model, l, kind, acts, zs, y, loss, h, rows, values, cols, W, b):
    """(entries, samples) centred differences for the entries ``values`` of layer l's weight or bias."""
    losses = []
    for moved in (values + h, values - h):
        w_rows, bias = W[rows].clone(), b[rows].clone()       # the weight row of each entry's unit
        if kind == "weight":
            w_rows[torch.arange(len(rows)), cols] = moved
        else:
            bias = moved
        z = zs[l].expand(len(rows), *zs[l].shape).clone()    # (entries, samples, n_l)
        z[torch.arange(len(rows)), :, rows] = (acts[l - 1] @ w_rows.T + bias).T
        losses.append(_per_sample_loss(loss, _forward_from(model, l, z), y))
    steps = ((values + h) - (values - h)).to(torch.float64)   # the perturbations actually made
    return (losses[0] - losses[1]).to(torch.float64) / steps[:, None]


def _forward_from(model, l, z):
    a = model.f[l](z)
    for m in range(l + 1, model.L + 1):
        a = model.f[m](model.fc[str(m)](a))
    return a


def _fd_in_place(model, x, y, loss, h):
    """The plain way, for any forward: each entry moved in place, one forward, put back bitwise."""
    out = {}
    for key, *_, p in _params(model):
        flat, rows = p.detach().view(-1), []
        for k, orig in enumerate(flat.tolist()):
            flat[k] = orig + h
            up = _per_sample_loss(loss, model(x).flatten(1), y)
            flat[k] = orig - h
            down = _per_sample_loss(loss, model(x).flatten(1), y)
            flat[k] = orig
            rows.append((up - down).to(torch.float64) / ((orig + h) - (orig - h)))
        out[key] = torch.stack(rows).T.reshape(x.shape[0], *p.shape)
    return out


# ============================================================================================
# model access and losses
# ============================================================================================
def _stored_keys(model):
    return [key for key, *_ in _params(model)]


def _params(model):
    """[(key, layer, kind, store name, parameter)] for layers 1..L."""
    out = []
    for l in range(1, model.L + 1):
        layer = model.fc[str(l)]
        out.append((f"fc[{l}].weight", l, "weight", "dL_dw", layer.weight))
        out.append((f"fc[{l}].bias", l, "bias", "dL_db", layer.bias))
    return out


def _dtype(model):
    return _params(model)[0][-1].dtype


def _describe(model) -> str:
    return f"{type(model).__name__}({list(model.n_l)})"


def _class_name(model) -> str:
    return model.__name__ if isinstance(model, type) else type(model).__name__


def _save_parameters(model):
    return [(p, p.detach().clone(), p.grad) for *_, p in _params(model)]


def _restore_parameters(model, saved):
    with torch.no_grad():
        for p, value, grad in saved:
            p.copy_(value)
            p.grad = grad


def _load_point(model, point):
    with torch.no_grad():
        for key, *_, p in _params(model):
            p.copy_(point[key])


def _loss_value(loss, y_pred, y_true):
    fn, reduction, _ = LOSSES[loss]
    e = fn(y_pred, y_true)
    return e.sum() if reduction == "sum" else e.mean()


def _per_sample_loss(loss, outputs, y):
    """(..., n_samples, n_L) outputs -> (..., n_samples) losses."""
    e = _FUNCTIONAL[loss](outputs, y.expand_as(outputs), reduction="none")
    return e.sum(-1) if LOSSES[loss][1] == "sum" else e.mean(-1)


# ============================================================================================
# MNIST, standalone
# ============================================================================================
@functools.lru_cache(maxsize=4)
def _mnist_test(root: str):
    """(uint8 images (10000, 28, 28), int64 labels) of the MNIST test split under ``root``."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file
    with contextlib.suppress(RuntimeError):
        ds = MNIST(root, train=False)          # torchvision's complete folder
        return ds.data, ds.targets
    raw = Path(root) / "MNIST" / "raw"
    found = [_raw_file(raw, name) for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    if all(found):
        return _read_idx(found[0], read_image_file), _read_idx(found[1], read_label_file)
    if os.environ.get("INF265_OFFLINE") != "1":
        with contextlib.suppress(Exception):  # offline: the error below
            ds = MNIST(root, train=False, download=True)
            return ds.data, ds.targets
    raise FileNotFoundError(
        f"No MNIST test split in {raw}. Go online (torchvision downloads it), or set DATA_DIR (or pass "
        "root=...) to a folder holding MNIST/raw/t10k-images-idx3-ubyte.gz and MNIST/raw/t10k-labels-idx1-ubyte.gz.")


def _raw_file(raw: Path, name: str):
    return next((p for p in (raw / name, raw / f"{name}.gz") if p.is_file()), None)


def _read_idx(path: Path, reader):
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / path.stem
            plain.write_bytes(gzip.decompress(path.read_bytes()))
            return reader(str(plain))
    except (OSError, EOFError, AssertionError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path} could not be read as an MNIST idx file ({type(exc).__name__}: {exc}); "
                         "replace it with the official file") from None


# ============================================================================================
# diagnosis heuristics
# ============================================================================================
def _diagnose(v: _Verdict, keys, ctx):
    """The likely cause of the failing parameters ``keys`` of one record (a sentence), or None."""
    if not keys:
        return None
    precision = _float32_precision(v, keys, ctx)
    if precision:
        return precision
    where = _where(v, keys, ctx.model.L)
    how = _how(v, keys, ctx)
    if where and how:
        return f"{where}; there: {how}"
    return where or how


def _where(v, keys, L):
    """Which part of the algorithm is wrong, from which layers' biases and weights are wrong."""
    wrong_bias = sorted({_layer(k) for k in keys if _kind(k) == "bias"})
    wrong_weight = sorted({_layer(k) for k in keys if _kind(k) == "weight"})
    all_biases_known = all(f"fc[{l}].bias" in v.grads for l in range(1, L + 1))
    if not wrong_bias and all_biases_known:
        layers = ", ".join(map(str, wrong_weight))
        return (f"δ is right at every layer (every bias gradient is right) but the weight gradient of layer "
                f"{layers} is wrong: dL_dw[l] = Δ^(l)ᵀ A^(l-1), with A^(l-1) = a[l-1]")
    if not wrong_weight and wrong_bias:
        return "only the biases are wrong: dL_db[l] is Δ^(l) summed over the rows (samples)"
    if wrong_bias and L not in wrong_bias and f"fc[{L}].bias" in v.grads:
        return (f"the output layer is right but δ is wrong from layer {max(wrong_bias)} down: its propagation "
                "back is wrong; check Δ^(l-1) = (Δ^(l) W^(l)) ⊙ f'(Z^(l-1)) and which a / z / W / f' each "
                "layer uses")
    return None


def _how(v, keys, ctx):
    g = {k: v.grads[k] for k in keys}
    r = {k: v.refs[k] for k in keys}
    if all(g[k].abs().max() == 0 for k in keys):
        return "the gradients are all zero"
    for test in (_accumulates, _first_sample_only, _uniform_scale, _transposed_square, _known_variant):
        found = test(v, g, r, ctx)
        if found:
            return found
    return None


def _match_tol(ctx):
    return max(MATCH, 100 * torch.finfo(_dtype(ctx.model)).eps)


def _accumulates(v, g, r, ctx):
    if all(relative_error(g[k] - STORE_SENTINEL, r[k]) <= _match_tol(ctx) for k in g):
        return ("the gradient is added to what model.dL_dw[l] / dL_db[l] held before the call (`+=`): the "
                "course's harness never empties the stores, so each call must store a new value "
                "(model.dL_dw[l] = ..., not +=)")
    return None


def _first_sample_only(v, g, r, ctx):
    if v.batch < 2:
        return None
    first, _ = _references(ctx, v.rec["samples"][:1])
    if all(relative_error(g[k], first[k]) <= _match_tol(ctx) for k in g):
        return ("only the first sample of the batch is used (e.g. y_pred[0] or a[l][0]); the batch gradient "
                "sums over every row: dL_dw[l] = Δᵀ A^(l-1), dL_db[l] = Δ.sum(dim=0)")
    return None


def _uniform_scale(v, g, r, ctx):
    num = sum((g[k] * r[k]).sum().item() for k in g)
    den = sum((r[k] * r[k]).sum().item() for k in g)
    if den <= 0:
        return None
    c = num / den
    if not all((g[k] - c * r[k]).norm().item() <= _match_tol(ctx) * g[k].norm().item() for k in g):
        return None
    if ctx.model.L not in {_layer(k) for k in g}:  # only layers below the output: not the loss's derivative
        if abs(c - 1) <= 1e-3:
            return None
        return "the sign is flipped" if abs(c + 1) < 1e-6 else f"the wrong gradients are scaled by {c:.6g}"
    return _scale_name(c, v.batch, ctx.model.n_l[-1], ctx.loss)


def _transposed_square(v, g, r, ctx):
    square = [k for k in g if g[k].dim() == 2 and g[k].shape[0] == g[k].shape[1]]
    if square and all(relative_error(g[k], r[k].T) <= _match_tol(ctx) for k in square) and \
            all(k in square or relative_error(g[k], r[k]) <= _match_tol(ctx) for k in g):
        layers = ", ".join(str(_layer(k)) for k in square)
        return (f"the weight gradient is transposed on the square layers ({layers}), where the shape cannot tell: "
                "dL_dw[l] = Δᵀ A^(l-1), shape (n_l, n_(l-1)); do not transpose only when the shape does not fit")
    return None


def _known_variant(v, g, r, ctx):
    model = ctx.model
    if not (isinstance(getattr(model, "f", None), dict) and isinstance(getattr(model, "df", None), dict)):
        return None
    x, y = ctx.x[v.rec["samples"]], ctx.y[v.rec["samples"]]
    tol = _match_tol(ctx)
    for name, derivatives, transposed in _variants(model):
        try:
            grads = _variant_grads(model, x, y, ctx.loss, derivatives, transposed)
        except Exception:
            continue
        if all(relative_error(v.grads[k], grads[k]) <= tol for k in v.grads) and \
                any(relative_error(grads[k], v.refs[k]) > tol for k in g):
            return name
    return None


def _float32_precision(v, keys, ctx):
    if _dtype(ctx.model) != torch.float64:
        return None
    g, r = v.grads, v.refs
    if all(1e-12 < relative_error(g[k], r[k]) < 1e-4 and torch.equal(g[k], g[k].float().double()) for k in keys):
        return ("the gradients have float32 precision: they were computed in float32 somewhere (e.g. torch.zeros(n) "
                "with the default float32); create tensors with the model's dtype (zeros_like, dtype=...) or call "
                "torch.set_default_dtype(torch.double) before building the model")
    return None


def _no_derivative(model, l, z, fz):
    return torch.ones_like(z)


_NO_DERIVATIVE = _no_derivative


def _variants(model):
    """[(cause, {layer: f' used there}, layers propagated with Wᵀ)] of known wrong backpropagations."""
    L = model.L
    every, hidden = range(1, L + 1), range(1, L)
    at_a = lambda m, l, z, fz: m.df[l](fz)  # noqa: E731
    f_not_df = lambda m, l, z, fz: m.f[l](z)  # noqa: E731
    tanh_z = lambda m, l, z, fz: 1 - torch.tanh(z) ** 2  # noqa: E731
    tanh_a = lambda m, l, z, fz: 1 - fz ** 2  # noqa: E731
    above = lambda m, l, z, fz: m.df[l + 1](z)  # noqa: E731
    square = [l for l in range(2, L + 1) if model.n_l[l] == model.n_l[l - 1]]
    out = [("the activation derivative f'(z) is missing (at every layer)", {l: _NO_DERIVATIVE for l in every}, ()),
           ("the activation derivative f'(z^(L)) of the output layer is missing", {L: _NO_DERIVATIVE}, ()),
           ("the activation derivative is taken at a = f(z) instead of z (at every layer)",
            {l: at_a for l in every}, ()),
           ("the activation derivative of the output layer is taken at a = f(z) instead of z", {L: at_a}, ()),
           ("f(z) is used instead of f'(z) (model.f instead of model.df)", {l: f_not_df for l in every}, ()),
           ("the activation derivative is hard-coded as tanh' = 1 - a² (right for tanh layers only): use "
            "model.df[l](model.z[l]), the layer's own f'", {l: tanh_a for l in every}, ()),
           ("the activation derivative is hard-coded as tanh'(z) = 1 - tanh²(z) (right for tanh layers only): use "
            "model.df[l], the layer's own f'", {l: tanh_z for l in every}, ())]
    if L > 1:
        out += [("the activation derivative f'(z^(l-1)) is missing when δ is propagated back "
                 "(Δ^(l-1) = (Δ^(l) W^(l)) ⊙ f'(Z^(l-1)))", {l: _NO_DERIVATIVE for l in hidden}, ()),
                ("the activation derivative of the hidden layers is taken at a = f(z) instead of z",
                 {l: at_a for l in hidden}, ()),
                ("the derivative of the layer above is used: Δ^(l-1) needs model.df[l-1](model.z[l-1]), not "
                 "model.df[l]", {l: above for l in hidden}, ())]
    if square:
        layers = ", ".join(map(str, square))
        out.append((f"δ is propagated with W^(l)ᵀ instead of W^(l) on the square layers ({layers}), where the "
                    "shape cannot tell: Δ^(l-1) = (Δ^(l) W^(l)) ⊙ f'(Z^(l-1))", {}, tuple(square)))
    return out


def _variant_grads(model, x, y, loss, derivatives, transposed=()):
    """Autograd's gradients of a modified backward pass, with the forward values unchanged.

    ``derivatives`` maps a layer to the f' used there instead of the true one: ``fn(model, l, z,
    f(z))``. On the layers in ``transposed``, δ goes back through Wᵀ instead of W (square W only).
    """
    a = torch.flatten(x, 1)
    with torch.enable_grad():
        for l in range(1, model.L + 1):
            layer = model.fc[str(l)]
            if l in transposed:
                w = layer.weight.detach()
                z = (a.detach() @ layer.weight.T + layer.bias) + (a @ w - (a @ w).detach())
            else:
                z = layer(a)
            fz = model.f[l](z)
            if l in derivatives:
                d = derivatives[l](model, l, z.detach(), fz.detach())
                a = fz.detach() + (z - z.detach()) * d.detach()
            else:
                a = fz
        grads = torch.autograd.grad(_loss_value(loss, a, y), [p for *_, p in _params(model)])
    return {key: g.detach().to(torch.float64) for (key, *_), g in zip(_params(model), grads)}


def _scale_name(c, batch, n_out, loss):
    """The name of a uniform scale factor ``c`` of every gradient, or None."""
    mean = LOSSES[loss][1] == "mean"
    names = [(-1.0, "the sign is flipped: ∂L/∂ŷ = -2(y - ŷ) = 2(ŷ - y)" if loss in ("sse", "mse")
              else "the sign is flipped"),
             (2.0, "off by a factor 2 (too large)"),
             (0.5, "off by a factor 2 (too small): d/dŷ (y - ŷ)² = -2(y - ŷ)"),
             (-2.0, "sign flipped and off by a factor 2"), (-0.5, "sign flipped and off by a factor 2")]
    if not mean:
        names += [(1.0 / (batch * n_out) if batch > 1 else 1.0, "mean instead of sum: divided by batch size x "
                   f"outputs ({batch} x {n_out}); the loss is the SUM of squared errors, not nn.MSELoss()'s mean"),
                  (1.0 / batch, f"mean instead of sum over the batch: divided by the batch size {batch}; the "
                   "loss sums over the samples"),
                  (1.0 / n_out, f"mean instead of sum over the outputs: divided by n_L = {n_out}; the loss "
                   "sums the squared errors")]
    else:
        names += [(batch * n_out if batch > 1 else 1.0, f"sum instead of mean: {batch * n_out} times too large; "
                   f"loss '{loss}' is a mean over all entries"),
                  (float(batch), f"sum instead of mean over the batch: {batch} times too large"),
                  (float(n_out), f"sum instead of mean over the outputs: {n_out} times too large")]
    found = [name for value, name in names if value != 1.0 and abs(c - value) <= 1e-6 * abs(value)]
    if found:  # several readings when they coincide (e.g. n_L = 2: factor 2 or mean over outputs)
        return ", or ".join(dict.fromkeys(found))
    return f"every gradient is scaled by {c:.6g}" if abs(c - 1) > 1e-3 else None


# ============================================================================================
# train_manual_update against torch.optim.SGD: the reference and the named mistakes (shared by
# tests_gradient_descent.py and the grader's grading/checks/sgd.py)
# ============================================================================================
SGD_RULE = ("torch.optim.SGD computes, for each parameter p with gradient g: g = g + weight_decay * p; "
            "b = g at the first step, then b = momentum * b + g; p = p - lr * b (b replaces g only when "
            "momentum is not 0); the gradients are zeroed at every step")


def sgd_reference(model, epochs, lr, zero_grad=True, mistake=None, **hyper) -> list:
    """Train ``model`` (at the initial weights) with the standard loop ``zero_grad(); loss.backward();
    step()`` of ``torch.optim.SGD`` and cross-entropy over ``epochs`` (a list of epochs, each a list of
    ``(x, y)`` batches); its parameters after. ``mistake`` reproduces a common wrong update (see
    :func:`sgd_diagnose`): ``"weights_only"``, ``"reset_each_epoch"``, ``"aliased_buffer"``,
    ``"decay_after_momentum"``; ``zero_grad=False``: gradients never zeroed."""
    params = list(model.parameters())
    groups = [{"params": params}]
    if mistake == "weights_only":
        groups = [{"params": [p for p in params if p.dim() > 1]},
                  {"params": [p for p in params if p.dim() == 1], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=lr, **hyper)
    loss_fn, buffers = nn.CrossEntropyLoss(), {}
    with torch.enable_grad():
        for batches in epochs:
            if mistake == "reset_each_epoch":
                optimizer, buffers = torch.optim.SGD(groups, lr=lr, **hyper), {}
            for x, y in batches:
                if zero_grad and mistake != "aliased_buffer":
                    optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                if mistake in ("aliased_buffer", "decay_after_momentum"):
                    _manual_step(params, buffers, lr, mistake, **hyper)
                else:
                    optimizer.step()
    return [p.detach().clone() for p in params]


def _manual_step(params, buffers, lr, mistake, momentum=0.0, weight_decay=0.0, **_):
    """One step of a mistake as students write it: the momentum buffer aliasing ``p.grad`` (zeroed with
    it), or weight decay added after the momentum buffer instead of before."""
    with torch.no_grad():
        for p in params:
            g = p.grad
            if mistake == "aliased_buffer":
                g = g + weight_decay * p if weight_decay else g
                buffers[p] = g = g + momentum * buffers[p] if p in buffers else g
                p.copy_(p - lr * g)
                p.grad.zero_()
            else:
                buffers[p] = b = momentum * buffers[p] + g if p in buffers else g.clone()
                p.copy_(p - lr * (b + weight_decay * p))


def sgd_mistakes(hyper: dict):
    """(the mistake a match reveals, keyword arguments of :func:`sgd_reference`), most common first."""
    if hyper.get("weight_decay"):
        yield ("weight decay is missing (the term weight_decay * p added to the gradient)",
               {**hyper, "weight_decay": 0})
    if hyper.get("momentum"):
        yield ("momentum is missing (no momentum buffer)",
               {k: v for k, v in hyper.items() if k not in ("momentum", "dampening", "nesterov")})
    if hyper.get("dampening"):
        yield "dampening is ignored (buffer update b = momentum * b + (1 - dampening) * g)", {**hyper, "dampening": 0}
    if hyper.get("nesterov"):
        yield "the Nesterov step is missing (g = g + momentum * b)", {**hyper, "nesterov": False}
    yield "the update goes uphill (the sign of the step is flipped)", {**hyper, "maximize": True}
    if hyper.get("weight_decay"):
        yield ("weight decay is applied to the weights only: torch.optim.SGD adds weight_decay * p to every "
               "parameter's gradient, the biases' too", {**hyper, "mistake": "weights_only"})
    if hyper.get("momentum"):
        yield ("the momentum buffers are reset every epoch: they must live across epochs, like the optimizer's "
               "state", {**hyper, "mistake": "reset_each_epoch"})
        yield ("the momentum buffer is the tensor p.grad itself (an alias), so zeroing the gradient zeroes the "
               "buffer: keep a copy (b = g.clone()) or a separate tensor", {**hyper, "mistake": "aliased_buffer"})
    if hyper.get("momentum") and hyper.get("weight_decay"):
        yield ("weight decay is applied after momentum (p -= lr * (b + wd * p)): add it to the gradient before "
               "the buffer is updated (g = g + wd * p, then b = momentum * b + g)",
               {**hyper, "mistake": "decay_after_momentum"})
    yield ("the gradients are not zeroed between steps (they accumulate): zero them after each update",
           {**hyper, "zero_grad": False})


def sgd_diagnose(got, initial, hyper, train, close) -> str:
    """The likely mistake of parameters ``got`` (trained from ``initial`` with ``hyper``): ``train(**kwargs)``
    gives :func:`sgd_reference`'s parameters for a variant of :func:`sgd_mistakes`, ``close(a, b)`` says
    whether two lists of parameters agree."""
    if all(torch.equal(g, w) for g, w in zip(got, initial)):
        return ("the parameters were not updated at all: update the model's own parameters in place, under "
                "torch.no_grad() (p -= ..., or p.data = ...), not a copy")
    for message, variant in sgd_mistakes(hyper):
        if close(got, train(**variant)):
            return message
    return "no simple variant of torch.optim.SGD matches; " + SGD_RULE
