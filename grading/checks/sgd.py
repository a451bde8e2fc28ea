"""Trusted checks of section 3: the student's ``train`` / ``train_manual_update`` against ``torch.optim.SGD``.

The grader chooses the initial weights, the batches and the hyper-parameters; the runner trains a
model with the student's function and returns its parameters; this module runs the reference
(the standard loop ``zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()`` with
``torch.optim.SGD`` on the course's MLP) and compares. Equal within ``RELATIVE`` (1e-12) is full
credit (``p.data = p.data - lr * g`` differs from the fused update by about 1e-17); bitwise
equality is reported as such. On a mismatch the parameters are compared with SGD variants that
leave a term out to name the likely mistake.
"""
from __future__ import annotations

import functools

import torch

from grading.checks.backprop import harness
from grading.runner.models import IN_SHAPE, course_mlp, weight_shapes
from grading.session import BadReply, tensor, text
from inf265 import ROOT

N_EPOCHS, N_BATCHES, BATCH_SIZE, LR = 2, 3, 8, 0.01
RELATIVE = 1e-12
#: check id -> hyper-parameters beyond lr (the same names as torch.optim.SGD's)
CASES = {
    "manual_plain": {},
    "manual_weight_decay": {"weight_decay": 0.01},
    "manual_momentum": {"momentum": 0.9},
    "manual_combined": {"momentum": 0.8, "weight_decay": 0.001},
    "manual_dampening": {"momentum": 0.9, "dampening": 0.3},
    "manual_nesterov": {"momentum": 0.9, "nesterov": True},
}
#: keywords in the name of a split function (train_manual_update_momentum) -> the term it handles
SPLIT_HINTS = {"momentum": ("mom", "momentum"), "weight_decay": ("wd", "decay", "l2", "reg", "weight")}


def problem() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Initial weights (course order), inputs (N, 3, 16, 16) and labels (N,) the grader chose: the same
    objects for every check and every submission graded at the same time (never changed by their users)."""
    return _PROBLEM


def _make_problem(seed: int = 265) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's initialisation draws from the global generator
        torch.manual_seed(seed)
        model = course_mlp().to(torch.float64)
    weights = [p.detach().clone() for p in model.parameters()]
    n = N_BATCHES * BATCH_SIZE
    x = torch.randn(n, *IN_SHAPE, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=gen)
    return weights, x, y


_PROBLEM = _make_problem()  # at import (under the import lock): threads grading side by side share it


def reference(weights, x, y, zero_grad: bool = True, mistake: str | None = None, inputs=None,
              **hyper) -> list[torch.Tensor]:
    """The parameters after the standard torch.optim.SGD loop from ``weights`` (cached for the grader's
    problem); ``inputs``: what the model saw at each step instead of the raw batches of ``x``."""
    if weights is problem()[0] and inputs is None:
        return _reference_of_problem(zero_grad, mistake, tuple(sorted(hyper.items())))
    return _reference(weights, x, y, zero_grad, mistake, inputs, **hyper)


@functools.lru_cache(maxsize=None)
def _reference_of_problem(zero_grad: bool, mistake, hyper: tuple) -> list[torch.Tensor]:
    return _reference(*problem(), zero_grad, mistake, **dict(hyper))


def _reference(weights, x, y, zero_grad: bool = True, mistake: str | None = None, inputs=None,
               **hyper) -> list[torch.Tensor]:
    """The standard loop from ``weights`` on the course's MLP (:func:`harness_core.sgd_reference`, with
    ``mistake`` one of its common wrong updates), on the batches of ``x`` or on ``inputs``, step by step."""
    model = course_mlp().to(torch.float64)
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights):
            p.copy_(w)
    lr = hyper.pop("lr", LR)
    steps = iter(inputs) if inputs is not None else None
    epochs = [[(x[i:i + BATCH_SIZE] if steps is None else next(steps), y[i:i + BATCH_SIZE])
               for i in range(0, len(x), BATCH_SIZE)] for _ in range(N_EPOCHS)]
    return core().sgd_reference(model, epochs, lr, zero_grad, mistake, **hyper)


def core():
    """The harness's core (one implementation of the SGD reference and its named mistakes)."""
    return harness(str(ROOT / "tests_backpropagation.py"))


def compare(got, want) -> tuple[bool, float, float]:
    """(bitwise equal, max abs difference, max abs difference / largest reference entry)."""
    equal = all(torch.equal(g, w) for g, w in zip(got, want))
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want))
    scale = max(float(w.abs().max()) for w in want) or 1.0
    return equal, diff, diff / scale


