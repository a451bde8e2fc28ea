"""The notebook-definitions loader keeps definitions and skips work."""
import nbformat
import pytest

from inf265.nbdefs import load_definitions


def _nb(tmp_path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


def test_keeps_definitions_and_skips_work(tmp_path):
    path = _nb(tmp_path,
               "import math\nN = 3\nACT = {'sq': lambda x: x * x}\n%matplotlib inline",
               "def f(x):\n    return math.sqrt(x) * N\nraise RuntimeError('heavy cell ran')",
               "class A:\n    pass\nresult = f(4)")
    mod = load_definitions(path)
    assert mod.f(4) == 6.0 and mod.ACT["sq"](3) == 9 and isinstance(mod.A(), mod.A)
    assert not hasattr(mod, "result")


def test_markers(tmp_path):
    path = _nb(tmp_path, "# NBDEFS: keep\nx = sum([1, 2])", "# NBDEFS: skip\ndef g():\n    pass")
    mod = load_definitions(path)
    assert mod.x == 3 and not hasattr(mod, "g")


def test_syntax_error_names_the_cell(tmp_path):
    path = _nb(tmp_path, "x = 1", "def broken(:\n    pass")
    with pytest.raises(SyntaxError, match=r"code cell 2 \(cell index 1\)"):
        load_definitions(path)


def test_a_statement_needing_computed_data_is_skipped_not_fatal(tmp_path):
    path = _nb(tmp_path, "import math", "targets = load()\nkeep = (targets == 1)", "def f():\n    return math.pi")
    mod = load_definitions(path)
    assert mod.f() == mod.math.pi
    assert len(mod.__nbdefs_skipped__) == 1 and "NameError" in mod.__nbdefs_skipped__[0]
