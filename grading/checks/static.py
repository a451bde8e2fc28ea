"""What the student's code says, read by the trusted grader with :mod:`ast` (never executed here).

The reading covers the notebook's code cells and every ``.py`` module of the submission that
they import, transitively (:class:`Source`); an import the grader cannot read (a compiled
module, a ``.pyc``, a link it did not copy) is a finding of its own. Names are resolved before
they are judged (:meth:`Source.qualname`): imports and aliases, ``getattr``/``vars()``/
``__dict__`` with constant or built strings (``"back" + "ward"``, f-strings of constants,
``"".join([...])``, a local name bound once to such a string), ``importlib.import_module`` and
``__import__``.

* :func:`autograd_findings`: in ``backpropagation`` and everything of the submission it calls,
  uses of autograd (``Tensor.backward``, ``torch.autograd.*``, ``torch.func.*``, ``grad_fn``,
  ``.grad``, ``requires_grad``, the execution engine) and evaluations of the model (numerical
  differentiation). A ``backward`` method of the student's own class (the course's Lab 4 style of
  layers with a hand-written backward) is not autograd: a ``.backward(...)`` call is accused only
  when its receiver is not one of the student's objects. The runner also blocks autograd at run
  time; this is the second, outside view.
* :func:`optimizer_findings`: ``train_manual_update`` and what it calls may not use a
  ``torch.optim`` optimizer, ``.step()``, ``torch.optim._functional`` or ``torch._foreach_*``.
* :func:`tampering_findings`: code anywhere (cells and modules) that patches what others rely on:
  attributes of imported modules or objects, ``sys.modules``, frames and the garbage collector,
  ``ctypes``, ``exec``/``eval``, raw file descriptors, the grader's own modules.

A finding is ``{"cell", "where", "line", "code", "what"}``: ``where`` is ``"code cell N"`` (numbered
from 1, as Jupyter shows them; ``cell`` is N) or the module's file name (``cell`` is ``None``).

:func:`read` (``python -m grading.checks.static FOLDER``) is everything the grader needs of a
submission's copy, in a child process with memory and time limits (:func:`read_bounded`): a
notebook that takes more than that to read is refused, not read by the grader.
"""
from __future__ import annotations

import ast
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import nbformat

from inf265 import ROOT
from inf265.nbdefs import parsed_cells

NOTEBOOKS = ("backpropagation.ipynb", "gradient_descent.ipynb")
#: limits of the child process that reads a submission
READ_MEMORY, READ_SECONDS = 1536 << 20, 60

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
#: qualified names (after resolution) that are autograd, whatever the local name
AUTOGRAD_QUALNAMES = {"torch.autograd": "uses torch.autograd", "torch.func": "uses torch.func (functional autograd)",
                      "functorch": "uses functorch", "torch.Tensor.backward": "calls Tensor.backward (autograd)",
                      "torch._C._ImperativeEngine": "creates an autograd engine",
                      "torch._C._EngineBase": "reaches autograd's execution engine",
                      "torch.enable_grad": "turns gradient recording on (torch.enable_grad)",
                      "torch.set_grad_enabled": "turns gradient recording on (torch.set_grad_enabled)"}
OPTIMIZER_QUALNAMES = {"torch.optim._functional": "uses torch.optim._functional (an optimizer's update)",
                       "torch._foreach_": "uses torch._foreach_* (an optimizer's fused update)",
                       "torch.optim": "uses a torch.optim optimizer"}
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
                  "_ctypes": "loads ctypes", "importlib": "imports modules by computed name (importlib)"}
#: modules the grader provides (its own copies run, not the student's: the harness, the course's support package)
PROVIDED = {"tests_backpropagation", "tests_gradient_descent", "harness_core", "inf265"}


