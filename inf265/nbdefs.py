"""Import a notebook's definitions without running its heavy cells.

``load_definitions("backpropagation.ipynb")`` returns a module holding what the notebook
defines at top level (imports, functions, classes, and assignments whose value is a literal or a
plain name/attribute), taken from the notebook's own source — never a copy. Statements that do
work (training loops, tests, plots) are skipped. Cells whose first line is ``# NBDEFS: skip``
are skipped entirely; ``# NBDEFS: keep`` keeps a whole cell (e.g. a setup cell that sets the
default dtype).

Used by the tests (the notebook's own ``MyNet`` and ``backpropagation``), by the toy-problems
notebook (same hand-written backpropagation) and by the grader (students' notebooks).
"""
from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import nbformat

_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _literal_assignment(node: ast.stmt) -> bool:
    if not isinstance(node, (ast.Assign, ast.AnnAssign)):
        return False
    value = node.value
    if value is None:
        return False
    for sub in ast.walk(value):
        if isinstance(sub, (ast.Call, ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp,
                            ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            return False
    return True


def _clean(source: str) -> str:
    """Drop IPython magics and shell escapes (lines starting with % or !)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _kept_statements(path: str | Path) -> list[tuple[int, ast.stmt]]:
    """(cell index, statement) for every top-level statement kept from the notebook."""
    nb = nbformat.read(str(path), as_version=4)
    kept, number = [], 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        number += 1
        source = _clean(cell.source)
        first = source.lstrip().splitlines()[0].strip() if source.strip() else ""
        if first.replace(" ", "").lower() == "#nbdefs:skip":
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:  # numbered as Jupyter numbers code cells
            raise SyntaxError(f"{Path(path).name}, code cell {number} (cell index {index}): {exc.msg} "
                              f"(line {exc.lineno})") from None
        keep_all = first.replace(" ", "").lower() == "#nbdefs:keep"
        kept += [(index, n) for n in tree.body if keep_all or isinstance(n, _KEEP) or _literal_assignment(n)]
    return kept


def definitions_source(path: str | Path) -> str:
    """The Python source of the notebook's kept definitions, cell by cell (for reading)."""
    parts, last = [], None
    for index, node in _kept_statements(path):
        if index != last:
            parts.append(f"# --- cell {index} ---")
            last = index
        parts.append(ast.unparse(node))
    return "\n".join(parts) + "\n"


def load_definitions(path: str | Path, name: str | None = None) -> types.ModuleType:
    """Execute the notebook's definitions, one statement at a time, in a fresh module.

    A kept statement other than a ``def``/``class`` that fails (an import of a missing package, or
    ``keep = (targets == 1)`` needing data the notebook computes) is skipped rather than hiding
    every definition after it; the module lists those in ``__nbdefs_skipped__`` as
    ``"<statement> (<error>)"`` strings. A failing ``def``/``class`` raises.
    """
    path = Path(path)
    module = types.ModuleType(name or f"nb_{path.stem}")
    module.__file__ = str(path)
    module.__nbdefs_skipped__ = []
    sys.modules[module.__name__] = module  # dataclasses/pickling look the module up
    filename = f"<{path.name} definitions>"
    for _, node in _kept_statements(path):
        code = compile(ast.Module(body=[node], type_ignores=[]), filename, "exec")
        try:
            exec(code, module.__dict__)
        except Exception as exc:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                raise
            module.__nbdefs_skipped__.append(f"`{ast.unparse(node)[:80]}` ({type(exc).__name__}: {exc})")
    return module
