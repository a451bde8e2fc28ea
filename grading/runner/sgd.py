"""Runner requests of section 3: probe the student's model classes, run ``train`` / ``train_manual_update``.

Each handler gets the loaded student module and the request, and returns plain data: the
outputs or the parameters after training. The trusted side compares them with its own
``torch.optim.SGD`` run; nothing here decides a verdict.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch.utils.data import DataLoader, TensorDataset

from . import calls, models


def probe_models(module, weights: list[torch.Tensor], x: torch.Tensor) -> tuple[dict, dict]:
    """Each candidate class built, given the course weights, and run on ``x``."""
    report, outputs = [], {}
    for cls in models.candidates(module):
        entry = {"class": cls.__name__}
        try:
            model = models.instantiate(cls)
            entry["loaded"] = models.load_weights(model, weights)
            with torch.no_grad():
                outputs[cls.__name__] = model(x.clone())
        except Exception as exc:  # noqa: BLE001 - student code
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        report.append(entry)
    return {"classes": report}, outputs


def _loader(x, y, batch_size):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _model(module, class_name, weights):
    if class_name:
        cls = getattr(module, class_name)
        model = models.instantiate(cls)
    else:
        model = models.course_mlp().to(torch.float64)
    models.load_weights(model, weights)
    return model


def _losses(value) -> list[float] | None:
    """The function's return value as a list of numbers, when it is one (per-epoch losses)."""
    if isinstance(value, tuple) and value:
        value = value[0]
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def run_training(module, request: dict, tensors: dict) -> tuple[dict, dict]:
    """Train a fresh model from the request's weights with the student's function; its parameters."""
    weights = [tensors[f"w{i}"] for i in range(6)]
    model = _model(module, request.get("class"), weights)
    train_loader = _loader(tensors["x"], tensors["y"], request["batch_size"])
    val_loader = _loader(tensors["x"], tensors["y"], request["batch_size"])
    loss_fn = torch.nn.CrossEntropyLoss()
    hyper = dict(request["hyper"])
    fn = getattr(module, request["function"])
    values = {"n_epochs": request["epochs"], "model": model, "loss_fn": loss_fn, "train_loader": train_loader}
    if request["kind"] == "train":
        values["optimizer"] = torch.optim.SGD(model.parameters(), **hyper)
    else:
        values.update(hyper)
    task = "train" if request["kind"] == "train" else "train_manual_update"
    # globals the function reads instead of its parameters (a notebook-level `train_loader`, `device`)
    injected = _inject(module, fn, {"train_loader": train_loader, "val_loader": val_loader,
                                    "device": torch.device("cpu"), "loss_fn": loss_fn, "model": model})
    satisfied = {calls.role_of(n) for n in injected}  # read as globals, not taken as parameters
    args, kwargs, how = calls.bind(fn, values, task, extras={"device": torch.device("cpu"),
                                                             "val_loader": val_loader}, satisfied=satisfied)
    if injected:
        how += f"; the notebook-level {', '.join(injected)} replaced by the grader's"
    seen = []
    hook = model.register_forward_pre_hook(lambda module, inputs: _record(seen, module, inputs))
    try:
        returned = fn(*args, **kwargs)
    finally:
        hook.remove()
    params = {f"p{i}": p for i, p in enumerate(models.read_weights(model))}
    params.update({f"seen{i}": t for i, t in enumerate(seen[:MAX_SEEN])})
    return {"called": f"{calls.describe(fn)} {how}", "injected": injected, "losses": _losses(returned)}, params


MAX_SEEN = 64  # training forwards recorded (the grader's problem has 6)


def _record(seen: list, module, inputs) -> None:
    """The input of a training forward of the model (grad mode on, train mode): what the model saw."""
    if torch.is_grad_enabled() and module.training and inputs and isinstance(inputs[0], torch.Tensor) \
            and len(seen) <= MAX_SEEN:
        seen.append(inputs[0].detach().clone())


#: globals a function may read instead of its parameters: replaced by the grader's objects
ALWAYS = ("train_loader", "val_loader", "model")


def global_names(fn) -> set[str]:
    """Global names a function's code (and the code nested in it) reads."""
    names, todo = set(), [getattr(fn, "__code__", None)]
    while todo:
        code = todo.pop()
        if code is not None:
            names |= set(code.co_names)
            todo += [k for k in code.co_consts if hasattr(k, "co_names")]
    return names


def injectable(name: str) -> bool:
    """A global name the grader provides: a loader (``*loader*``), the model, the device, the loss."""
    role = calls.role_of(name)
    return role in ("device", "loss_fn", "model") or (role in ("train_loader", "val_loader") and "loader" in name.lower())


def _inject(module, fn, provided: dict) -> list[str]:
    """Set the module globals the function reads in place of its parameters (a notebook-level
    ``train_loader``, ``device``): loaders and the model always, the rest only when missing."""
    done = []
    for name in sorted(global_names(fn)):
        role = calls.role_of(name)
        if not injectable(name) or role not in provided:
            continue
        current = vars(module).get(name, _MISSING)
        definition = inspect.isclass(current) or inspect.ismodule(current) or inspect.isroutine(current)
        if current is _MISSING or (role in ALWAYS and not definition):
            setattr(module, name, provided[role])
            done.append(name)
    return done


_MISSING = object()
