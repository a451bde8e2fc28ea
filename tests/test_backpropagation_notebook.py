"""backpropagation.ipynb in the course's shape, and as students get it: the hand-out built from it.

The notebook follows the mark-up contract (``notebook_contract``): the course's ``MyNet`` and the
test cells given, the body of ``backpropagation`` the one solution region, our derivation and
everything beyond the course tagged ``reference-only``, the course's two tests the last two cells.

``make release`` (``inf265.release``) replaces each region between ``### BEGIN SOLUTION: <message>``
and ``### END SOLUTION`` by ``raise NotImplementedError("<message>")``. The hand-out
must keep the course's ``MyNet`` and the graded function's name, signature and docstring, and, run
top to bottom, stop at its first stub with NotImplementedError, never with a NameError or an
ImportError before it.
"""
import inspect
import re

import nbformat
import pytest
import torch

from inf265 import ROOT
from inf265.nbdefs import load_definitions
from inf265 import release

import notebook_contract
from handouts import first_stop, write_handout

NOTEBOOK = ROOT / "backpropagation.ipynb"


@pytest.fixture(scope="module")
def nb():
    return load_definitions(NOTEBOOK, name="nb_backpropagation_for_handout_tests")


@pytest.fixture(scope="module")
def handout(tmp_path_factory):
    return write_handout(NOTEBOOK, tmp_path_factory.mktemp("handout"))


def test_the_notebook_follows_the_markup_contract():
    notebook_contract.check(NOTEBOOK, ["backpropagation"])
    assert notebook_contract.unknown_names(NOTEBOOK) == {}


def test_the_course_tests_are_the_last_two_cells_and_headings_follow_the_text():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    last = [c for c in nb.cells[-2:]]
    assert [c.cell_type for c in last] == ["code", "code"]
    assert all(not notebook_contract.is_reference_only(c) for c in last)
    assert re.search(r"main_test\(backpropagation, model, data=\"toy\"\)", last[0].source)
    assert re.search(r"main_test\(backpropagation, model, data=\"mnist\"\)", last[1].source)
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("#")]
    for heading in headings:  # the project text's numbers only where its sections are meant
        number = re.match(r"#+ (\d+(\.\d+)*)[. ]", heading)
        assert number is None or number.group(1) in ("2.1", "2.2", "2.3"), heading


def test_the_solution_region_is_the_body_of_backpropagation_and_names_its_section():
    regions = release.regions(nbformat.read(NOTEBOOK, as_version=4), NOTEBOOK.name)
    assert len(regions) == 1
    message = regions[0].message
    assert re.match(r"Section 2\.1: equations \(4\)-\(7\)", message)
    assert "model.dL_dw[l]" in message and "model.dL_db[l]" in message
    assert regions[0].indent == "    "  # inside the function: its def line and docstring ship


def test_the_handout_keeps_mynet_and_the_graded_signature(nb, handout):
    students = load_definitions(handout, name="nb_backpropagation_handout")
    assert inspect.signature(students.backpropagation) == inspect.signature(nb.backpropagation)
    assert students.backpropagation.__doc__ == nb.backpropagation.__doc__, "docstring not shipped"
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        ours = nb.MyNet([2, 3, 2])
        torch.manual_seed(0)
        theirs = students.MyNet([2, 3, 2])
        x = torch.randn(4, 2)
        y_pred = theirs(x)
        assert torch.equal(y_pred, ours(x))  # MyNet is given, not stubbed
        with pytest.raises(NotImplementedError, match=r"^Section 2\.1: equations"):
            students.backpropagation(theirs, torch.zeros(4, 2), y_pred)  # the course's call
    finally:
        torch.set_default_dtype(old)


def test_the_handout_stops_at_its_first_stub(handout, shared_data):
    """Run top to bottom, the hand-out reaches the stub: no NameError or ImportError before it."""
    region = release.regions(nbformat.read(NOTEBOOK, as_version=4), NOTEBOOK.name)[0]
    assert first_stop(handout, "bp_*") == region.message
