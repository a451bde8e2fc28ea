"""Runs INSIDE the sandbox: load a student's definitions and run the checks on them.

``python -P -m grading.worker PART[,PART] RESULTS_FILE CHECK_TIMEOUT`` (parts: backprop, sgd) (started by
:mod:`grading.cli`, never by hand). Each check's start and result are appended to
RESULTS_FILE as JSON lines as soon as they happen, so a check that hangs or ends the process
(``sys.exit``, ``os._exit``) still leaves the results of the checks before it.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import importlib.util
import io
import json
import os
import signal
import sys
import time
import traceback
import types
from pathlib import Path

HARNESS = "tests_backpropagation.py"
OUTPUT_LIMIT = 6000  # characters of captured output kept per check


class CheckTimeout(BaseException):
    """Raised by the alarm when a check exceeds its time limit (BaseException: `except Exception` in
    student code does not swallow it)."""


class Results:
    def __init__(self, path: str):
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, **record) -> None:
        self.fh.write(json.dumps(record, default=str) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())


def _alarm(signum, frame):
    raise CheckTimeout()


def _short(text: str, limit: int = OUTPUT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n[... cut ...]\n" + text[-limit // 2:]


def _student_frame_summary(exc: BaseException) -> str:
    """The exception and the innermost frame from student or notebook code."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = ""
    for frame in reversed(tb):
        if frame.filename.startswith("<") and "definitions" in frame.filename:
            where = f" (in {frame.name}, {frame.filename.strip('<>')})"
            break
    return f"{type(exc).__name__}: {exc}{where}"


class Runner:
    def __init__(self, results: Results, timeout: float):
        self.results, self.timeout = results, timeout
        self.hung: set[str] = set()  # student functions that timed out: later checks on them are skipped

    def run(self, check: str, func, uses=()):
        """Run ``func() -> (passed: bool | 'partial', message, details)`` as check ``check``."""
        hung = [name for name in uses if name in self.hung]
        if hung:
            self.results.write(event="result", check=check, status="skipped",
                               message=f"skipped: {hung[0]} exceeded the time limit in an earlier check")
            return
        self.results.write(event="start", check=check)
        out = io.StringIO()
        start = time.perf_counter()
        # CPU time of this process (one torch thread), not wall time: a loaded machine does not
        # make a correct implementation time out; a process that sleeps is stopped by the
        # grader's wall-clock limit on the whole process instead.
        signal.signal(signal.SIGPROF, _alarm)
        signal.setitimer(signal.ITIMER_PROF, self.timeout)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                passed, message, details = func()
            status = "partial" if passed == "partial" else ("pass" if passed else "fail")
        except CheckTimeout:
            status, details = "timeout", {}
            message = (f"stopped after the time limit of {self.timeout:g} s of CPU time (infinite loop or far "
                       f"too slow)"
                       + (f" in {', '.join(uses)}" if uses else ""))
            self.hung.update(uses)
        except AssertionError as exc:  # the harness's verdict on a wrong implementation
            status, message, details = "fail", str(exc).strip() or "AssertionError", {}
        except SystemExit as exc:
            status, message, details = "error", f"the student's code called sys.exit({exc.code!r})", {}
        except BaseException as exc:  # noqa: BLE001 - student code may raise anything
            status, message, details = "error", _student_frame_summary(exc), {
                "traceback": _short("".join(traceback.format_exception(exc)))}
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        details = dict(details or {})
        if out.getvalue().strip():
            details["output"] = _short(out.getvalue())
        self.results.write(event="result", check=check, status=status, message=message,
                           seconds=round(time.perf_counter() - start, 3), details=details)


# ----------------------------------------------------------------------------- loading

def _code_names(code) -> set[str]:
    """Global names a code object (and the code nested in it) reads; not attribute names."""
    import dis

    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _object_codes(obj) -> list:
    objs = list(vars(obj).values()) if isinstance(obj, type) else [obj]
    codes = []
    for o in objs:
        code = getattr(getattr(o, "__func__", o), "__code__", None)
        if code is not None:
            codes.append(code)
    return codes