def diagnose(got, weights, x, y, hyper: dict, inputs=None) -> str:
    """The likely mistake: a torch.optim.SGD variant whose parameters the student's match."""
    def train(zero_grad=True, mistake=None, **variant):
        return reference(weights, x, y, zero_grad, mistake, inputs, **variant)
    return core().sgd_diagnose(got, weights, hyper, train, lambda a, b: compare(a, b)[2] < RELATIVE)


def verdict(got, weights, x, y, hyper: dict, what: str, seen=None) -> tuple[str, str, dict]:
    """Compared with torch.optim.SGD on the raw batches, or, when the model saw other inputs (``seen``,
    the input of each training forward: the student's function transforms each batch), on those."""
    want = reference(weights, x, y, **hyper)
    bitwise, diff, rel = compare(got, want)
    inputs = seen if seen is not None and rel > RELATIVE and _differs(seen, x) else None
    if inputs is not None:
        bitwise, diff, rel = compare(got, reference(weights, x, y, inputs=inputs, **hyper))
        what += " (your function transforms each batch before the model sees it: judged on what your model saw)"
    details = {"max_abs_difference": diff, "max_relative_difference": rel, "bitwise_equal": bitwise,
               "hyperparameters": {"lr": LR, **hyper}, "epochs": N_EPOCHS, "batches": N_BATCHES,
               "batch_size": BATCH_SIZE, "judged_on": "the raw batches" if inputs is None else "what the model saw"}
    if bitwise:
        return "pass", f"{what}: every parameter bitwise equal to torch.optim.SGD (torch.equal)", details
    if rel <= RELATIVE:
        return "pass", (f"{what}: equal to torch.optim.SGD within {RELATIVE:g} (largest difference {diff:.2g}, "
                        f"rounding; not bitwise)"), details
    return "fail", (f"{what}: parameters differ from torch.optim.SGD (largest difference {diff:.3g}); likely cause: "
                    f"{diagnose(got, weights, x, y, hyper, inputs)}"), details


def _differs(seen, x) -> bool:
    batches = [x[i:i + BATCH_SIZE] for i in range(0, len(x), BATCH_SIZE)] * N_EPOCHS
    return any(s.shape != b.shape or not torch.equal(s, b) for s, b in zip(seen, batches))


def seen_inputs(tensors: dict):
    """The input of each training forward the runner recorded, when they are one per step of the grader's
    problem, each a finite float batch of the course's input size; else None (judged on the raw batches)."""
    steps = N_EPOCHS * N_BATCHES
    if f"seen{steps}" in tensors or any(f"seen{i}" not in tensors for i in range(steps)):
        return None
    seen = [tensors[f"seen{i}"] for i in range(steps)]
    if not all(t.dtype in (torch.float64, torch.float32) and t.numel() == BATCH_SIZE * 768 and t.dim() >= 2
               and t.shape[0] == BATCH_SIZE and bool(torch.isfinite(t).all()) for t in seen):
        return None
    return [t.to(torch.float64).reshape(BATCH_SIZE, *IN_SHAPE) for t in seen]


# --------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------
def probe(runner, notebook: str, cpu_seconds: float) -> tuple[str | None, tuple[str, str, dict]]:
    """Which class to train: the student's (by what it computes) or the course's. With the verdict of
    ``mymlp_architecture``."""
    weights, x, _ = problem()
    x = x[:5]
    reply, outputs = runner.request("probe_models", {"notebook": notebook},
                                    {**{f"w{i}": w for i, w in enumerate(weights)}, "x": x},
                                    cpu_seconds=cpu_seconds, what="MyMLP")
    model = course_mlp().to(torch.float64)
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights):
            p.copy_(w)
        want = model(x)
    tried = []
    for entry in reply.get("classes", [])[:20]:
        name = text(entry.get("class", "?"), 80)
        if "error" in entry:
            tried.append(f"{name}: {text(entry['error'], 200)}")
            continue
        try:
            out = tensor(outputs, name, tuple(want.shape), f"{name}'s output", dtypes=(torch.float64, torch.float32))
        except BadReply as exc:
            tried.append(str(exc))
            continue
        diff = float((out.to(torch.float64) - want).abs().max())
        if diff <= 1e-10:
            how = text(entry.get("loaded", ""), 40)
            return name, ("pass", f"{name} computes the course's 768-128-32-2 ReLU network (same outputs as the "
                                  f"reference for the same weights, loaded {how})", {"class": name})
        tried.append(f"{name}: outputs differ from the course's network by up to {diff:.3g} for the same weights")
    found = ", ".join(tried) or "no nn.Module subclass is defined"
    return None, ("fail", f"no class of the notebook computes the course's 768-128-32-2 ReLU network ({found}); "
                          f"train and train_manual_update are checked on the course's network instead",
                  {"tried": tried})


