"""What the student's code says, read by the trusted grader with :mod:`ast` (never executed here).

* :func:`autograd_findings`: in ``backpropagation`` and everything of the notebook it calls
  (functions, classes, the model class), uses of autograd (``.backward``, ``autograd.grad``,
  ``torch.func`` / ``functional.jacobian`` / ``jvp`` / ``vjp``, ``grad_fn``, ``.grad``,
  ``requires_grad``, the execution engine) and evaluations of the model (numerical
  differentiation). The runner also blocks autograd at run time; this is the second, outside view.
* :func:`tampering_findings`: in the whole notebook, code that patches what others rely on:
  attributes of imported modules or objects (``torch.equal = ...``, ``setattr(builtins, ...)``),
  ``sys.modules``, frames and the garbage collector, ``ctypes``, ``exec``/``eval``, raw file
  descriptors, the grader's own modules.

A finding is ``{"cell", "line", "code", "what"}`` (code cells numbered from 1, as Jupyter shows them).
"""
from __future__ import annotations

import ast

from inf265.nbdefs import parsed_cells

AUTOGRAD_ATTRIBUTES = {
    "backward": "calls .backward() (autograd)",
    "grad_fn": "walks the autograd graph (grad_fn)",
    "requires_grad_": "turns on gradient recording (requires_grad_)",
    "_execution_engine": "reaches autograd's execution engine",
    "_engine": "reaches autograd's execution engine",
    "_ImperativeEngine": "creates an autograd engine",
    "run_backward": "runs autograd's engine",
    "jacobian": "computes a Jacobian with autograd",
    "hessian": "computes a Hessian with autograd",
    "jvp": "uses forward- or reverse-mode AD (jvp)",
    "vjp": "uses reverse-mode AD (vjp)",
    "jacrev": "uses torch.func (jacrev)",
    "jacfwd": "uses torch.func (jacfwd)",
    "grad": "reads or computes autograd gradients (.grad / autograd.grad)",
    "func": "uses torch.func (functional autograd)",
    "autograd": "uses torch.autograd",
    "forward_ad": "uses forward-mode AD",
}
AUTOGRAD_NAMES = {"functorch": "uses functorch", "autograd": "uses autograd", "jacrev": "uses torch.func",
                  "jacfwd": "uses torch.func", "vjp": "uses reverse-mode AD", "jvp": "uses forward-mode AD"}
TAMPER_CALLS = {"exec": "runs code from a string (exec)", "eval": "evaluates code from a string (eval)",
                "compile": "compiles code at run time", "__import__": "imports by computed name",
                "setattr": "sets an attribute of an imported module or object", "delattr": "deletes an attribute"}
TAMPER_ATTRIBUTES = {
    ("sys", "modules"): "touches sys.modules", ("sys", "_getframe"): "inspects interpreter frames",
    ("sys", "settrace"): "installs a tracer", ("sys", "setprofile"): "installs a profiler",
    ("sys", "addaudithook"): "installs an audit hook",
    ("inspect", "currentframe"): "inspects interpreter frames", ("inspect", "stack"): "inspects interpreter frames",
    ("gc", "get_objects"): "walks the garbage collector's objects",
    ("gc", "get_referrers"): "walks the garbage collector's referrers",
    ("os", "write"): "writes to raw file descriptors", ("os", "dup2"): "redirects file descriptors",
    ("os", "fdopen"): "opens raw file descriptors", ("os", "open"): "opens files at the descriptor level",
    ("os", "_exit"): "ends the process without cleanup (os._exit)",
}
TAMPER_MODULES = {"ctypes": "loads ctypes (raw memory access)", "cffi": "loads cffi (raw memory access)",
                  "builtins": "imports builtins", "grading": "imports the grader", "gc": "imports gc",
                  "_ctypes": "loads ctypes"}


def _cells(path) -> list[tuple[int, ast.Module]]:
    return [(number, tree) for number, tree in parsed_cells(path) if isinstance(tree, ast.Module)]


def syntax_errors(path) -> list[str]:
    """``"code cell N: SyntaxError: ... (line L)"`` for every cell Python cannot parse (they define nothing)."""
    return [f"code cell {number}: {type(exc).__name__}: {exc.msg} (line {exc.lineno})"
            for number, exc in parsed_cells(path) if isinstance(exc, SyntaxError)]


def _finding(cell: int, node: ast.AST, what: str) -> dict:
    code = ast.unparse(node) if not isinstance(node, ast.Module) else ""
    return {"cell": cell, "line": getattr(node, "lineno", 0), "code": code.splitlines()[0][:120] if code else "",
            "what": what}


def _top_level(cells) -> dict[str, tuple[int, ast.stmt]]:
    """name -> (cell, its last top-level def/class)."""
    defs = {}
    for cell, tree in cells:
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs[node.name] = (cell, node)
    return defs


def method(path, class_name: str, name: str) -> ast.FunctionDef | None:
    """A method ``name`` of the notebook's (last) class ``class_name``, if it defines one."""
    found = _top_level(_cells(path)).get(class_name)
    if found is None or not isinstance(found[1], ast.ClassDef):
        return None
    return next((n for n in found[1].body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def reachable(cells, roots) -> list[tuple[int, ast.stmt]]:
    """The top-level functions and classes of the notebook that ``roots`` use, transitively; a root
    that is only a method of a class (``MyNet.backpropagation``) is looked up there."""
    defs = _top_level(cells)
    for root in roots:
        if root not in defs:
            for cell, node in list(defs.values()):
                if isinstance(node, ast.ClassDef):
                    found = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == root), None)
                    if found is not None:
                        defs[root] = (cell, found)
    todo, seen, out = [r for r in roots if r in defs], set(), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        cell, node = defs[name]
        out.append((cell, node))
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in defs and sub.id not in seen:
                todo.append(sub.id)
            elif isinstance(sub, ast.Attribute) and sub.attr in defs and sub.attr not in seen:
                todo.append(sub.attr)  # model.helper(...) where helper is also a top-level def
    return out