def _needed_globals(module, wanted, filename: str) -> set[str]:
    """Global names the wanted functions/classes, and the notebook's own functions they call, use
    but the module does not define."""
    seen, todo, names = set(), list(wanted), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for code in _object_codes(getattr(module, name, None)):
            if code.co_filename != filename:
                continue  # imported, not written in the notebook
            used = _code_names(code)
            names |= used
            todo.extend(n for n in used if n in vars(module) and n not in seen)
    return {n for n in names if n not in vars(module) and not hasattr(builtins, n)}


def load(notebook: Path, wanted: tuple[str, ...]):
    """The student's module (definitions only) and a message; raises with a clear message."""
    from inf265.nbdefs import _clean, load_definitions

    # A kept top-level assignment that needs something the notebook computes
    # (`keep = (targets == 1)`) is skipped and noted by nbdefs instead of hiding every definition.
    module = load_definitions(notebook, name=f"student_{notebook.stem}")
    notes, skipped = [], list(module.__nbdefs_skipped__)
    # Top-level assignments the definitions need (e.g. `device = torch.device(...)`) are not
    # definitions for nbdefs; run exactly those statements from the notebook, nothing else.
    missing = _needed_globals(module, [w for w in wanted if hasattr(module, w)], f"<{notebook.name} definitions>")
    if missing:
        import nbformat

        nb = nbformat.read(str(notebook), as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            try:
                tree = ast.parse(_clean(cell.source))
            except SyntaxError:
                continue
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) and node.value else [])
                names = {t.id for t in targets if isinstance(t, ast.Name)}
                if names & missing:
                    source = ast.unparse(node)
                    try:
                        exec(compile(ast.Module(body=[node], type_ignores=[]), f"<{notebook.name} definitions>",
                                     "exec"), vars(module))
                    except Exception as exc:  # noqa: BLE001 - reported; the check using it will fail
                        skipped.append(f"`{source[:80]}` ({type(exc).__name__}: {exc})")
                        continue
                    notes.append(source)
                    missing -= names
    absent = [w for w in wanted if not hasattr(module, w)]
    if absent:
        raise LookupError(f"{notebook.name} defines no {', '.join(absent)} at top level "
                          f"(expected {', '.join(wanted)})")
    message = f"{', '.join(wanted)} loaded from {notebook.name}"
    if skipped:
        message += (f"; skipped {len(skipped)} top-level statement(s) that need the notebook's computed data "
                    f"(first: {skipped[0]})")
    if notes:
        message += "; also ran the top-level statement(s) they need: " + "; ".join(notes)
    return module, message


# ----------------------------------------------------------------------------- backprop

def _import_harness():
    path = Path.cwd() / HARNESS
    spec = importlib.util.spec_from_file_location("tests_backpropagation", path)
    harness = importlib.util.module_from_spec(spec)
    sys.modules["tests_backpropagation"] = harness  # the student's `from tests_backpropagation import`
    spec.loader.exec_module(harness)
    return harness


def _harness_verdict(result):
    """(passed, message, details) from what main_test returned."""
    records = []
    for attr in ("checks", "records", "results"):
        seq = getattr(result, attr, None)
        if seq is not None:
            break
    else:
        seq = result if isinstance(result, (list, tuple)) else []
    for r in seq or []:
        get = (lambda k, r=r: r.get(k)) if isinstance(r, dict) else (lambda k, r=r: getattr(r, k, None))
        records.append({"name": get("name"), "passed": bool(get("passed")), "message": get("message")})
    passed = bool(result)
    n_ok = sum(r["passed"] for r in records)
    message = f"{n_ok} / {len(records)} harness checks passed" if records else (
        "harness: all checks passed" if passed else "harness reported a failure")
    bad = [r for r in records if not r["passed"]]
    if not passed and bad:
        first = str(bad[0]["message"] or "")
        cause = first.split("likely cause:", 1)[1].strip() if "likely cause:" in first else first[:300]
        message = (f"{len(bad)} of {len(records)} harness checks failed ({'; '.join(r['name'] for r in bad)}): "
                   + cause)
    return passed, message, {"harness_checks": records}


def _main_test_kwargs(harness, **wanted):
    import inspect

    params = inspect.signature(harness.main_test).parameters
    return {k: v for k, v in wanted.items() if k in params}


