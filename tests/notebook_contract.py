"""The notebook mark-up contract, checked on the reference notebooks (README.txt, "Solution regions").

A cell where students write carries nbgrader's solution metadata (its ``grade_id`` names the task) and
its answer lies between ``### BEGIN SOLUTION`` and ``### END SOLUTION``; a cell that exists only in
the reference is tagged ``reference-only``; everything else is given to students as is, so it must
not depend on a name that a student has to guess, nor hold instructor-only text.
"""
from __future__ import annotations

import ast
import builtins
import re

import nbformat

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
NBGRADER = {"grade": False, "locked": False, "schema_version": 3, "solution": True, "task": False}
GRADED = {"MyNet", "backpropagation", "MyMLP", "train", "train_manual_update"}
REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\b.*?^\1### END SOLUTION[^\n]*$", re.M | re.S)
INSTRUCTOR_ONLY = ("make test", "tests/", "report/", "report.typ", "hand-out", "handout",
                   "NotImplementedError", "BEGIN SOLUTION", "(B1)", "bitwise", "NBVAL", "NBDEFS")


def read(path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def is_reference_only(cell) -> bool:
    return "reference-only" in cell.metadata.get("tags", [])


def grade_id(cell) -> str | None:
    meta = cell.metadata.get("nbgrader")
    return meta["grade_id"] if meta and meta.get("solution") else None


def given_source(cell) -> str:
    """What students get of a code cell: its regions emptied (a ``pass`` keeps the code valid)."""
    return REGION.sub(lambda m: f"{m.group(1)}pass", cell.source)


def check(path, ids: list[str]) -> None:
    """Every rule of the contract that can be read from the notebook file alone."""
    nb = read(path)
    assert nb.metadata["kernelspec"] == KERNELSPEC, "kernelspec as ipykernel 7 writes it"
    found = []
    for cell in nb.cells:
        marked = "### BEGIN SOLUTION" in cell.source
        gid = grade_id(cell)
        if gid is not None:
            meta = {k: v for k, v in cell.metadata["nbgrader"].items() if k != "grade_id"}
            assert meta == NBGRADER, f"cell {cell.id}: nbgrader metadata {cell.metadata['nbgrader']}"
            found.append(gid)
            assert not is_reference_only(cell), f"cell {cell.id}: a solution cell is given"
            assert cell.cell_type == "markdown" or marked, f"solution cell {gid} has no region"
        else:
            assert not marked, f"cell {cell.id}: a region without nbgrader's solution metadata"
        if cell.cell_type == "code":
            lines = cell.source.splitlines()
            assert len(lines) <= 40, f"cell {cell.id}: {len(lines)} lines (at most 40)"
            long = [line for line in lines if len(line) > 100]
            assert not long, f"cell {cell.id}: lines over 100 characters: {long}"
        if gid is None and not is_reference_only(cell):
            text = given_source(cell) if cell.cell_type == "code" else cell.source
            if cell.cell_type == "markdown":
                for words in INSTRUCTOR_ONLY:
                    assert words not in text, f"given cell {cell.id} says {words!r}"
    assert found == ids, f"solution cells {found}, expected {ids}"
    assert len({c.id for c in nb.cells}) == len(nb.cells), "cell ids must be unique"


def unknown_names(path) -> dict[str, set[str]]:
    """Names that given code uses and that neither given code, Python nor the graded names define.

    A superset of what a student's own code cannot supply: every name bound anywhere in given code
    (assignments, parameters, imports, definitions) counts as defined.
    """
    nb = read(path)
    trees = [(cell.id, ast.parse(given_source(cell))) for cell in nb.cells
             if cell.cell_type == "code" and grade_id(cell) is None and not is_reference_only(cell)]
    trees += [(cell.id, ast.parse(given_source(cell))) for cell in nb.cells if grade_id(cell)]
    defined = set(dir(builtins)) | GRADED
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.arg):
                defined.add(node.arg)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    unknown = {}
    for cid, tree in trees:
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        if used - defined:
            unknown[cid] = used - defined
    return unknown
