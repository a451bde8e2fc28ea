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


def definitions_source(path: str | Path) -> str:
    """The Python source of the notebook's definitions, cell by cell."""
    nb = nbformat.read(str(path), as_version=4)
    parts = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        source = _clean(cell.source)
        first = source.lstrip().splitlines()[0].strip() if source.strip() else ""
        if first.replace(" ", "").lower() == "#nbdefs:skip":
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError as exc:
            raise SyntaxError(f"{Path(path).name}, code cell at index {index}: {exc.msg} "
                              f"(line {exc.lineno})") from None
        if first.replace(" ", "").lower() == "#nbdefs:keep":
            kept = tree.body
        else:
            kept = [n for n in tree.body if isinstance(n, _KEEP) or _literal_assignment(n)]
        if kept:
            parts.append(f"# --- cell {index} ---\n" + ast.unparse(ast.Module(body=kept, type_ignores=[])))
    return "\n\n".join(parts) + "\n"


def load_definitions(path: str | Path, name: str | None = None) -> types.ModuleType:
    """Execute the notebook's definitions in a fresh module and return it."""
    path = Path(path)
    module = types.ModuleType(name or f"nb_{path.stem}")
    module.__file__ = str(path)
    code = compile(definitions_source(path), f"<{path.name} definitions>", "exec")
    sys.modules[module.__name__] = module  # dataclasses/pickling look the module up
    exec(code, module.__dict__)
    return module
