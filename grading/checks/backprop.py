"""Trusted checks of section 2: the student's ``backpropagation`` judged by the official harness.

The grader chooses the net, the parameters (the harness's parameter points), the data and the
calls (the harness's :func:`call_plan`: every sample at every point, then calls whose stored a/z
come from other parameters); the runner returns what :func:`harness_core.collect`
recorded while making them; here :func:`harness_core.judge` reads record i as the answer
to call i (nothing in a reply says which question it answers) and compares it with autograd,
finite differences and equations (4)-(7) on the stored a/z, on the harness's own
:class:`~harness_core.ReferenceNet`, in this process. A reply that does not fit the
calls is "the reply was invalid", a failed check.

The course's task is one sample at a time with the sum of squared errors on the course's nets
(toy, MNIST, square layers and three hidden layers, all tanh); a batch and other activations are
"beyond the course" checks. Partial credit follows the harness's sub-checks (rubric weights); a
function that used autograd or evaluated the model scores 0, one that does not use the stored
activations loses the autograd share. A beyond-the-course check that cannot be set up from the
student's class (its MyNet takes other arguments) is skipped, never failed.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import torch

from grading.channel import ChannelError, unpack
from grading.registry import BY_ID
from grading.session import BadReply, tensor, text

#: check id -> the net (n_l, activations per layer or None for the course's tanh), data and batch
PLANS = {
    "backprop_toy": {"n_l": [2, 3, 2], "data": "toy"},
    "backprop_mnist": {"n_l": [576, 16, 10], "data": "mnist"},
    "backprop_square": {"n_l": [3, 3, 3, 2], "data": "toy"},
    "backprop_batch": {"n_l": [4, 8, 3], "data": "toy", "batch": True, "n": 16},
    "backprop_activations": {"n_l": [2, 4, 3, 2], "data": "toy", "activations": ["sigmoid", "relu", "identity"]},
    "backprop_deep": {"n_l": [2, 5, 4, 3, 2], "data": "toy"},
}
#: harness sub-checks that share another's weight: without them, that share is not credited
SHARES = {"stored_activations": "autograd"}
#: harness sub-check id -> rubric weight name (the batch sub-check counts as the autograd one)
WEIGHTS = {"runs": "runs", "unchanged": "untouched", "stored": "stored", "autograd": "autograd",
           "autograd_batch": "autograd", "finite_differences": "finite_differences"}
SEED = 265


@functools.lru_cache(maxsize=4)
def harness(path: str):
    """The official harness's core (``harness_core.py`` beside the harness ``path``), imported under a name
    of its own (our file, trusted)."""
    spec = importlib.util.spec_from_file_location("inf265_official_harness_core", Path(path).parent / "harness_core.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def setup(harness_path: str, check_id: str, data_dir: Path | None):
    """(reference net, x, y, points) of a check: the same every time (seeded), computed once. The net
    is only for reading; :func:`reference` gives each check its own."""
    h, plan = harness(harness_path), PLANS[check_id]
    n_l = plan["n_l"]
    net = h.ReferenceNet(n_l, plan.get("activations") or "tanh").to(torch.float64)
    gen = torch.Generator().manual_seed(SEED)  # its own generator: threads grading side by side agree
    with torch.no_grad():
        for layer in net.fc.values():  # nn.Linear's default range, U(-1/sqrt(n_in), 1/sqrt(n_in))
            bound = layer.in_features ** -0.5
            for p in (layer.weight, layer.bias):
                p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 * bound - bound)
    if plan["data"] == "mnist":
        x, y = h.load_mnist_sample(5, torch.float64, root=data_dir)
        n_points = 1
    else:
        x, y = h.toy_data(net, plan.get("n", 10), "sse", torch.float64)
        n_points = 3 if not plan.get("batch") else 2
    return net, x, y, h.parameter_points(net, x, y, "sse", n_points)


def reference(h, check_id: str, points) -> torch.nn.Module:
    """A fresh reference net of a check at its first point (``judge`` moves its parameters, so each
    check, of each submission graded at the same time, has its own)."""
    plan = PLANS[check_id]
    net = h.ReferenceNet(plan["n_l"], plan.get("activations") or "tanh").to(torch.float64)
    h._load_point(net, points[0])
    return net


def _collection(reply: dict, tensors: dict) -> dict:
    try:
        collection = unpack(reply.get("collection"), tensors)
    except ChannelError as exc:
        raise BadReply(str(exc)) from None
    if not isinstance(collection, dict):
        raise BadReply("the harness's record of the calls is not a dict")
    return collection


def verdict(result, weights: dict[str, float]) -> tuple[str, str, float]:
    """(status, message, fraction of the points) from the harness's result."""
    checks = {c.id: c for c in result.checks}
    for gate in ("no_autograd", "runs"):  # gradients not computed by hand, or no run at all: nothing to credit
        if checks.get(gate) is not None and not checks[gate].passed:
            return "fail", f"{checks[gate].name}: {checks[gate].message}", 0.0
    if result.passed:
        return "pass", f"{len(result.checks)} / {len(result.checks)} harness checks passed", 1.0
    if "autograd_batch" in checks:  # beyond the course: the batch comparison is the one that counts
        checks.pop("autograd", None)
    for cid, shared in SHARES.items():
        if cid in checks and not checks[cid].passed:
            checks.pop(shared, None)
    fraction = sum(weights.get(WEIGHTS.get(cid, ""), 0.0) for cid, c in checks.items() if c.passed)
    first = result.failed[0]
    names = "; ".join(c.name for c in result.failed)
    message = f"{len(result.failed)} of {len(result.checks)} harness checks failed ({names}): {first.message}"
    return ("partial" if fraction > 0 else "fail"), message, round(fraction, 4)