# --------------------------------------------------------------------------------------------
# the source: notebook cells and the submission's modules they import
# --------------------------------------------------------------------------------------------
class Source:
    """The parsed code of one notebook and of the ``.py`` modules of its folder it imports.

    ``units``: ``(where, cell, tree)``; ``unread``: findings for imports that resolve to a file
    of the submission the grader cannot read.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.folder = self.path.parent
        self.syntax: list[str] = []
        self.units: list[tuple[str, int | None, ast.Module]] = []
        self.unread: list[dict] = []
        for number, tree in parsed_cells(self.path):
            if isinstance(tree, ast.Module):
                self.units.append((f"code cell {number}", number, tree))
            else:
                self.syntax.append(f"code cell {number}: {type(tree).__name__}: {tree.msg} (line {tree.lineno})")
        self._modules()
        self.strings = self._strings()
        self.aliases = self._aliases()

    # -- modules ---------------------------------------------------------------------------
    def _modules(self) -> None:
        seen, todo = set(), list(self.units)
        while todo:
            where, cell, tree = todo.pop(0)
            for node, name in _imports(tree):
                top = name.split(".")[0]
                if not top or top in seen or top in PROVIDED:
                    continue
                seen.add(top)
                for unit in self._module_units(top, node, where, cell):
                    self.units.append(unit)
                    todo.append(unit)

    def _module_units(self, top: str, node, where: str, cell):
        """The units of the submission's module ``top`` (a file or a package), or a finding."""
        single, package = self.folder / f"{top}.py", self.folder / top
        files = [single] if single.is_file() else sorted(package.rglob("*.py")) if package.is_dir() else []
        others = [p.name for p in self.folder.glob(f"{top}.*") if p.suffix != ".py" and not p.name.endswith(".ipynb")]
        if package.is_dir():
            others += [str(p.relative_to(self.folder)) for p in package.rglob("*")
                       if p.suffix in (".so", ".pyc", ".pyd", ".pth")]
        if others:
            self.unread.append(_finding(where, cell, node, f"imports {top}, which the grader cannot read "
                                                           f"({', '.join(sorted(others)[:3])}: not Python source)"))
        for file in files:
            label = str(file.relative_to(self.folder))
            try:
                tree = ast.parse(file.read_text(encoding="utf-8", errors="replace"), filename=label)
            except (SyntaxError, ValueError) as exc:
                self.unread.append(_finding(where, cell, node, f"imports {top}, whose {label} does not parse ({exc})"))
                continue
            yield label, None, tree

    # -- names -----------------------------------------------------------------------------
    def _aliases(self) -> dict[str, str]:
        """local name -> qualified name, from imports and ``x = importlib.import_module(...)``."""
        out = {}
        for _, _, tree in self.units:
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for a in node.names:
                        if a.asname:
                            out[a.asname] = a.name
                        else:
                            out.setdefault(a.name.split(".")[0], a.name.split(".")[0])
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    for a in node.names:
                        out[a.asname or a.name] = f"{node.module}.{a.name}"
        strings = self.strings
        for _, _, tree in self.units:  # then the names bound to modules or attributes looked up by name
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    qual = _qualname(node.value, out, strings)
                    if qual and "." in qual or qual in ("torch", "functorch", "importlib"):
                        out[node.targets[0].id] = qual
        return out

    def _strings(self) -> dict[str, str]:
        """Names bound (only) to strings built from constants: ``name = "back" + "ward"``."""
        out, multiple = {}, set()
        for _, _, tree in self.units:
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    value = _string(node.value, out)
                    name = node.targets[0].id
                    if value is not None:
                        if name in out and out[name] != value:
                            multiple.add(name)
                        out[name] = value
        return {k: v for k, v in out.items() if k not in multiple}

    def qualname(self, node) -> str | None:
        """``torch.autograd.grad`` for ``ag.grad`` (``import torch.autograd as ag``), for
        ``getattr(torch, "auto" + "grad").grad``, for ``vars(torch)["autograd"].grad``..."""
        return _qualname(node, self.aliases, self.strings)

    # -- definitions -----------------------------------------------------------------------
    def top_level(self) -> dict[str, tuple[str, int | None, ast.stmt]]:
        """name -> (where, cell, its def/class); the notebook's last definition wins over a module's."""
        defs = {}
        for where, cell, tree in sorted(self.units, key=lambda u: u[1] is not None):
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    defs[node.name] = (where, cell, node)
        return defs

    def own_methods(self) -> set[str]:
        """Names of methods of the student's own classes (those not deriving from torch.autograd.Function)."""
        out = set()
        for _, _, tree in self.units:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and not any(
                        "Function" in (ast.unparse(b) or "") for b in node.bases):
                    out |= {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        return out

    def reachable(self, roots, attributes: bool = True) -> list[tuple[str, int | None, ast.stmt]]:
        """The top-level functions and classes that ``roots`` use, transitively; a root that is only
        a method of a class (``MyNet.backpropagation``) is looked up there. ``attributes``: also
        ``x.helper(...)`` for a top-level ``helper`` (not for ``model.train()`` beside a ``train``)."""
        defs = self.top_level()
        for root in roots:
            if root not in defs:
                for where, cell, node in list(defs.values()):
                    if isinstance(node, ast.ClassDef):
                        found = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == root), None)
                        if found is not None:
                            defs[root] = (where, cell, found)
        todo, seen, out = [r for r in roots if r in defs], set(), []
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            out.append(defs[name])
            for sub in ast.walk(defs[name][2]):
                if isinstance(sub, ast.Attribute) and not attributes:
                    continue
                for used in _used_names(sub, self.strings):
                    if used in defs and used not in seen:
                        todo.append(used)
        return out


