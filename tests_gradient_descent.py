"""Public self-check of ``train_manual_update`` (INF265 Project 1, section 3, tasks 4, 6 and 7).

Keep this file next to your notebook and run, once ``train_manual_update`` is written::

    from tests_gradient_descent import main_test
    main_test(train_manual_update)

It trains two copies of one small MLP (768 -> 16 -> 2, ReLU) from the same initial weights on the
same mini-batches, one with your ``train_manual_update`` and one with ``torch.optim.SGD``, and
compares their parameters in four cases: plain SGD (task 4), weight decay (task 6), momentum
(task 7), and both. One PASSED/FAILED line per case: parameters equal to SGD's within 1e-12
relative pass, and the line says whether they are bitwise equal (section 3.3 of the project text
says how to get bitwise equality). A FAILED line shows the worst entry (yours against SGD's) and
the likely cause.

Your function is called by its parameters' names, so both the course's skeleton
``train_manual_update(n_epochs, model, loss_fn, train_loader, lr=1e-2, momentum_coeff=0.,
weight_decay=0.)`` and ``train_manual_update(n_epochs, lr, model, loss_fn, train_loader,
weight_decay=0, momentum=0)`` work (:data:`NAMES` lists the names recognised for each argument).

``main_test`` prints the report, returns a :class:`GDTestResult`, and raises ``AssertionError``
when a case fails; a ``NotImplementedError`` from your function (the hand-out's stub) is raised as
it is. These are the public checks: the grader runs more, and names the same mistakes (from
``harness_core.py``, which must sit beside this file). The global random state and the default
dtype are left as found. Needs only torch.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from harness_core import sgd_diagnose, sgd_reference  # beside this file: the grader's SGD reference and mistakes

SEED = 265
N_EPOCHS, N_BATCHES, BATCH_SIZE, LR = 2, 3, 8, 0.01
IN_SHAPE = (3, 16, 16)                 # one CIFAR-10 image at 16x16, as in the project
RELATIVE = 1e-12
"""Largest difference allowed, relative to the largest parameter entry of SGD's model."""

#: (name, hyper-parameters beyond lr), the names those of torch.optim.SGD
CASES = (
    ("plain SGD (task 4)", {}),
    ("weight decay 0.01 (task 6)", {"weight_decay": 0.01}),
    ("momentum 0.9 (task 7)", {"momentum": 0.9}),
    ("momentum 0.8 and weight decay 0.001 (tasks 6 and 7)", {"momentum": 0.8, "weight_decay": 0.001}),
)

#: argument -> parameter names recognised for it (compared without case and underscores)
NAMES = {
    "n_epochs": ("n_epochs", "epochs", "num_epochs", "n_epoch", "nb_epochs"),
    "lr": ("lr", "learning_rate", "eta", "alpha", "step_size"),
    "model": ("model", "net", "network"),
    "loss_fn": ("loss_fn", "loss_function", "loss_func", "criterion", "loss"),
    "train_loader": ("train_loader", "trainloader", "loader", "dataloader", "data_loader", "train_dataloader"),
    "momentum": ("momentum", "momentum_coeff", "momentum_coef", "mu", "beta"),
    "weight_decay": ("weight_decay", "wd", "l2", "l2_reg", "decay", "lambda_", "lmbda"),
    "device": ("device",),
}
_ROLE = {name.replace("_", ""): role for role, names in NAMES.items() for name in names}
_REQUIRED = ("n_epochs", "lr", "model", "loss_fn", "train_loader")


def main_test(train_manual_update, device="cpu", verbose=False) -> "GDTestResult":
    """Compare ``train_manual_update`` with ``torch.optim.SGD``; print a report; raise if it differs.

    device : where the models and the mini-batches live (e.g. your notebook's ``device``).
    verbose : also print the largest difference of every parameter tensor, case by case.

    Returns a :class:`GDTestResult`; raises ``AssertionError`` when a case fails, ``TypeError``
    when the function cannot be called with the course's arguments (the message says why).
    """
    call = Call(train_manual_update)
    device = torch.device(device)
    with _isolated(device):
        problem = Problem.make(device)
        checks = [_run_case(call, problem, name, hyper) for name, hyper in CASES]
    result = GDTestResult(call.describe(), checks)
    _print_report(result, problem, verbose)
    if not result.passed:
        raise AssertionError(result.failure_message())
    return result


# ============================================================================================
# results
# ============================================================================================
@dataclass
class Check:
    """One case: passed, the line's message, and the largest difference of each parameter."""

    name: str
    passed: bool
    message: str
    bitwise: bool = False
    relative: float = float("nan")
    differences: dict = field(default_factory=dict)

    def line(self) -> str:
        return f" {'PASSED' if self.passed else 'FAILED'}  {self.name}: {self.message}"


