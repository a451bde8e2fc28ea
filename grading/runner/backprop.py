"""Runner request of section 2: the student's ``backpropagation`` on a net and data the grader chose.

The student's ``MyNet(n_l)`` is built (with the activations the request names set in ``f`` /
``df``), and the official harness's :func:`collect` makes the calls the request lists (its
``plan``: which point, which samples, stale or not) under its guard. The reply is the collection
(plain data and tensors) and the model's outputs at the first point; the trusted grader reads
record i as the answer to its call i and judges them.
"""
from __future__ import annotations

import torch

import harness_core as harness
from grading.channel import pack


def function(module):
    """The student's ``backpropagation``: the notebook's function, or a method of its MyNet taking the
    model as first argument (``MyNet.backpropagation(model, y_true, y_pred)``)."""
    fn = vars(module).get("backpropagation")
    if fn is None:
        fn = getattr(getattr(module, "MyNet", None), "backpropagation", None)
    if fn is None:
        raise LookupError("the notebook defines no backpropagation function")
    return fn


def run(module, request: dict, tensors: dict) -> tuple[dict, dict]:
    n_l = [int(n) for n in request["n_l"]]
    try:
        model = module.MyNet(n_l).to(torch.float64)
    except Exception as exc:  # noqa: BLE001 - the student's class takes other arguments: not set up
        return {"status": "cannot_build", "error": f"MyNet({n_l}) cannot be built the way the course builds it "
                                                   f"({type(exc).__name__}: {str(exc)[:300]})"}, {}
    for l, name in enumerate(request.get("activations") or [], start=1):
        model.f[l], model.df[l] = harness.ACTIVATIONS[name]
    keys = [f"fc[{l}].{kind}" for l in range(1, len(n_l)) for kind in ("weight", "bias")]
    points = [{key: tensors[f"point{p}:{key}"] for key in keys} for p in range(int(request["n_points"]))]
    x, y = tensors["x"], tensors["y"]
    with torch.no_grad():
        for key in keys:
            l, kind = int(key[3:key.index("]")]), key.rsplit(".", 1)[1]
            getattr(model.fc[str(l)], kind).copy_(points[0][key])
        outputs = model(x).detach().clone()
    collection = harness.collect(function(module), model, x, y, points, loss="sse", plan=request["plan"],
                                 timeout=float(request["timeout"]))
    data, out = pack(collection, prefix="c")
    out["outputs"] = outputs
    return {"collection": data}, out