def _imports(tree) -> list[tuple[ast.AST, str]]:
    """(node, module name) of every import, ``importlib.import_module("x")`` and ``__import__("x")``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and not node.module:
                out += [(node, a.name) for a in node.names]
            elif node.module:
                out.append((node, node.module))
        elif isinstance(node, ast.Call) and node.args and (
                isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                or isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")):
            name = _string(node.args[0], {})
            if name:
                out.append((node, name))
    return out


def _string(node, env: dict[str, str]) -> str | None:
    """The value of a string expression built from constants, or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string(node.left, env), _string(node.right, env)
        return left + right if left is not None and right is not None else None
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            part = _string(value.value if isinstance(value, ast.FormattedValue) else value, env)
            if part is None:
                return None
            parts.append(part)
        return "".join(parts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join" \
            and len(node.args) == 1 and isinstance(node.args[0], (ast.List, ast.Tuple)):
        sep = _string(node.func.value, env)
        parts = [_string(e, env) for e in node.args[0].elts]
        return sep.join(parts) if sep is not None and None not in parts else None
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice) and node.slice.step is not None:
        base, step = _string(node.value, env), node.slice.step  # "drawkcab"[::-1]
        if base is not None and isinstance(step, ast.UnaryOp) and isinstance(step.operand, ast.Constant) \
                and node.slice.lower is None and node.slice.upper is None and step.operand.value == 1:
            return base[::-1]
    return None


def _qualname(node, aliases: dict[str, str], strings: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _qualname(node.value, aliases, strings)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, ast.Call) and node.args:
        f = node.func
        if isinstance(f, ast.Name) and f.id == "getattr" and len(node.args) >= 2:
            base, name = _qualname(node.args[0], aliases, strings), _string(node.args[1], strings)
            return f"{base}.{name}" if base and name else None
        if isinstance(f, ast.Attribute) and f.attr == "import_module" or isinstance(f, ast.Name) and f.id in (
                "__import__", "import_module"):
            return _string(node.args[0], strings)
    if isinstance(node, ast.Subscript):  # vars(torch)["autograd"], torch.__dict__["autograd"]
        name = _string(node.slice, strings)
        holder = node.value
        if name and isinstance(holder, ast.Call) and isinstance(holder.func, ast.Name) and holder.func.id == "vars" \
                and holder.args:
            base = _qualname(holder.args[0], aliases, strings)
            return f"{base}.{name}" if base else None
        if name and isinstance(holder, ast.Attribute) and holder.attr == "__dict__":
            base = _qualname(holder.value, aliases, strings)
            return f"{base}.{name}" if base else None
    return None


def _used_names(node, strings) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]  # model.helper(...) where helper is also a top-level def
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
            and len(node.args) >= 2:
        name = _string(node.args[1], strings)
        return [name] if name else []
    if isinstance(node, ast.Subscript):
        name = _string(node.slice, strings)
        return [name] if name else []
    return []


def _finding(where: str, cell, node: ast.AST, what: str) -> dict:
    code = ast.unparse(node) if not isinstance(node, ast.Module) else ""
    return {"cell": cell, "where": where, "line": getattr(node, "lineno", 0),
            "code": code.splitlines()[0][:120] if code else "", "what": what}


# --------------------------------------------------------------------------------------------
# the readings
# --------------------------------------------------------------------------------------------
def syntax_errors(path) -> list[str]:
    """``"code cell N: SyntaxError: ... (line L)"`` for every cell Python cannot parse (they define nothing)."""
    return Source(path).syntax


