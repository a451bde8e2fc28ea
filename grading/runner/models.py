"""The course's MLP, and finding and loading the student's model class by what it computes.

``course_mlp()`` is the architecture of section 3 (768 -> 128 -> 32 -> 2, ReLU, logits out). The
trusted checks build their reference from it; the runner falls back to it when the student's
class does not compute the same function, so that ``train_manual_update`` is still judged.
This module imports no student code; :func:`candidates` inspects a loaded student module.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

IN_SHAPE = (3, 16, 16)
LAYERS = (768, 128, 32, 2)


def course_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(768, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU(),
                         nn.Linear(32, 2))


def weight_shapes() -> list[tuple[int, ...]]:
    shapes = []
    for n_in, n_out in zip(LAYERS[:-1], LAYERS[1:]):
        shapes += [(n_out, n_in), (n_out,)]
    return shapes


def load_weights(model: nn.Module, weights: list[torch.Tensor]) -> str:
    """Copy the course-ordered ``weights`` (W1, b1, W2, b2, W3, b3) into ``model``'s parameters.

    Matched by order when the shapes agree in order, else by shape (the six shapes differ), so a
    class that declares its layers in another order still gets each tensor where it belongs.
    Returns how; raises ValueError when the parameters are not those of a 768-128-32-2 MLP.
    """
    params = list(model.parameters())
    shapes = [tuple(p.shape) for p in params]
    want = weight_shapes()
    if shapes == want:
        order, how = list(range(len(params))), "in order"
    elif sorted(shapes) == sorted(want):
        order, how = [shapes.index(s) for s in want], "by shape"
    else:
        raise ValueError(f"its parameters have shapes {shapes}, not those of a 768-128-32-2 MLP {want}")
    with torch.no_grad():
        for i, w in zip(order, weights):
            params[i].copy_(w.to(params[i].dtype))
    return how


def read_weights(model: nn.Module) -> list[torch.Tensor]:
    """The parameters back in course order (see :func:`load_weights`)."""
    params = list(model.parameters())
    shapes = [tuple(p.shape) for p in params]
    want = weight_shapes()
    order = list(range(len(params))) if shapes == want else [shapes.index(s) for s in want]
    return [params[i].detach().clone() for i in order]


def candidates(module) -> list[type]:
    """The ``nn.Module`` subclasses the notebook defines, ``MyMLP`` first."""
    found = [obj for name, obj in vars(module).items()
             if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__]
    return sorted(found, key=lambda c: (c.__name__ != "MyMLP", c.__name__.lower() not in ("mlp", "mymlp")))


def instantiate(cls) -> nn.Module:
    """An instance built without arguments (the course's ``MyMLP()``), in float64 on the CPU."""
    return cls().to(device="cpu", dtype=torch.float64)