def _train_request(runner, notebook, function, kind, class_name, hyper, cpu_seconds, what):
    weights, x, y = problem()
    header = {"notebook": notebook, "function": function, "kind": kind, "class": class_name,
              "hyper": {"lr": LR, **hyper}, "epochs": N_EPOCHS, "batch_size": BATCH_SIZE}
    reply, tensors = runner.request("train", header, {**{f"w{i}": w for i, w in enumerate(weights)},
                                                      "x": x, "y": y}, cpu_seconds=cpu_seconds, what=what)
    return reply, tensors, (weights, x, y)


def _failure(reply: dict, function: str) -> tuple[str, str, dict]:
    """A verdict from a reply that reports an exception in the student's code."""
    error = text(reply.get("error", "unknown error"), 1500)
    if reply.get("error_type") == "SignatureMismatch":
        return "fail", error.split(": ", 1)[1] if error.startswith("SignatureMismatch: ") else error, {}
    details = {"traceback": text(reply.get("traceback", ""))} if reply.get("traceback") else {}
    if reply.get("status") == "exit":
        return "error", f"{function} called sys.exit / raised SystemExit: {error}", details
    return "error", f"{function} raised {error}", details


def trained(reply, tensors, problem_data, hyper, what) -> tuple[str, str, dict]:
    got = [tensor(tensors, f"p{i}", shape, f"parameter {i} after training")
           for i, shape in enumerate(weight_shapes())]
    weights, x, y = problem_data
    status, message, details = verdict(got, weights, x, y, hyper, what, seen_inputs(tensors))
    details["called"] = text(reply.get("called", ""), 300)
    if reply.get("injected"):
        details["globals_provided"] = [text(n, 60) for n in reply["injected"]][:10]
    return status, message, details


def check_train(runner, notebook, class_name, cpu_seconds) -> tuple[str, str, dict]:
    """``train`` with a torch.optim.SGD optimizer we build, plain and with momentum."""
    messages, details = [], {}
    for case, hyper in (("plain", {}), ("momentum", {"momentum": 0.9})):
        reply, tensors, data = _train_request(runner, notebook, "train", "train", class_name, hyper, cpu_seconds,
                                              "train")
        if reply.get("status") != "ok":
            return _failure(reply, "train")
        status, message, det = trained(reply, tensors, data, hyper, f"train ({case})")
        details[case] = det
        if status != "pass":
            return status, message, details
        messages.append(message)
    return "pass", "; ".join(messages), details


def manual_functions(found: dict) -> list[str]:
    """``train_manual_update`` first, then the functions a student split it into."""
    names = [n for n in found if n.startswith("train_manual_update")]
    return sorted(names, key=lambda n: (n != "train_manual_update", n))


def check_manual(runner, notebook, class_name, case, functions, cpu_seconds) -> tuple[str, str, dict]:
    """One case of :data:`CASES` through the student's function (or the split function that takes it)."""
    hyper = CASES[case]
    what = f"train_manual_update ({', '.join(f'{k}={v}' for k, v in hyper.items()) or 'plain SGD'})"
    order = sorted(functions, key=lambda n: -sum(h in n.lower() for k in hyper for h in SPLIT_HINTS.get(k, ())))
    mismatch = None
    for function in order or ["train_manual_update"]:
        reply, tensors, data = _train_request(runner, notebook, function, "manual", class_name, hyper, cpu_seconds,
                                              function)
        if reply.get("error_type") == "SignatureMismatch":
            mismatch = mismatch or _failure(reply, function)
            continue
        if reply.get("status") != "ok":
            return _failure(reply, function)
        status, message, details = trained(reply, tensors, data, hyper, what)
        if function != "train_manual_update":
            message += f" (the notebook splits the task: {function} was used)"
            details["function"] = function
        return status, message, details
    return mismatch



def prepare() -> None:
    """Compute the references of every case ahead (while the runner starts)."""
    for hyper in [*CASES.values(), {}, {"momentum": 0.9}]:
        reference(*problem(), **hyper)
