"""Calling a student's function the way it was written: arguments matched by parameter name.

Real students write ``train_manual_update(n_epochs, model, loss_fn, train_loader, lr=...,
momentum_coeff=...)``, ``learning_rate``, ``epochs``, ``criterion``, ``trainloader``, add a
``device``, or take ``**kwargs``. :func:`bind` maps the course's roles (``n_epochs``, ``lr``,
``model``, ...) onto the function's own parameters through :data:`ALIASES`; what it cannot map
is a :class:`SignatureMismatch` whose message names the function's parameters and the expected ones.
"""
from __future__ import annotations

import inspect
import re

#: course role -> the parameter names students use for it (compared without case and underscores)
ALIASES = {
    "n_epochs": ("n_epochs", "epochs", "num_epochs", "nb_epochs", "n_epoch", "num_epoch", "number_of_epochs",
                 "max_epochs", "epoch", "nepochs", "total_epochs", "epoch_count", "n_iter", "iterations"),
    "lr": ("lr", "learning_rate", "eta", "step_size", "lr_rate", "learningrate"),
    "model": ("model", "net", "network", "mlp", "classifier", "nn_model"),
    "loss_fn": ("loss_fn", "loss_function", "criterion", "loss", "lossfn", "loss_func", "cost_fn", "loss_fct",
                "cost_function", "lossfunction"),
    "train_loader": ("train_loader", "trainloader", "loader", "dataloader", "data_loader", "train_dataloader",
                     "training_loader", "train_data_loader", "train_data", "training_data", "trainset_loader",
                     "data", "train_set"),
    "val_loader": ("val_loader", "valloader", "valid_loader", "validation_loader", "val_dataloader",
                   "validation_dataloader", "val_data", "validation_data"),
    "optimizer": ("optimizer", "optim", "opt", "optimiser"),
    "momentum": ("momentum", "momentum_coeff", "momentum_coef", "momentum_coefficient", "beta", "mu", "mom",
                 "momentum_factor", "momentum_term"),
    "weight_decay": ("weight_decay", "wd", "l2", "lambda_", "lam", "lmbda", "lamda", "lambd", "l2_reg", "l2_lambda",
                     "lambda_l2", "decay", "weight_decay_coeff", "reg", "l2_regularization", "l2_penalty",
                     "weightdecay", "l2_coeff", "regularization"),
    "dampening": ("dampening", "damp", "tau"),
    "nesterov": ("nesterov", "use_nesterov", "nesterov_momentum"),
    "device": ("device", "dev"),
}
_KEY = {re.sub(r"[_\W]", "", alias.lower()): role for role, aliases in ALIASES.items() for alias in aliases}
#: the course's positional order when a function's names are not recognised at all
POSITIONAL = {"train": ("n_epochs", "optimizer", "model", "loss_fn", "train_loader"),
              "train_manual_update": ("n_epochs", "lr", "model", "loss_fn", "train_loader")}
#: roles that may be left out when their value is the neutral one (no weight decay, no momentum)
NEUTRAL = {"weight_decay": 0, "momentum": 0, "dampening": 0, "nesterov": False}


class SignatureMismatch(TypeError):
    """The function cannot be called with the course's arguments; the message says why."""


def role_of(parameter_name: str) -> str | None:
    return _KEY.get(re.sub(r"[_\W]", "", parameter_name.lower()))


def describe(fn) -> str:
    try:
        return f"{fn.__name__}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return getattr(fn, "__name__", repr(fn))


def bind(fn, values: dict, task: str, extras: dict | None = None, satisfied=()) -> tuple[list, dict, str]:
    """``(args, kwargs, how)`` to call ``fn`` with the course's ``values`` (role -> value).

    ``extras`` (role -> value) fill parameters the course does not ask for but students add
    (``device``, ``val_loader``), only when the function has them without a default. Roles in
    ``satisfied`` need no parameter (the function reads them as globals the caller has set).
    """
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    args, kwargs, used, how = [], {}, set(), []
    extras = extras or {}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    unknown = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        role = role_of(p.name)
        if role in values and role not in used:
            value = values[role]
        elif role in extras and p.default is p.empty:
            value = extras[role]
        elif role in NEUTRAL and p.default is p.empty:
            value = NEUTRAL[role]  # a required weight_decay / momentum the case does not use: off
        elif p.default is not p.empty:
            continue
        else:
            unknown.append(p.name)
            continue
        used.add(role)
        if role != p.name:
            how.append(f"{role} as {p.name}")
        if p.kind is p.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[p.name] = value
    if unknown:
        positional = POSITIONAL.get(task)
        plain = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required = [p for p in plain if p.default is p.empty]
        if positional and len(required) == len(positional) and all(r in values for r in positional) and \
                plain[:len(positional)] == required:
            # nothing recognisable: the course's positional order, as the course's harness called it
            return [values[r] for r in positional], _leftover(values, positional, var_kw), \
                f"positional course order ({', '.join(positional)})"
        raise SignatureMismatch(
            f"signature mismatch: the notebook defines `{describe(fn)}`; cannot tell what to pass as "
            f"{', '.join(unknown)}. Expected the parameters {', '.join(POSITIONAL.get(task, values))}"
            f"{_optional_text(values)} (names such as {_examples(values)} are recognised)")
    missing = [r for r in values if r not in used and r not in satisfied
               and not (r in NEUTRAL and values[r] == NEUTRAL[r])]
    if missing and var_kw:
        kwargs.update({r: values[r] for r in missing})
        how.append(f"{', '.join(missing)} through **kwargs")
        missing = []
    if missing:
        raise SignatureMismatch(
            f"signature mismatch: the notebook defines `{describe(fn)}`, which has no parameter for "
            f"{', '.join(f'{r}={values[r]!r}' for r in missing)} (recognised names: "
            + "; ".join(f"{r}: {', '.join(ALIASES[r][:6])}" for r in missing) + ")")
    return args, kwargs, ("by name" + (f" ({'; '.join(how)})" if how else ""))


def _leftover(values, positional, var_kw) -> dict:
    return {r: v for r, v in values.items() if r not in positional and var_kw and
            not (r in NEUTRAL and v == NEUTRAL[r])}


def _optional_text(values) -> str:
    hyper = [r for r in ("weight_decay", "momentum", "dampening", "nesterov") if r in values]
    return f" and {', '.join(hyper)}" if hyper else ""


def _examples(values) -> str:
    return "; ".join(f"{', '.join(ALIASES[r][:3])}" for r in values if r in ALIASES)
