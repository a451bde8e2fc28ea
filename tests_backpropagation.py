"""Graded test harness for ``backpropagation`` (INF265 Project 1, section 2).

Drop-in replacement for the course's ``tests_backpropagation.py``: copy this file next to your
notebook and run ::

    from tests_backpropagation import main_test
    main_test(backpropagation, MyNet([2, 3, 2]), data="toy")
    main_test(backpropagation, MyNet([24 * 24, 16, 10]), data="mnist")

It needs only torch and torchvision and works for any model with the course's ``MyNet``
interface (``L``, ``n_l``, ``fc["1".."L"]``, ``z``, ``a``, ``f``, ``df``, ``dL_dw``, ``dL_db``).
As the course's harness does, it checks ``backprop_fn(model, y_true, y_pred)`` on one sample at a
time with the sum of squared errors, at a few points of parameter space; ``batch=True`` (or giving
``n_samples``) also checks all the samples as one batch. The checks (one PASSED/FAILED line each;
``Check.id`` in brackets):

* [runs] runs without error: within ``timeout`` seconds per call; ``sys.exit()`` is caught.
* [no_autograd] uses no autograd and does not evaluate the model: the function gets ``y_pred``,
  ``a[l]``, ``z[l]`` without their graph; autograd's engine and forward-mode AD are blocked;
  autograd graphs and any forward of the model or of its layers (numerical differentiation) are
  counted; the function's code is also read for autograd names.
* [unchanged] changes no parameter, .grad, input or model attribute: parameters bitwise and by
  version counter, ``.grad``, ``y_pred``, ``y_true``, ``a[l]``, ``z[l]`` (by value: changed and put
  back is no change), ``L``, ``n_l``, ``fc``, ``f``, ``df`` (the harness restores them).
* [stored] gradients stored with the shape and dtype of their parameters, every layer by every
  call: as the course's harness, it never empties ``dL_dw`` / ``dL_db`` (``+=`` shows).
* [autograd] matches autograd, one sample at a time (relative error per layer and parameter).
* [autograd_batch] matches autograd, batch of N samples (only with ``batch=True``).
* [finite_differences] matches centred finite differences over every parameter entry.
* [stored_activations] uses the stored a[l], z[l]: given the a/z of a forward pass at other
  parameters than the model holds, the gradients are equations (4)-(7) on them with the model's
  weights (a new forward pass, autograd or finite differences give other ones).
* [square] square layers and mixed activations: the same checks on ``MyNet([3, 3, 3, 2])`` built
  from the model's own class, with a different activation per layer. It catches what the
  course's nets cannot: W instead of Wᵀ, f' of the wrong layer, a hard-coded tanh', a buffer
  shared by same-shaped layers, a transpose made only when the shape does not fit.

A failure names the layer, the parameter, the worst entry (ours vs the reference) and the likely
cause. ``main_test`` prints a short report (the checks that passed on one line, then each failed
one with its details; ``verbose=True`` prints everything), returns a :class:`BackpropTestResult`
and raises ``AssertionError`` (with ``.result``) when a check failed. The model is left as found.

This file is ``main_test`` and its report; the guard, the judge and the diagnoses are in
``harness_core.py`` beside it (keep both files next to your notebook).
``main_test`` = validate, data, :func:`parameter_points`, collect, judge, square, report, raise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import harness_core
from harness_core import *  # noqa: F401,F403 - the public API, as before the split
from harness_core import (CHECKS, DEFAULT_TIMEOUT, LOSSES, N_MNIST, N_TOY, BackpropTestResult, Check, collect,
                          collect_square, judge, judge_square, load_mnist_sample, parameter_points, toy_data)
from harness_core import _dtype, _params, _validate_eps

__all__ = ["main_test", *harness_core.__all__]


# ============================================================================================
# the test
# ============================================================================================
def main_test(backprop_fn, model, eps=1e-6, verbose=False, data="toy", loss="sse", n_samples=None,
              n_points=None, lr=0.01, batch=None, timeout=DEFAULT_TIMEOUT, square=True):
    """Test ``backprop_fn(model, y_true, y_pred)`` on ``model``; print a report; raise if wrong.

    Parameters
    ----------
    backprop_fn : the function under test; it must store ``model.dL_dw[l]`` and ``model.dL_db[l]``.
    model : a ``MyNet``-like model (``L``, ``n_l``, ``fc``, ``z``, ``a``, ``f``, ``df``).
    eps : step of the centred finite differences, between 1e-8 and 1e-4 (float32 models use at
        least 1e-3).
    verbose : also print our gradients next to autograd's and the worst errors per parameter.
    data : ``"toy"`` (the course's toy data) or ``"mnist"`` (the first MNIST test images, 24x24
        centre crop, one-hot targets; needs ``n_l[0] == 576`` and ``n_l[-1] == 10``; the data
        folder is ``$DATA_DIR``, default ``data/`` next to this file).
    loss : ``"sse"`` (the course's sum of squared errors; ``backprop_fn`` gets three arguments)
        or ``"mse"``, ``"bce"``, ``"logistic"`` (then it is called with ``loss=...``).
    n_samples : number of samples (default 10 toy, 5 MNIST).
    n_points : number of parameter points (default 3 toy, 1 MNIST); between two points the model
        takes a gradient step of size ``lr`` on the mean loss (undone at the end).
    batch : also check all the samples as one batch (one more check). Default ``None``: only
        when ``n_samples`` is given, so ``n_samples=32`` means "and a batch of 32"; the course's
        call checks one sample at a time.
    timeout : seconds allowed per call of ``backprop_fn`` (``None``: no limit).
    square : add the check on the square net with mixed activations.

    Returns a :class:`BackpropTestResult`; raises ``AssertionError`` (after the report) when a
    check fails. Bad arguments raise ``ValueError``.
    """
    plan = _validate(backprop_fn, model, eps, data, loss, n_samples, n_points, batch, timeout)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (x10 on a loaded machine)
    try:
        x, y = _data(model, plan)
        points = _points(model, x, y, plan, lr)
        collection = collect(backprop_fn, model, x, y, points, loss=loss, batch=plan.batch, timeout=timeout)
        result = judge(collection, model, x, y, points, loss=loss, eps=eps, data=data, batch=plan.batch)
        if square:
            result.checks.append(_square_check(backprop_fn, model, loss, eps, timeout, collection))
    finally:
        torch.set_num_threads(threads)
    _print_report(result, verbose)
    if not result.passed:
        error = AssertionError(result.failure_message())
        error.result = result
        raise error
    return result


# ============================================================================================
# main_test's steps: validation, data, square check, report
# ============================================================================================
@dataclass
class _Plan:
    data: str
    loss: str
    n: int
    n_points: int
    batch: bool


def _validate(backprop_fn, model, eps, data, loss, n_samples, n_points, batch, timeout) -> _Plan:
    """Every argument checked before anything runs: ``ValueError`` says what is wrong."""
    if not callable(backprop_fn):
        raise ValueError(f"backprop_fn must be a function, got {type(backprop_fn).__name__}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(map(repr, LOSSES))}")
    if data not in ("toy", "mnist"):
        raise ValueError(f"unknown data {data!r}; use data='toy' or data='mnist'")
    _validate_eps(eps)
    for name, value in (("n_samples", n_samples), ("n_points", n_points)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
        raise ValueError(f"timeout must be a positive number of seconds (or None), got {timeout!r}")
    _validate_model(model, data)
    mnist = data == "mnist"
    return _Plan(data, loss, n_samples or (N_MNIST if mnist else N_TOY), n_points or (1 if mnist else 3),
                 bool(batch) if batch is not None else n_samples is not None)


def _validate_model(model, data):
    for attr in ("L", "n_l", "fc"):
        if not hasattr(model, attr):
            raise ValueError(f"the model has no attribute {attr!r}: main_test needs the course's MyNet "
                             "interface (L, n_l, fc, z, a, f, df, dL_dw, dL_db)")
    try:
        _params(model)
    except (KeyError, AttributeError, TypeError) as exc:
        raise ValueError(f"model.fc must map '1'..'{model.L}' to nn.Linear layers (the course's MyNet): "
                         f"{type(exc).__name__}: {exc}") from None
    if data == "mnist" and model.n_l[0] != 24 * 24:
        raise ValueError(f"data='mnist' needs a model with 24*24 = 576 inputs (MNIST images centre-"
                         f"cropped to 24x24), but n_l[0] = {model.n_l[0]}: use e.g. MyNet([24*24, 16, 10])")
    if data == "mnist" and model.n_l[-1] != 10:
        raise ValueError(f"data='mnist' needs 10 outputs (one per digit, one-hot targets), but "
                         f"n_l[-1] = {model.n_l[-1]}: use e.g. MyNet([24*24, 16, 10])")


_BCE_MESSAGE = ("loss='bce' needs probabilities in [0, 1]: use a sigmoid output layer "
                "(or loss='logistic' with an identity output layer)")


def _data(model, plan: _Plan):
    dtype = _dtype(model)
    if plan.data == "mnist":
        x, y = load_mnist_sample(plan.n, dtype)
    else:
        x, y = toy_data(model, plan.n, plan.loss, dtype)
    with torch.no_grad():
        probe = model(x)
    if plan.loss == "bce" and not ((probe >= 0) & (probe <= 1)).all():
        raise ValueError(_BCE_MESSAGE)
    return x, y


def _points(model, x, y, plan: _Plan, lr):
    try:
        return parameter_points(model, x, y, plan.loss, plan.n_points, lr)
    except RuntimeError as exc:  # nn.BCELoss on an output that left [0, 1]
        if plan.loss == "bce" and "between 0 and 1" in str(exc):
            raise ValueError(_BCE_MESSAGE) from None
        raise


def _square_check(backprop_fn, model, loss, eps, timeout, course) -> Check:
    if course.get("stopped"):
        return Check(CHECKS["square"], False, f"not run: {course['stopped']} on {course['model']}", id="square")
    return judge_square(collect_square(backprop_fn, model, loss=loss, timeout=timeout), loss=loss, eps=eps)


def _print_report(result: BackpropTestResult, verbose: bool):
    """Short by default: a header, one PASSED line naming the checks that passed, each FAILED or
    SKIPPED check with its message and details, the summary. ``verbose``: every check's line and the
    gradients side by side."""
    print(f"\n Check backpropagation: {result.model}, {result.data} data, loss '{result.loss}' ("
          + "; ".join(result.notes) + ")")
    if verbose:
        _print_side_by_side(result)
    shown = result.checks if verbose else [c for c in result.checks if not c.passed]
    passed = [c.name for c in result.checks if c.passed]
    if passed and not verbose:
        print(f" PASSED  {'; '.join(passed)}")
    for check in shown:
        print(check.line())
        if not check.passed and not check.skipped:
            for d in check.details[:3]:
                print(f"           {d}")
            if len(check.details) > 3:
                print(f"           ... and {len(check.details) - 3} more")
    print(result.summary())


def _print_side_by_side(result: BackpropTestResult, max_rows=8):
    rows = result.comparison.get("rows", {})
    if rows:
        print("\n --------- Our gradients and autograd's, side by side ---------")
    for key, (ours, ref) in rows.items():
        print(f"\n ******* {key} ({result.comparison['label']}) *******")
        ours, ref = ours.flatten(), ref.flatten()
        print(f"  {'entry':>8} {'ours':>14} {'autograd':>14}")
        for i in range(min(len(ref), max_rows)):
            print(f"  {i:>8} {ours[i].item():>14.6g} {ref[i].item():>14.6g}")
        if len(ref) > max_rows:
            print(f"  ... {len(ref) - max_rows} more entries")
    print("\n --------- Worst relative errors per parameter ---------")
    for key, e in result.errors.items():
        print(f"  {key:<14} autograd {e['autograd']:.2e}   finite differences {e['finite_differences']:.2e}")
    print()


