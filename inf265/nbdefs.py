"""Import a notebook's definitions without running its heavy cells.

``load_definitions("backpropagation.ipynb")`` returns a module holding what the notebook
defines at top level (imports, functions, classes, and assignments whose value is a literal or a
plain name/attribute), taken from the notebook's own source — never a copy. Statements that do
work (training loops, tests, plots) are skipped. Cells whose first line is ``# NBDEFS: skip``
are skipped entirely; ``# NBDEFS: keep`` keeps a whole cell (e.g. a setup cell that sets the
default dtype).

Used by the tests (the notebook's own ``MyNet`` and ``backpropagation``) and by the toy-problems
notebook (same hand-written backpropagation).

``load_needed(notebook, wanted)`` is the grader's variant for students' notebooks: it runs only the
top-level statements the ``wanted`` names need (found by scope analysis with :mod:`symtable`:
the functions, classes, imports and assignments they use, transitively, including default
arguments and decorators), in notebook order, and skips, rather than stops at, any statement that
fails, recording which one, in which cell, and why.
"""
from __future__ import annotations

import ast
import symtable
import sys
import threading
import types
from pathlib import Path

import nbformat

_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


# CPython 3.11 keeps one recursion counter per interpreter for converting between its internal
# syntax tree and the ``ast`` module's objects (gh-106905): two threads doing it at once can fail
# with "SystemError: AST constructor recursion depth mismatch". The grader reads notebooks in
# several threads (submissions and their notebooks in parallel), so every conversion goes through
# these two functions, one at a time.
_AST_LOCK = threading.RLock()


def parse(source: str) -> ast.Module:
    """``ast.parse(source)``, safe to call from several threads."""
    with _AST_LOCK:
        return ast.parse(source)


def compile_statement(node: ast.stmt, filename: str):
    """The code object of one top-level statement, safe to call from several threads."""
    with _AST_LOCK:
        return compile(ast.Module(body=[node], type_ignores=[]), filename, "exec")


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
            tree = parse(source)
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
        code = compile_statement(node, filename)
        try:
            exec(code, module.__dict__)
        except Exception as exc:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                raise
            module.__nbdefs_skipped__.append(f"`{ast.unparse(node)[:80]}` ({type(exc).__name__}: {exc})")
    return module


# --------------------------------------------------------------------------------------------
# the grader's variant: only what the wanted names need
# --------------------------------------------------------------------------------------------
def parsed_cells(path: str | Path) -> list[tuple[int, ast.Module | SyntaxError]]:
    """(code cell number from 1, its parsed source, or the SyntaxError Python raised on it)."""
    nb = nbformat.read(str(path), as_version=4)
    cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    out = []
    for number, cell in enumerate(cells, start=1):
        try:
            out.append((number, parse(_clean(cell.source))))
        except SyntaxError as exc:
            out.append((number, exc))
    return out


def _statements(path: str | Path) -> list[tuple[int, ast.stmt]]:
    """(code cell number from 1, statement) for every top-level statement; unparsable cells skipped."""
    return [(number, node) for number, tree in parsed_cells(path) if isinstance(tree, ast.Module)
            for node in tree.body]


def _scope_names(node: ast.stmt) -> tuple[set[str], set[str]]:
    """(names the statement binds at top level, global names it or its functions read)."""
    table = symtable.symtable(ast.unparse(node), "<statement>", "exec")
    bound = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    used = {s.get_name() for s in table.get_symbols() if s.is_referenced()}

    def walk(t):
        for sym in t.get_symbols():
            if sym.is_global() and sym.is_referenced():
                used.add(sym.get_name())
        for child in t.get_children():
            walk(child)
    for child in table.get_children():
        walk(child)
    return bound, used


def needed_statements(path: str | Path, wanted, skip=()) -> list[tuple[int, ast.stmt]]:
    """The statements that define ``wanted`` and what they use, transitively, in notebook order.

    Notebook semantics: a statement sees, when it runs, the binding of a name that precedes it (a
    class's base, a decorator, a default value), and a function sees, when it is called after the
    whole notebook ran, the last binding. So for a name a statement uses, both are taken: the last
    binding before the statement and the notebook's last one (a later ``from torch import nn``, a
    helper redefined further down), with earlier ones when a binding reads its own name (``x = x +
    1``), and the last one outside a loop when the last is made by a loop (which may fail, and is
    then skipped). Names in ``skip`` are not resolved (the caller provides them).
    """
    statements = [(cell, node, *_scope_names(node)) for cell, node in _statements(path)]
    end = len(statements)
    todo, seen, chosen = [(name, end) for name in wanted if name not in skip], set(), set()
    while todo:
        name, before = todo.pop()
        if (name, before) in seen or name in skip:
            continue
        seen.add((name, before))
        for i in _bindings(statements, name, before) | _bindings(statements, name, end):
            chosen.add(i)
            todo.extend((used, i) for used in statements[i][3])
    return [(statements[i][0], statements[i][1]) for i in sorted(chosen)]


_LOOPS = (ast.For, ast.AsyncFor, ast.While)


def _bindings(statements, name, before) -> set[int]:
    """The statements whose bindings of ``name`` a statement at index ``before`` sees: the last one
    before it (and the ones that one reads, ``x = x + 1``; and the last one outside a loop)."""
    out, loop_only = set(), True
    for i in reversed(range(before)):
        _, node, bound, used = statements[i]
        if name in bound:
            out.add(i)
            loop_only = loop_only and isinstance(node, _LOOPS)
            if name not in used and not loop_only:
                break
    return out


def load_needed(path: str | Path, wanted, skip=(), name: str | None = None,
                module: types.ModuleType | None = None) -> types.ModuleType:
    """A module holding ``wanted`` and what it needs from the notebook ``path`` (see the docstring above).

    Failing statements are skipped: ``module.__nbdefs_skipped__`` lists ``{"cell", "statement",
    "error", "names"}`` records and ``module.__nbdefs_missing_modules__`` maps a module that could
    not be imported to the names its import would have bound.
    """
    path = Path(path)
    module = module or types.ModuleType(name or f"nb_{path.stem}")
    module.__file__ = str(path)
    module.__nbdefs_skipped__, module.__nbdefs_missing_modules__ = [], {}
    sys.modules[module.__name__] = module
    filename = f"<{path.name} definitions>"
    for cell, node in needed_statements(path, wanted, skip):
        try:
            exec(compile_statement(node, filename), module.__dict__)
        except Exception as exc:  # noqa: BLE001 - a student's statement may raise anything
            bound = sorted(_scope_names(node)[0])
            if isinstance(exc, ModuleNotFoundError) and isinstance(node, (ast.Import, ast.ImportFrom)):
                module.__nbdefs_missing_modules__.setdefault(exc.name or str(exc), []).extend(bound)
            module.__nbdefs_skipped__.append({
                "cell": cell, "statement": _head(node), "names": bound,
                "error": f"{type(exc).__name__}: {exc}"})
    return module


def _head(node: ast.stmt) -> str:
    """A statement's first line, as a reader would recognise it (``def train(n_epochs, ...)``)."""
    text = ast.unparse(node).splitlines()[0]
    return text[:120] + (" ..." if len(text) > 120 else "")
