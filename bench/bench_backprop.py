"""Benchmarks of section 2 (``make bench``): finite differences and backpropagation speed.

* ``finite differences``: the course harness's way (two fresh models per parameter entry and per
  sample, ``load_state_dict``, one forward each) against ``tests_backpropagation``'s (each entry
  moved on its own, many entries per batched forward of the layers above it; at steps h and 2h,
  the second for the truncation error), on ``MyNet([576, 16, 10])``, 5 samples, all 9402
  entries. Both give the same per-sample gradients (checked).
* ``MNIST check``: the same course way against our whole ``main_test(backpropagation,
  MyNet([576, 16, 10]), data="mnist")`` (every check, the square net included; data already
  loaded, as for the course way).
* ``backprop``: autograd's backward pass (``torch.autograd.grad`` of the summed squared errors)
  against the notebook's ``backpropagation``, batch 256, ``MyNet([768, 128, 32, 2])``, both from
  the same forward pass, timed with ``torch.utils.benchmark`` (40 interleaved rounds of 10 calls,
  best round of each).

Both run single-threaded (the machine is shared; tiny tensors gain nothing from threads).
Prints one line per benchmark: ``NAME (...): A vs B, ratio R``. Run one of them with
``python bench/bench_backprop.py backprop`` or ``... fd``.
"""
from __future__ import annotations

import contextlib
import io
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tests_backpropagation as harness  # noqa: E402
import harness_core  # noqa: E402
from inf265.nbdefs import load_definitions  # noqa: E402

NB = load_definitions(ROOT / "backpropagation.ipynb")


def course_grad_check(model, x, y, eps=1e-6):
    """The course harness's ``grad_check`` for one sample: two fresh models per parameter entry."""
    loss_fn = nn.MSELoss(reduction="none")
    grads = {}
    with torch.no_grad():
        for l in range(1, model.L + 1):
            for name in ("weight", "bias"):
                param = getattr(model.fc[str(l)], name)
                g = torch.empty_like(param)
                j_range = 1 if param.dim() == 1 else param.shape[1]
                for idx in ((i if param.dim() == 1 else (i, j)) for i in range(param.shape[0])
                            for j in range(j_range)):
                    model1 = NB.MyNet(model.n_l)
                    model1.load_state_dict(model.state_dict())
                    getattr(model1.fc[str(l)], name).data[idx] = param.data[idx] + eps
                    loss1 = loss_fn(model1(x), y).sum().item()
                    model2 = NB.MyNet(model.n_l)
                    model2.load_state_dict(model.state_dict())
                    getattr(model2.fc[str(l)], name).data[idx] = param.data[idx] - eps
                    loss2 = loss_fn(model2(x), y).sum().item()
                    g[idx] = (loss1 - loss2) / (2 * eps)
                grads[f"fc[{l}].{name}"] = g
    return grads


def best_time(fn, rounds=3):
    """Best wall time of ``rounds`` calls (robust to the load of a shared machine) and the last result."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def quiet_main_test(model):
    with contextlib.redirect_stdout(io.StringIO()):
        return harness.main_test(NB.backpropagation, model, data="mnist")


def bench_finite_differences():
    torch.manual_seed(0)
    model = NB.MyNet([24 * 24, 16, 10])
    x, y = harness.load_mnist_sample(5)  # data loaded once, for both
    n_entries = sum(p.numel() for p in model.parameters())
    t_ours, (ours, _) = best_time(lambda: harness_core._finite_differences(model, x, y, "sse", 1e-6))
    t_check, result = best_time(lambda: quiet_main_test(model))
    assert result.passed
    start = time.perf_counter()
    course = [course_grad_check(model, x[i:i + 1], y[i:i + 1]) for i in range(5)]
    t_course = time.perf_counter() - start
    worst = max(harness.relative_error(ours[k][i], course[i][k]) for i in range(5) for k in ours)
    assert worst < 1e-6, f"the two finite differences disagree (relative error {worst:.1e})"
    print(f"finite differences (course way vs ours, MyNet([576,16,10]), 5 samples, {n_entries} entries): "
          f"{t_course:.1f} s vs {t_ours:.2f} s, ratio {t_course / t_ours:.1f}", flush=True)
    print(f"MNIST check (course's finite differences vs our whole main_test, MyNet([576,16,10]), data='mnist'): "
          f"{t_course:.1f} s vs {t_check:.2f} s, ratio {t_course / t_check:.1f}", flush=True)


def bench_backprop():
    torch.manual_seed(0)
    model = NB.MyNet([768, 128, 32, 2])
    x, y = torch.randn(256, 768), torch.randn(256, 2)
    y_pred = model(x)
    loss = nn.MSELoss(reduction="none")(y_pred, y).sum()
    params = list(model.parameters())
    env = {"torch": torch, "model": model, "y": y, "y_pred": y_pred, "loss": loss, "params": params,
           "backpropagation": NB.backpropagation}
    timers = {"autograd": benchmark.Timer("torch.autograd.grad(loss, params, retain_graph=True)", globals=env),
              "ours": benchmark.Timer("backpropagation(model, y, y_pred)", globals=env)}
    # interleaved rounds, best round of each: robust to the load of a shared machine
    best = {name: float("inf") for name in timers}
    for _ in range(40):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(10).mean)
    t_autograd, t_ours = best["autograd"], best["ours"]
    ref = torch.autograd.grad(loss, params, retain_graph=True)
    NB.backpropagation(model, y, y_pred)
    ours = [g for l in range(1, model.L + 1) for g in (model.dL_dw[l], model.dL_db[l])]
    assert max(harness.relative_error(a, b) for a, b in zip(ours, ref)) < 1e-10
    print(f"backprop (autograd vs ours, MyNet([768,128,32,2]), batch 256): "
          f"{t_autograd * 1e3:.2f} ms vs {t_ours * 1e3:.2f} ms, ratio {t_autograd / t_ours:.2f}", flush=True)


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    which = sys.argv[1:] or ["backprop", "fd"]
    if "backprop" in which:
        bench_backprop()
    if "fd" in which:
        bench_finite_differences()
