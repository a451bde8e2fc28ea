"""gradient_descent.ipynb: the notebook's own MyMLP, train and train_manual_update.

The functions are imported from the notebook (``inf265.nbdefs.load_definitions``), never copied.
``train_manual_update`` must end **bitwise** equal to ``train`` with ``torch.optim.SGD``.
"""
import copy
import inspect
import re

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inf265 import ROOT
from inf265.nbdefs import load_definitions

import notebook_contract
from handouts import first_stop, messages, write_handout

NOTEBOOK = ROOT / "gradient_descent.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_definitions(NOTEBOOK)


@pytest.fixture(autouse=True)
def double_one_thread():
    """The notebook's settings (double, one CPU thread), restored afterwards."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.double)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


class DeepMLP(nn.Module):
    """A deeper model: five layers, a Tanh, and one parameter that never gets a gradient."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(768, 64), nn.ReLU(), nn.Linear(64, 48), nn.Tanh(),
                                 nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))
        self.unused = nn.Parameter(torch.ones(3))  # SGD skips it (grad None); so must the manual update

    def forward(self, x):
        return self.net(x)


def _data(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=gen), torch.randint(0, 2, (n,), generator=gen)


def _run_both(nb, make_model, n_epochs, batch_size, seed, **hyper):
    x, y = _data(70, seed)
    torch.manual_seed(seed)
    model_sgd = make_model()
    model_manual = copy.deepcopy(model_sgd)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model_sgd.parameters(), **hyper)
    hyper = dict(hyper)
    lr = hyper.pop("lr")
    losses_sgd = nb.train(n_epochs, opt, model_sgd, loss_fn, nb.make_loader(x, y, batch_size, seed))
    losses_manual = nb.train_manual_update(n_epochs, lr, model_manual, loss_fn,
                                           nb.make_loader(x, y, batch_size, seed), **hyper)
    return model_sgd, model_manual, losses_sgd, losses_manual


def _assert_identical(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), f"parameter {name} differs: max |diff| {(p - q).abs().max().item():.3e}"


hyper_parameters = st.fixed_dictionaries({  # the course's: dampening and Nesterov are beyond it
    "lr": st.floats(0.0, 0.3),
    "momentum": st.one_of(st.just(0.0), st.floats(0.0, 0.99)),
    "weight_decay": st.one_of(st.just(0.0), st.floats(0.0, 0.1)),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hyper=hyper_parameters, batch_size=st.integers(1, 80), n_epochs=st.integers(1, 3),
       deep=st.booleans(), seed=st.integers(0, 2**16))
def test_manual_update_is_bitwise_sgd(nb, hyper, batch_size, n_epochs, deep, seed):
    model_sgd, model_manual, losses_sgd, losses_manual = _run_both(
        nb, DeepMLP if deep else nb.MyMLP, n_epochs, batch_size, seed, **hyper)
    _assert_identical(model_sgd, model_manual)
    assert losses_sgd == losses_manual
    assert len(losses_sgd) == n_epochs


@pytest.mark.parametrize("hyper", [
    {"lr": 0.05},
    {"lr": 0.05, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
])
def test_manual_update_matches_foreach_implementation_too(nb, hyper):
    """torch.optim.SGD's default on CUDA is the foreach implementation: same element-wise results."""
    x, y = _data(70, 1)
    torch.manual_seed(1)
    a = nb.MyMLP()
    b = copy.deepcopy(a)
    loss_fn = nn.CrossEntropyLoss()
    nb.train(3, torch.optim.SGD(a.parameters(), foreach=True, **hyper), a, loss_fn, nb.make_loader(x, y, 16, 1))
    hyper = dict(hyper)
    nb.train_manual_update(3, hyper.pop("lr"), b, loss_fn, nb.make_loader(x, y, 16, 1), **hyper)
    _assert_identical(a, b)


def test_a_wrong_update_is_caught(nb):
    """The comparison is sharp: the same rule written as ``theta - lr * g`` is not bitwise equal."""
    x, y = _data(70, 3)
    torch.manual_seed(3)
    a = nb.MyMLP()
    b = copy.deepcopy(a)
    loss_fn = nn.CrossEntropyLoss()
    nb.train(3, torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), a, loss_fn, nb.make_loader(x, y, 8, 3))
    buffers = {}
    loader = nb.make_loader(x, y, 8, 3)
    for _ in range(3):
        for xb, yb in loader:
            b.zero_grad()
            loss_fn(b(xb), yb).backward()
            with torch.no_grad():
                for p in b.parameters():
                    buf = buffers[p] = p.grad.clone() if p not in buffers else 0.9 * buffers[p] + p.grad
                    p.copy_(p - 0.1 * buf)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) < 1e-9