def _activation_table():
    import torch

    return {
        "sigmoid": (torch.sigmoid, lambda z: torch.sigmoid(z) * (1 - torch.sigmoid(z))),
        "relu": (torch.relu, lambda z: (z > 0).to(z.dtype)),
        "identity": (lambda z: z, lambda z: torch.ones_like(z)),
        "tanh": (torch.tanh, lambda z: 1 - torch.tanh(z) ** 2),
    }


def grade_backprop(runner: Runner, results: Results) -> None:
    import torch

    torch.set_default_dtype(torch.double)
    torch.set_num_threads(1)
    state = {}

    def load_check():
        state["harness"] = _import_harness()
        state["module"], message = load(Path("backpropagation.ipynb"), ("MyNet", "backpropagation"))
        return True, message, {}

    runner.run("load_backpropagation", load_check)
    if "module" not in state:
        for check in ("backprop_toy", "backprop_mnist", "backprop_batch", "backprop_activations",
                      "backprop_deep"):
            results.write(event="result", check=check, status="skipped",
                          message="skipped: MyNet/backpropagation could not be loaded")
        return
    harness, mod = state["harness"], state["module"]

    def harness_check(n_l, data="toy", activations=None, **extra):
        def check():
            torch.manual_seed(0)
            model = mod.MyNet(n_l)
            if activations:
                table = _activation_table()
                if not (isinstance(getattr(model, "f", None), dict) and isinstance(getattr(model, "df", None), dict)):
                    return False, "the student's MyNet has no f/df dicts of activations", {}
                for layer, name in enumerate(activations, start=1):
                    model.f[layer], model.df[layer] = table[name]
            kwargs = _main_test_kwargs(harness, eps=1e-6, verbose=False, data=data, **extra)
            try:
                result = harness.main_test(mod.backpropagation, model, **kwargs)
            except AssertionError as exc:
                result = getattr(exc, "result", None)
                if result is None:
                    raise
                passed, message, details = _harness_verdict(result)
                return passed, message, {**details, "harness_report": str(exc).strip()}
            return _harness_verdict(result)
        return check

    uses = ("backpropagation",)
    runner.run("backprop_toy", harness_check([2, 3, 2], "toy"), uses)
    runner.run("backprop_mnist", harness_check([24 * 24, 16, 10], "mnist"), uses)
    batch_kw = _main_test_kwargs(harness, n_samples=16)
    if batch_kw:
        runner.run("backprop_batch", harness_check([4, 8, 3], "toy", **batch_kw), uses)
    else:
        results.write(event="result", check="backprop_batch", status="skipped",
                      message="skipped: this harness's main_test takes no batch size")
    runner.run("backprop_activations", harness_check([2, 4, 3, 2], "toy", ["sigmoid", "relu", "identity"]), uses)
    runner.run("backprop_deep", harness_check([2, 5, 4, 3, 2], "toy"), uses)


# ----------------------------------------------------------------------------- SGD

def grade_sgd(runner: Runner, results: Results) -> None:
    import torch

    from grading import sgd_check

    torch.set_default_dtype(torch.double)
    torch.set_num_threads(1)
    state = {}

    def load_check():
        state["module"], message = load(Path("gradient_descent.ipynb"),
                                        ("MyMLP", "train", "train_manual_update"))
        return True, message, {}

    runner.run("load_gradient_descent", load_check)
    checks = ["train_sgd"] + [f"manual_{case}" for case in sgd_check.CASES]
    if "module" not in state:
        for check in checks:
            results.write(event="result", check=check, status="skipped",
                          message="skipped: MyMLP/train/train_manual_update could not be loaded")
        return
    mod = state["module"]
    runner.run("train_sgd", lambda: sgd_check.check_train(mod.MyMLP, mod.train), ("train",))
    for case in sgd_check.CASES:
        runner.run(f"manual_{case}",
                   lambda case=case: sgd_check.check_manual(mod.MyMLP, mod.train_manual_update, case),
                   ("train_manual_update",))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parts, results_path, timeout = argv[0].split(","), argv[1], float(argv[2])
    results = Results(results_path)
    sys.path.append(os.getcwd())  # the student's own helper modules, after ours (python -P)
    runner = Runner(results, timeout)
    for part in parts:
        {"backprop": grade_backprop, "sgd": grade_sgd}[part](runner, results)
        results.write(event="part_done", part=part)
    return 0


if __name__ == "__main__":
    sys.exit(main())
