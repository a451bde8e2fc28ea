"""Exactness check of a student's ``train_manual_update`` (and ``train``) against ``torch.optim.SGD``.

Both runs start from the same initial weights (a ``deepcopy`` of one model) and see the same
batches in the same order (a fixed list of ``(x, y)`` batches, no shuffling), so a correct
manual update ends with every parameter **bitwise** equal (``torch.equal``) to the reference:
the standard loop ``zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()``.

On a mismatch the student's weights are compared with ``torch.optim.SGD`` runs that leave one
term out (weight decay, momentum, dampening, Nesterov), flip the sign, or do not zero the
gradients, to name the likely mistake.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

N_EPOCHS = 2
BATCHES, BATCH_SIZE = 3, 8
LR = 0.01
# case -> keyword arguments (beyond lr) of torch.optim.SGD and of train_manual_update
CASES = {
    "plain": {},
    "weight_decay": {"weight_decay": 0.01},
    "momentum": {"momentum": 0.9},
    "dampening": {"momentum": 0.9, "dampening": 0.3},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "combined": {"momentum": 0.8, "weight_decay": 0.001},
}
# relative difference under which two runs are "the same up to rounding"
ROUNDING = 1e-9


def _first_linear(model: nn.Module) -> nn.Linear:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return m
    raise TypeError("the student's MyMLP has no nn.Linear layer; cannot choose the input size")


def setup(MyMLP, seed: int = 0):
    """(initial model, fixed list of batches, loss function)."""
    torch.manual_seed(seed)
    model = MyMLP()
    first = _first_linear(model)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    dtype = first.weight.dtype
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(BATCH_SIZE, first.in_features, generator=g, dtype=dtype),
                torch.randint(0, last.out_features, (BATCH_SIZE,), generator=g))
               for _ in range(BATCHES)]
    return model, batches, nn.CrossEntropyLoss()


def reference(model0, batches, loss_fn, zero_grad=True, **sgd):
    """Parameters after the standard torch.optim.SGD loop from a copy of ``model0``."""
    model = copy.deepcopy(model0)
    optimizer = torch.optim.SGD(model.parameters(), lr=sgd.pop("lr", LR), **sgd)
    for _ in range(N_EPOCHS):
        for x, y in batches:
            if zero_grad:
                optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def _compare(got, want):
    """(bitwise equal, max abs difference, max relative difference)."""
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return False, float("inf"), float("inf")
    equal = all(torch.equal(g, w) for g, w in zip(got, want))
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want))
    scale = max(float(w.abs().max()) for w in want) or 1.0
    return equal, diff, diff / scale


def _diagnose(got, model0, batches, loss_fn, kwargs) -> str:
    """Name the likely mistake: a torch.optim.SGD variant the student's weights match."""
    variants = []
    if kwargs.get("weight_decay"):
        variants.append(("weight decay is missing (the term weight_decay * p added to the gradient)",
                         {**kwargs, "weight_decay": 0}))
    if kwargs.get("momentum"):
        variants.append(("momentum is missing (no momentum buffer)",
                         {k: v for k, v in kwargs.items() if k not in ("momentum", "dampening", "nesterov")}))
    if kwargs.get("dampening"):
        variants.append(("dampening is ignored (buffer update b = momentum * b + (1 - dampening) * g)",
                         {**kwargs, "dampening": 0}))
    if kwargs.get("nesterov"):
        variants.append(("the Nesterov step is missing (g = g + momentum * b)", {**kwargs, "nesterov": False}))
    variants.append(("the update goes uphill (sign of the step flipped)", {**kwargs, "maximize": True}))
    for text, variant in variants:
        if _compare(got, reference(model0, batches, loss_fn, **variant))[2] < ROUNDING:
            return text
    if _compare(got, reference(model0, batches, loss_fn, zero_grad=False, **kwargs))[2] < ROUNDING:
        return "the gradients are not zeroed between steps (they accumulate)"
    if _compare(got, [p.detach().clone() for p in model0.parameters()])[1] == 0:
        return "the parameters were not updated at all (updated a copy, or outside the model?)"
    if kwargs.get("momentum") and kwargs.get("dampening"):
        return ("with momentum and dampening: torch.optim.SGD starts the buffer at b = g on the first "
                "step (no dampening), then b = momentum * b + (1 - dampening) * g")
    return "no simple variant of torch.optim.SGD matches; compare your update with its documented algorithm"


def _verdict(got, want, model0, batches, loss_fn, kwargs, what):
    equal, diff, rel = _compare(got, want)
    details = {"max_abs_difference": diff, "max_relative_difference": rel, "hyperparameters": {"lr": LR, **kwargs},
               "epochs": N_EPOCHS, "batches": BATCHES, "batch_size": BATCH_SIZE}
    if equal:
        return True, f"{what}: every parameter bitwise equal to torch.optim.SGD (torch.equal)", details
    if rel < ROUNDING:
        return "partial", (f"{what}: equal only up to rounding (max abs difference {diff:.3g}); write the update "
                           f"with the same operations as torch.optim.SGD (e.g. p.add_(g, alpha=-lr)) to be "
                           f"bitwise equal"), details
    cause = _diagnose(got, model0, batches, loss_fn, kwargs)
    return False, f"{what}: parameters differ from torch.optim.SGD (max abs difference {diff:.3g}); likely cause: {cause}", details


def check_train(MyMLP, train):
    """The student's ``train`` with a torch.optim.SGD optimizer vs the standard loop (plain, momentum)."""
    model0, batches, loss_fn = setup(MyMLP)
    messages, details = [], {}
    for case in ("plain", "momentum"):
        kwargs = CASES[case]
        model = copy.deepcopy(model0)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, **kwargs)
        train(N_EPOCHS, optimizer, model, loss_fn, list(batches))
        got = [p.detach().clone() for p in model.parameters()]
        passed, message, det = _verdict(got, reference(model0, batches, loss_fn, **kwargs), model0, batches,
                                        loss_fn, kwargs, f"train ({case})")
        details[case] = det
        if passed is not True:
            return passed, message, details
        messages.append(message)
    return True, "; ".join(messages), details


def check_manual(MyMLP, train_manual_update, case: str):
    """The student's ``train_manual_update`` vs ``torch.optim.SGD`` for one case of :data:`CASES`."""
    kwargs = CASES[case]
    model0, batches, loss_fn = setup(MyMLP)
    model = copy.deepcopy(model0)
    try:
        train_manual_update(N_EPOCHS, LR, model, loss_fn, list(batches), **kwargs)
    except TypeError as exc:
        if "unexpected keyword" in str(exc) or "positional argument" in str(exc):
            return False, (f"train_manual_update cannot be called as train_manual_update(n_epochs, lr, model, "
                           f"loss_fn, train_loader, {', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): "
                           f"{exc}"), {}
        raise
    got = [p.detach().clone() for p in model.parameters()]
    want = reference(model0, batches, loss_fn, **kwargs)
    return _verdict(got, want, model0, batches, loss_fn, kwargs,
                    f"train_manual_update ({', '.join(f'{k}={v}' for k, v in kwargs.items()) or 'plain SGD'})")