@pytest.mark.parametrize("bad", [
    {"lr": -0.01},
    {"lr": 0.1, "momentum": -0.1},
    {"lr": 0.1, "weight_decay": -1e-4},
])
def test_invalid_hyper_parameters_raise_like_sgd(nb, bad):
    model = nb.MyMLP()
    with pytest.raises(ValueError):
        torch.optim.SGD(model.parameters(), **bad)
    bad = dict(bad)
    lr = bad.pop("lr")
    x, y = _data(8, 0)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"(?i)invalid"):
        nb.train_manual_update(1, lr, model, nn.CrossEntropyLoss(), nb.make_loader(x, y, 4, 0), **bad)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "raised after training"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lr=st.floats(-1, 1), momentum=st.floats(-1, 1), weight_decay=st.floats(-1, 1))
def test_raises_exactly_when_sgd_raises(nb, lr, momentum, weight_decay):
    model = nb.MyMLP()
    try:
        torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        sgd_raises = False
    except ValueError:
        sgd_raises = True
    try:
        nb.train_manual_update(0, lr, model, nn.CrossEntropyLoss(), [], weight_decay=weight_decay,
                               momentum=momentum)
        manual_raises = False
    except ValueError:
        manual_raises = True
    assert manual_raises == sgd_raises


def test_keyword_names(nb):
    """The graded signatures of section 3.1, as the hand-out gives them."""
    sig = inspect.signature(nb.train_manual_update)
    assert list(sig.parameters) == ["n_epochs", "lr", "model", "loss_fn", "train_loader", "weight_decay",
                                    "momentum"]
    assert [sig.parameters[k].default for k in ("weight_decay", "momentum")] == [0, 0]
    assert list(inspect.signature(nb.train).parameters) == ["n_epochs", "optimizer", "model", "loss_fn", "train_loader"]