def check(runner, notebook: str, check_id: str, ctx) -> tuple[str, str, dict]:
    """One backpropagation check of :data:`PLANS` (see the module docstring)."""
    h = harness(str(ctx.harness))
    plan = PLANS[check_id]
    _, x, y, points = setup(str(ctx.harness), check_id, ctx.data)
    net = reference(h, check_id, points)
    calls = h.call_plan(x.shape[0], len(points), bool(plan.get("batch")))
    tensors = {"x": x, "y": y}
    for p, point in enumerate(points):
        tensors.update({f"point{p}:{key}": t for key, t in point.items()})
    header = {"notebook": notebook, "n_l": plan["n_l"], "activations": plan.get("activations"),
              "n_points": len(points), "plan": calls, "timeout": ctx.check_cpu}
    reply, reply_tensors = runner.request("backprop", header, tensors, cpu_seconds=ctx.check_cpu,
                                          what="backpropagation")
    name = f"MyNet({plan['n_l']})"
    if reply.get("status") == "cannot_build" and BY_ID[check_id].scope == "beyond":
        return "skipped", (f"not set up: {text(reply.get('error'), 500)}; your MyNet takes arguments the course's "
                           f"does not, so this extra check was skipped (it is worth no course points)"), {}
    if reply.get("status") != "ok":
        error = text(reply.get("error", "unknown error"), 1500)
        return "error", f"could not run the check on {name}: {error}", {
            "traceback": text(reply.get("traceback", ""))}
    outputs = tensor(reply_tensors, "outputs", (x.shape[0], plan["n_l"][-1]), f"{name}'s outputs",
                     dtypes=(torch.float64, torch.float32), finite=False)
    with torch.no_grad():
        want = net(x)
    if not torch.allclose(outputs.to(torch.float64), want, rtol=1e-6, atol=1e-9):
        return "fail", (f"the notebook's {name} does not compute the course's forward pass a[l] = f[l](fc[l](a[l-1])) "
                        f"(outputs differ by up to {float((outputs - want).abs().max()):.3g}); its gradients cannot "
                        f"be compared"), {}
    collection = _collection(reply, reply_tensors)
    try:
        result = h.judge(collection, net, x, y, points, loss="sse", eps=1e-6, data=plan["data"], plan=calls)
    except h.InvalidRecords as exc:
        return "fail", f"the reply was invalid: {exc}", {}
    status, message, fraction = verdict(result, ctx.rubric.subcheck_weights)
    details = {"fraction": fraction, "harness_checks": [{"id": c.id, "name": c.name, "passed": c.passed,
                                                        "message": c.message} for c in result.checks]}
    if status != "pass":
        details["harness_report"] = result.failure_message()
    return status, message, details


def prepare(ctx) -> None:
    """Compute every check's reference data ahead (while the runner starts)."""
    for check_id in PLANS:
        setup(str(ctx.harness), check_id, ctx.data)