def method(path, class_name: str, name: str) -> ast.FunctionDef | None:
    """A method ``name`` of the notebook's (last) class ``class_name``, if it defines one."""
    found = Source(path).top_level().get(class_name)
    if found is None or not isinstance(found[2], ast.ClassDef):
        return None
    return next((n for n in found[2].body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def defined_names(path) -> list[str]:
    """The classes and train_manual_update* functions the notebook defines (read, not run)."""
    names = []
    for where, _, tree in Source(path).units:
        if where.startswith("code cell"):
            for node in tree.body:
                if isinstance(node, ast.ClassDef) or isinstance(node, ast.FunctionDef) and \
                        node.name.startswith("train_manual_update"):
                    names.append(node.name)
    return list(dict.fromkeys(names))


def autograd_findings(path, function: str = "backpropagation", model_class: str = "MyNet",
                      source: Source | None = None) -> list[dict]:
    """Autograd and model evaluations in ``function`` and what it calls (see the module docstring)."""
    src = source or Source(path)
    defs = src.top_level()
    own = src.own_methods()
    findings = list(src.unread)
    units = src.reachable([function])
    # methods the student added to the model class may be called through the model
    if model_class in defs and function in defs:
        where, cell, cls = defs[model_class]
        called = {s.attr for s in ast.walk(defs[function][2]) if isinstance(s, ast.Attribute)}
        units += [(where, cell, item) for item in cls.body if isinstance(item, ast.FunctionDef)
                  and item.name in called and item.name not in ("forward", "__init__")]
    for where, cell, node in units:
        model_params = _model_parameter_names(node) if node.name == function else set()
        for sub in ast.walk(node):
            what = _autograd_use(sub, model_params, src, own)
            if what:
                findings.append(_finding(where, cell, sub, what))
    return _unique(findings)


def _model_parameter_names(fn) -> set[str]:
    if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return set()
    args = fn.args.posonlyargs + fn.args.args
    return {args[0].arg} if args else set()


def _loaded(node: ast.AST) -> bool:
    """An expression read (a name or attribute being assigned is not a use)."""
    return isinstance(node, (ast.Attribute, ast.Call, ast.Subscript, ast.Name)) and \
        not isinstance(getattr(node, "ctx", None), (ast.Store, ast.Del))


def _autograd_use(node: ast.AST, model_names: set[str], src: Source, own: set[str]) -> str | None:
    qual = src.qualname(node) if _loaded(node) else None
    if qual:
        for prefix, what in AUTOGRAD_QUALNAMES.items():
            if qual == prefix or qual.startswith(prefix + "."):
                return what
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
            and len(node.args) >= 2:
        name = _string(node.args[1], src.strings)
        if name is None:
            return "looks up an attribute by a computed name (getattr): the grader cannot tell it is not autograd"
        if name in AUTOGRAD_ATTRIBUTES and name not in ("func", "backward"):
            return AUTOGRAD_ATTRIBUTES[name]
        if name == "backward" and not _students_object(node.args[0], own):
            return AUTOGRAD_ATTRIBUTES[name]
    if isinstance(node, ast.Attribute) and node.attr in AUTOGRAD_ATTRIBUTES:
        if node.attr == "func" and not _rooted_at(node, "torch"):
            return None
        if node.attr == "grad" and isinstance(node.ctx, ast.Store):
            return None
        if node.attr == "backward" and _students_object(node.value, own):
            return None  # a hand-written backward of the student's own layer (Lab 4 style)
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
        if isinstance(f, ast.Attribute) and f.attr == "forward" and not _students_object(f.value, own - {"forward"}):
            return "evaluates the model (a forward pass inside backpropagation: numerical differentiation?)"
        if isinstance(f, ast.Name) and f.id == "enable_grad" or isinstance(f, ast.Attribute) and f.attr in (
                "enable_grad", "set_grad_enabled"):
            return "turns gradient recording on (torch.enable_grad)"
    return None


def _students_object(receiver: ast.AST, own: set[str]) -> bool:
    """Whether a ``.backward`` receiver is one of the student's own objects, not a tensor: the
    student defines a ``backward`` method, and the receiver is a layer object (a name, an
    attribute or an element of a list of layers), not a tensor expression (an arithmetic result,
    a reduction such as ``loss.sum()``)."""
    if "backward" not in own:
        return False
    if isinstance(receiver, (ast.BinOp, ast.UnaryOp, ast.Compare)):
        return False
    if isinstance(receiver, ast.Call):
        f = receiver.func
        return isinstance(f, ast.Name) and f.id[:1].isupper()  # Layer(...).backward(...), not x.sum().backward()
    return isinstance(receiver, (ast.Name, ast.Attribute, ast.Subscript))


def _rooted_at(node: ast.Attribute, name: str) -> bool:
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id == name


def optimizer_findings(path, prefix: str = "train_manual_update", source: Source | None = None) -> list[dict]:
    """torch.optim optimizers, ``.step()``, ``torch.optim._functional`` and ``torch._foreach_*`` in the
    notebook's ``train_manual_update*`` functions and what they call."""
    src = source or Source(path)
    roots = [name for name in src.top_level() if name.startswith(prefix)]
    findings, lines = [], set()
    for where, cell, node in src.reachable(roots, attributes=False):
        for sub in ast.walk(node):
            what = None
            qual = src.qualname(sub) if _loaded(sub) else None
            if qual:
                for start, said in OPTIMIZER_QUALNAMES.items():
                    if qual == start or qual.startswith(start if start.endswith("_") else start + "."):
                        what = f"{said} ({qual})"
                        break
            if what is None and isinstance(sub, ast.Attribute) and sub.attr.startswith("_foreach_"):
                what = f"uses torch._foreach_* (an optimizer's fused update: {sub.attr})"
            if what is None and isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) \
                    and sub.func.attr == "step" and "step" not in src.own_methods():
                what = "calls .step() (an optimizer's update, not a manual one)"
            if what and (where, getattr(sub, "lineno", 0)) not in lines:  # the outermost expression of a line
                lines.add((where, getattr(sub, "lineno", 0)))
                findings.append(_finding(where, cell, sub, what))
    return findings


def _imported_names(units) -> set[str]:
    names = set()
    for _, _, tree in units:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names |= {a.asname or a.name for a in node.names}
    return names


def tampering_findings(path, source: Source | None = None) -> list[dict]:
    """Code anywhere in the notebook and its modules that patches modules, frames, memory or the grader."""
    src = source or Source(path)
    imported = _imported_names(src.units)
    findings = list(src.unread)
    for where, cell, tree in src.units:
        for node in ast.walk(tree):
            what = _tampering(node, imported, src)
            if what:
                findings.append(_finding(where, cell, node, what))
    return _unique(findings)


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


#: settings students legitimately assign on imported modules (reproducibility, display)
SETTINGS = ("torch.backends.", "cudnn.", "pd.options.", "pandas.options.", "np.random.", "os.environ",
            "plt.rcParams", "mpl.rcParams", "matplotlib.rcParams", "warnings.", "logging.", "sns.")


def _tampering(node: ast.AST, imported: set[str], src: Source) -> str | None:
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and _root_name(t) in imported and _root_name(t) != "os" \
                    and not ast.unparse(t).startswith(SETTINGS):
                return f"changes an attribute of the imported {_root_name(t)} ({ast.unparse(t)})"
            if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "sys.modules":
                return "replaces a module in sys.modules"
            if isinstance(t, ast.Subscript) and (
                    isinstance(t.value, ast.Call) and isinstance(t.value.func, ast.Name) and t.value.func.id == "vars"
                    or isinstance(t.value, ast.Attribute) and t.value.attr == "__dict__"):
                return f"changes a module or object through its namespace ({ast.unparse(t)})"
    if isinstance(node, ast.Call):
        f = node.func
        imported_name = next((name for n, name in _imports(ast.Module(body=[ast.Expr(node)], type_ignores=[]))
                              if n is node), None)
        if imported_name and imported_name.split(".")[0] in TAMPER_MODULES:
            return TAMPER_MODULES[imported_name.split(".")[0]] + f" (by name: {imported_name})"
        if isinstance(f, ast.Name) and f.id in TAMPER_CALLS:
            if f.id in ("setattr", "delattr"):
                target = _root_name(node.args[0]) if node.args else None
                if target not in imported:
                    return None
            return TAMPER_CALLS[f.id]
        qual = src.qualname(f)
        if qual in ("builtins.setattr", "builtins.exec", "builtins.eval", "operator.setitem"):
            return f"calls {qual}"
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        what = TAMPER_ATTRIBUTES.get((src.aliases.get(node.value.id, node.value.id), node.attr)) or \
            TAMPER_ATTRIBUTES.get((node.value.id, node.attr))
        if what:
            return what
    if isinstance(node, ast.Name) and node.id in ("__builtins__", "__loader__"):
        return "reaches the interpreter's builtins"
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for n in names:
            what = TAMPER_MODULES.get(n.split(".")[0])
            if what and not (n.split(".")[0] == "importlib" and _only_import_module_of_constants(src)):
                return what
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/proc/self" in node.value:
        return "reads the process's own /proc entries"
    return None


def _only_import_module_of_constants(src: Source) -> bool:
    """importlib is fine when every ``import_module`` / ``reload`` call's module is a constant string."""
    for _, _, tree in src.units:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("import_module", "reload", "__import__"):
                if node.func.attr == "reload" or not node.args or _string(node.args[0], src.strings) is None:
                    return False
    return True


def _unique(findings: list[dict]) -> list[dict]:
    seen, out = set(), []
    for f in findings:
        key = (f["where"], f["line"], f["what"])
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def where(finding: dict) -> str:
    return finding.get("where") or f"code cell {finding['cell']}"


def describe(findings: list[dict], limit: int = 3) -> str:
    parts = [f"{where(f)}, line {f['line']}: {f['what']} (`{f['code']}`)" for f in findings[:limit]]
    more = f"; and {len(findings) - limit} more" if len(findings) > limit else ""
    return "; ".join(parts) + more


# --------------------------------------------------------------------------------------------
# everything the grader needs of a submission, read in a bounded child process
# --------------------------------------------------------------------------------------------
def read(folder) -> dict:
    """Per notebook of ``folder`` (the grader's copy): syntax errors, names, the static findings."""
    out = {}
    for name in NOTEBOOKS:
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            nbformat.read(str(path), as_version=4)
            src = Source(path)
        except Exception as exc:  # noqa: BLE001 - not a notebook at all, or beyond what ast can hold
            out[name] = _refused(f"{name} is not a readable notebook: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        entry = {"error": None, "syntax": src.syntax, "tampering": tampering_findings(path, src),
                 "names": defined_names(path), "backprop_method": method(path, "MyNet", "backpropagation") is not None,
                 "modules": sorted({u[0] for u in src.units if not u[0].startswith("code cell")})}
        if name == "backpropagation.ipynb":
            entry["autograd"] = autograd_findings(path, source=src)
        else:
            entry["optimizer"] = optimizer_findings(path, source=src)
        out[name] = entry
    return out


def _child_limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (READ_MEMORY, READ_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (READ_SECONDS, READ_SECONDS))


def read_bounded(folder) -> dict:
    """:func:`read` in a child process limited to ``READ_MEMORY`` bytes and ``READ_SECONDS`` s: a
    notebook that needs more (a literal of millions of elements, a nesting thousands deep) is
    refused with a finding, and the grader's own process stays small whatever the notebook."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        run = subprocess.run([sys.executable, "-P", "-m", "grading.checks.static", str(folder)], cwd=ROOT, env=env,
                             capture_output=True, timeout=READ_SECONDS * 2, preexec_fn=_child_limits)
        if run.returncode == 0:
            return json.loads(run.stdout)
        why = run.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {run.returncode}"]
    except subprocess.TimeoutExpired:
        why = [f"more than {READ_SECONDS * 2} s"]
    except ValueError as exc:
        why = [f"unreadable result ({exc})"]
    return {name: _refused(f"could not be read within the grader's limits for reading code ({READ_MEMORY >> 20} "
                           f"MiB, {READ_SECONDS} s of CPU): {why[0][:200]}")
            for name in NOTEBOOKS if (Path(folder) / name).is_file()}


def _refused(why: str) -> dict:
    """A notebook the grader could not read: its code is not credited (a finding that says why)."""
    finding = {"cell": None, "where": "the whole notebook", "line": 0, "code": "", "what": why}
    return {"error": why, "syntax": [], "tampering": [finding], "names": [], "backprop_method": False,
            "autograd": [finding], "optimizer": [finding], "modules": []}


if __name__ == "__main__":  # python -m grading.checks.static FOLDER: read(FOLDER) as JSON
    sys.setrecursionlimit(10000)
    json.dump(read(sys.argv[1]), sys.stdout)