def test_mymlp_architecture(nb):
    model = nb.MyMLP()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 128), (128, 32), (32, 2)]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) <= 2
    x = torch.randn(500, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (500, 2) and out.dtype == torch.double
    assert (out < 0).any(), "the output looks rectified: MyMLP must return logits (no activation on the output)"
    # ReLU between layers: the hidden layer is clamped at zero.
    h = torch.relu(linears[0](x.flatten(1)))
    expected = linears[2](torch.relu(linears[1](h)))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_train_returns_mean_epoch_losses(nb):
    """lr=0 leaves the model unchanged, so every epoch's loss is the loss on the whole set."""
    x, y = _data(70, 5)
    torch.manual_seed(5)
    model = nb.MyMLP()
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        full = loss_fn(model(x), y).item()
    losses = nb.train(3, torch.optim.SGD(model.parameters(), lr=0.0), model, loss_fn, nb.make_loader(x, y, 16, 5))
    assert len(losses) == 3
    for value in losses:
        assert value == pytest.approx(full, rel=1e-12)
    manual = nb.train_manual_update(2, 0.0, model, loss_fn, nb.make_loader(x, y, 16, 5))
    assert manual == pytest.approx([full, full], rel=1e-12)


def test_training_lowers_the_loss(nb):
    x, y = _data(64, 6)
    y = (x.flatten(1)[:, :10].sum(dim=1) > 0).long()  # a learnable rule
    torch.manual_seed(6)
    model = nb.MyMLP()
    losses = nb.train_manual_update(15, 0.05, model, nn.CrossEntropyLoss(), nb.make_loader(x, y, 16, 6),
                                    momentum=0.9)
    assert losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------- the students' hand-out (nbgrader)
# The hand-out is make release's (inf265.release): each region between "### BEGIN SOLUTION[: message]"
# and "### END SOLUTION" becomes `raise NotImplementedError("<message>")`; the convention itself is
# tested in tests/test_release.py. These tests check what students of this notebook get.


@pytest.fixture(scope="module")
def handout(tmp_path_factory):
    return write_handout(NOTEBOOK, tmp_path_factory.mktemp("handout"))


def test_the_notebook_follows_the_markup_contract():
    """One solution cell per task of section 3.1 (tasks 1-10, with -b, -c... for more cells), the
    self-check given right after train_manual_update, nothing given that needs our pipeline."""
    notebook_contract.check(NOTEBOOK, ["task1", "task1-b", "task1-c", "task1-d", "task1-e", "task2",
                                       "task3", "task4", "task5", "task5-b", "task6", "task7", "task8",
                                       "task8-b", "task8-c", "task8-d", "task9", "task10", "task10-b"])
    assert notebook_contract.unknown_names(NOTEBOOK) == {}
    cells = notebook_contract.read(NOTEBOOK).cells
    task4 = next(i for i, c in enumerate(cells) if notebook_contract.grade_id(c) == "task4")
    self_check = cells[task4 + 1]
    assert not notebook_contract.is_reference_only(self_check) and notebook_contract.grade_id(self_check) is None
    assert "main_test(train_manual_update)" in self_check.source
    given = [c.source for c in cells[:5] if c.cell_type == "code" and not notebook_contract.is_reference_only(c)]
    assert any("torch.manual_seed(42)" in s and "torch.set_default_dtype(torch.double)" in s and "device" in s
               for s in given), "section 3.3's set-up is given first"
    headings = [c.source.splitlines()[0] for c in cells if c.cell_type == "markdown" and c.source.startswith("## Task")]
    assert [int(re.match(r"## Task (\d+) — ", h).group(1)) for h in headings] == list(range(1, 11)), headings
    for cell in cells:
        if notebook_contract.grade_id(cell) is None and cell.cell_type == "markdown":
            assert "shuffle=True" not in cell.source and "reshuffl" not in cell.source.lower() \
                or notebook_contract.is_reference_only(cell), "the given text never demands reshuffling"


def test_every_region_has_a_message_naming_its_section():
    found = messages(NOTEBOOK)
    assert len(found) >= 10
    for message in found:
        assert re.match(r"Section 3\.1, tasks? \d[\w ,]*: \w", message), message


def test_the_handout_keeps_the_graded_names_and_signatures(nb, handout):
    students = load_definitions(handout, name="nb_handout")
    for name in ("MyMLP", "train", "train_manual_update"):
        assert inspect.signature(getattr(students, name)) == inspect.signature(getattr(nb, name)), name
        assert getattr(students, name).__doc__ == getattr(nb, name).__doc__, f"{name}: docstring not shipped"
    # train_manual_update's defaults are literals, not notebook globals
    defaults = [p.default for p in inspect.signature(students.train_manual_update).parameters.values()
                if p.default is not inspect.Parameter.empty]
    assert defaults == [0, 0]
    # the bodies students write are stubbed
    for call in (lambda: students.MyMLP(), lambda: students.train(1, None, None, None, []),
                 lambda: students.train_manual_update(1, 0.1, None, None, [])):
        with pytest.raises(NotImplementedError, match=r"^Section 3"):
            call()


def test_the_handout_stops_at_its_first_stub(handout, shared_data):
    """Run top to bottom, the hand-out reaches its first stub: no NameError or ImportError before.
    Task cells are empty to write in; the first given code that calls a student's function is the
    public self-check, right after train_manual_update, so that is where an untouched hand-out stops."""
    stop = first_stop(handout, "gd_*")
    expected = [m for m in messages(NOTEBOOK) if "update by hand" in m]
    assert stop in expected, f"stopped at {stop!r}, not at train_manual_update's stub {expected}"