@dataclass
class GDTestResult:
    """What ``main_test`` found: truthy when every case passed."""

    call: str
    checks: list

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        n, total = sum(c.passed for c in self.checks), len(self.checks)
        if self.passed:
            return f" {n} / {total}: public checks passed (the grader runs more)"
        return f" {n} / {total}: SOME CHECKS FAILED, see the FAILED lines above"

    def failure_message(self) -> str:
        failed = [c for c in self.checks if not c.passed]
        return "\n".join([f"train_manual_update differs from torch.optim.SGD in {len(failed)} of "
                          f"{len(self.checks)} cases:"] + [f"- {c.name}: {c.message}" for c in failed])


# ============================================================================================
# calling the student's function by its parameters' names
# ============================================================================================
class Call:
    """How to call a ``train_manual_update``: each parameter's argument, found from its name."""

    def __init__(self, fn):
        if not callable(fn):
            raise TypeError(f"main_test needs your function train_manual_update, got {type(fn).__name__}")
        self.fn = fn
        self.params = list(inspect.signature(fn).parameters.values())
        self.roles = {p.name: _ROLE.get(p.name.lower().replace("_", "")) for p in self.params}
        self.var_keyword = any(p.kind is p.VAR_KEYWORD for p in self.params)
        self._validate()

    def _validate(self) -> None:
        unknown = [p.name for p in self._plain() if self.roles[p.name] is None and p.default is p.empty]
        missing = [r for r in _REQUIRED if r not in self.roles.values() and not self.var_keyword]
        if unknown or missing:
            problem = (f"it does not know what to pass as {', '.join(unknown)}" if unknown else
                       f"it has no parameter for {', '.join(missing)}")
            raise TypeError(
                f"main_test cannot call {self.describe()}: {problem}. Name the parameters as in "
                f"train_manual_update(n_epochs, lr, model, loss_fn, train_loader, weight_decay=0, momentum=0); "
                "recognised names: " + "; ".join(f"{r}: {', '.join(n)}" for r, n in NAMES.items()))

    def _plain(self):
        return [p for p in self.params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def describe(self) -> str:
        return f"{getattr(self.fn, '__name__', 'train_manual_update')}{inspect.signature(self.fn)}"

    def missing(self, values: dict) -> list[str]:
        """The arguments among ``values`` (non-zero ones) the function has no parameter for."""
        have = set(self.roles.values())
        return [r for r, v in values.items() if r not in have and v != 0 and not self.var_keyword]

    def __call__(self, values: dict):
        args, kwargs = [], {}
        for p in self._plain():
            role = self.roles[p.name]
            if role in values:
                value = values[role]
            elif p.default is p.empty:
                value = 0  # a required weight_decay or momentum this case does not use: off
            else:
                continue
            if p.kind is p.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[p.name] = value
        if self.var_keyword:
            used = {self.roles[p.name] for p in self._plain()}
            kwargs.update({r: v for r, v in values.items() if r not in used and r != "device"})
        return self.fn(*args, **kwargs)


# ============================================================================================
# the problem and SGD's answer
# ============================================================================================
class MLP(nn.Module):
    """A small MLP on CIFAR-sized inputs: flatten, 768 -> 16, ReLU, 16 -> 2."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3 * 16 * 16, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


@dataclass
class Problem:
    """Initial weights and mini-batches, in float64 on ``device``; fresh models and loaders from them."""

    weights: list
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device

    @classmethod
    def make(cls, device) -> "Problem":
        torch.manual_seed(SEED)
        weights = [p.detach().to(device, torch.float64) for p in MLP().parameters()]
        gen = torch.Generator().manual_seed(SEED)
        n = N_BATCHES * BATCH_SIZE
        x = torch.randn(n, *IN_SHAPE, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 2, (n,), generator=gen)
        return cls(weights, x.to(device), y.to(device), device)

    def model(self) -> MLP:
        model = MLP().to(self.device, torch.float64)
        with torch.no_grad():
            for p, w in zip(model.parameters(), self.weights):
                p.copy_(w)
        return model

    def loader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=BATCH_SIZE, shuffle=False)

    def sgd(self, zero_grad=True, mistake=None, **hyper) -> list:
        """The parameters after the standard loop with torch.optim.SGD (or one of its common mistakes)."""
        epochs = [list(self.loader()) for _ in range(N_EPOCHS)]
        return sgd_reference(self.model(), epochs, LR, zero_grad, mistake, **hyper)


# ============================================================================================
# one case
# ============================================================================================
def _run_case(call: Call, problem: Problem, name: str, hyper: dict) -> Check:
    missing = call.missing(hyper)
    if missing:
        return Check(name, False, f"train_manual_update has no parameter for {', '.join(missing)} (recognised "
                                  "names: " + "; ".join(', '.join(NAMES[r]) for r in missing) + ")")
    model = problem.model()
    values = {"n_epochs": N_EPOCHS, "lr": LR, "model": model, "loss_fn": nn.CrossEntropyLoss(),
              "train_loader": problem.loader(), "device": problem.device, **hyper}
    try:
        call(values)
    except NotImplementedError:
        raise  # the hand-out's stub: not written yet
    except Exception as exc:  # noqa: BLE001 - a student's function may raise anything
        return Check(name, False, f"raised {type(exc).__name__}: {exc}")
    got = [p.detach() for p in model.parameters()]
    return _judge(name, got, problem, hyper, [n for n, _ in model.named_parameters()])


def _judge(name, got, problem: Problem, hyper, names) -> Check:
    want = problem.sgd(**hyper)
    bitwise, relative, worst = _compare(got, want)
    differences = {n: (g - w).abs().max().item() for n, g, w in zip(names, got, want)}
    if bitwise:
        return Check(name, True, "every parameter bitwise equal to torch.optim.SGD's", True, 0.0, differences)
    if relative <= RELATIVE:
        return Check(name, True, f"equal to torch.optim.SGD's within {RELATIVE:g} relative, not bitwise "
                                 f"(largest relative difference {relative:.1e})", False, relative, differences)
    i, index = worst
    where = f"{names[i]}[{', '.join(map(str, index))}]"
    message = (f"largest difference at {where}: yours {got[i][index].item():.10g}, SGD's "
               f"{want[i][index].item():.10g} (relative {relative:.1e}); {_diagnose(got, problem, hyper)}")
    return Check(name, False, message, False, relative, differences)


def _compare(got, want) -> tuple[bool, float, tuple]:
    """(bitwise equal, largest |difference| / largest |SGD entry|, (tensor, index) of the largest difference)."""
    if [g.shape for g in got] != [w.shape for w in want]:
        raise AssertionError("the model's parameters changed shape during training")
    bitwise = all(torch.equal(g, w) for g, w in zip(got, want))
    diffs = [(g - w).abs().nan_to_num(float("inf")) for g, w in zip(got, want)]
    i = max(range(len(diffs)), key=lambda k: diffs[k].max().item())
    index = tuple(int(v) for v in torch.unravel_index(diffs[i].argmax(), diffs[i].shape))
    scale = max(w.abs().max().item() for w in want)
    return bitwise, diffs[i].max().item() / scale, (i, index)


def _close(got, want) -> bool:
    return _compare(got, want)[1] <= RELATIVE


def _diagnose(got, problem: Problem, hyper: dict) -> str:
    """The likely mistake (the grader's own list: harness_core.sgd_mistakes)."""
    return "likely cause: " + sgd_diagnose(got, problem.weights, hyper, problem.sgd, _close)


# ============================================================================================
# report and state
# ============================================================================================
def _print_report(result: GDTestResult, problem: Problem, verbose: bool):
    """Short by default: a header, one PASSED line naming the cases that passed, each FAILED case with
    its message, the summary; ``verbose``: every case's line and its largest differences."""
    print(f"\n Check train_manual_update against torch.optim.SGD, called as {result.call} ({N_EPOCHS} epochs of "
          f"{N_BATCHES} mini-batches of {BATCH_SIZE} inputs {'x'.join(map(str, IN_SHAPE))}, MLP 768-16-2, "
          f"cross-entropy, lr {LR}, float64 on {problem.device.type})")
    passed = [c for c in result.checks if c.passed]
    if passed and not verbose:
        bitwise = "bitwise equal" if all(c.bitwise for c in passed) else "equal within 1e-12"
        print(f" PASSED  {'; '.join(c.name for c in passed)} ({bitwise})")
    for check in result.checks if verbose else [c for c in result.checks if not c.passed]:
        print(check.line())
        if verbose:
            for name, diff in check.differences.items():
                print(f"           {name:<12} largest |yours - SGD's| {diff:.3e}")
    print(result.summary())


@contextlib.contextmanager
def _isolated(device: torch.device):
    """float64 by default (section 3.3), the global random state forked: both restored afterwards."""
    dtype = torch.get_default_dtype()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)