def autograd_findings(path, function: str = "backpropagation", model_class: str = "MyNet") -> list[dict]:
    """Autograd and model evaluations in ``function`` and what it calls (see the module docstring)."""
    cells = _cells(path)
    defs = _top_level(cells)
    findings = []
    for cell, node in reachable(cells, [function]):
        model_params = _model_parameter_names(node) if node.name == function else set()
        for sub in ast.walk(node):
            what = _autograd_use(sub, model_params)
            if what:
                findings.append(_finding(cell, sub, what))
    # methods the student added to the model class may be called through the model
    if model_class in defs and function in defs:
        cell, cls = defs[model_class]
        called = {s.attr for s in ast.walk(defs[function][1]) if isinstance(s, ast.Attribute)}
        for item in cls.body:
            if isinstance(item, ast.FunctionDef) and item.name in called and item.name not in ("forward", "__init__"):
                findings += [_finding(cell, s, _autograd_use(s, set())) for s in ast.walk(item) if _autograd_use(s, set())]
    return _unique(findings)


def _model_parameter_names(fn: ast.FunctionDef) -> set[str]:
    args = fn.args.posonlyargs + fn.args.args
    return {args[0].arg} if args else set()


def _autograd_use(node: ast.AST, model_names: set[str]) -> str | None:
    if isinstance(node, ast.Attribute) and node.attr in AUTOGRAD_ATTRIBUTES:
        if node.attr == "func" and not _rooted_at(node, "torch"):
            return None
        if node.attr == "grad" and isinstance(node.ctx, ast.Store):
            return None
        return AUTOGRAD_ATTRIBUTES[node.attr]
    if isinstance(node, ast.Name) and node.id in AUTOGRAD_NAMES and isinstance(node.ctx, ast.Load):
        return AUTOGRAD_NAMES[node.id]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        if any(n and ("autograd" in n or n.startswith(("torch.func", "functorch"))) for n in names):
            return "imports autograd"
    if isinstance(node, ast.keyword) and node.arg == "requires_grad" and not (
            isinstance(node.value, ast.Constant) and node.value.value is False):
        return "creates tensors that record gradients (requires_grad=True)"
    if isinstance(node, ast.Assign):
        for target in node.targets:
            if isinstance(target, ast.Attribute) and target.attr == "requires_grad":
                return "turns on gradient recording (.requires_grad = ...)"
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name) and f.id in model_names:
            return "evaluates the model (a forward pass inside backpropagation: numerical differentiation?)"
        if isinstance(f, ast.Attribute) and f.attr == "forward":
            return "evaluates the model (a forward pass inside backpropagation: numerical differentiation?)"
        if isinstance(f, ast.Name) and f.id == "enable_grad" or isinstance(f, ast.Attribute) and f.attr in (
                "enable_grad", "set_grad_enabled"):
            return "turns gradient recording on (torch.enable_grad)"
    return None


def _rooted_at(node: ast.Attribute, name: str) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id == name


def _imported_names(cells) -> set[str]:
    names = set()
    for _, tree in cells:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names |= {a.asname or a.name for a in node.names}
    return names


def tampering_findings(path) -> list[dict]:
    """Code anywhere in the notebook that patches modules, frames, memory or the grader (see above)."""
    cells = _cells(path)
    imported = _imported_names(cells)
    findings = []
    for cell, tree in cells:
        for node in ast.walk(tree):
            what = _tampering(node, imported)
            if what:
                findings.append(_finding(cell, node, what))
    return _unique(findings)


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


#: settings students legitimately assign on imported modules (reproducibility, display)
SETTINGS = ("torch.backends.", "cudnn.", "pd.options.", "pandas.options.", "np.random.", "os.environ",
            "plt.rcParams", "mpl.rcParams", "matplotlib.rcParams", "warnings.", "logging.", "sns.")


def _tampering(node: ast.AST, imported: set[str]) -> str | None:
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and _root_name(t) in imported and _root_name(t) != "os" \
                    and not ast.unparse(t).startswith(SETTINGS):
                return f"changes an attribute of the imported {_root_name(t)} ({ast.unparse(t)})"
            if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "sys.modules":
                return "replaces a module in sys.modules"
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name) and f.id in TAMPER_CALLS:
            if f.id in ("setattr", "delattr"):
                target = _root_name(node.args[0]) if node.args else None
                if target not in imported:
                    return None
            return TAMPER_CALLS[f.id]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        what = TAMPER_ATTRIBUTES.get((node.value.id, node.attr))
        if what:
            return what
    if isinstance(node, ast.Name) and node.id in ("__builtins__", "__loader__"):
        return "reaches the interpreter's builtins"
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for n in names:
            what = TAMPER_MODULES.get(n.split(".")[0])
            if what:
                return what
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/proc/self" in node.value:
        return "reads the process's own /proc entries"
    return None


def _unique(findings: list[dict]) -> list[dict]:
    seen, out = set(), []
    for f in findings:
        key = (f["cell"], f["line"], f["what"])
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def describe(findings: list[dict], limit: int = 3) -> str:
    parts = [f"code cell {f['cell']}, line {f['line']}: {f['what']} (`{f['code']}`)" for f in findings[:limit]]
    more = f"; and {len(findings) - limit} more" if len(findings) > limit else ""
    return "; ".join(parts) + more
