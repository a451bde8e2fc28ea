"""Grading one submission: the trusted orchestration of the runner's checks and the notebook runs.

Nothing here imports student code, and nothing reads the student's folder but :func:`grade`'s one
copy of it (:func:`grading.sandbox.copy_tree`: links are named, never followed); everything after
works on that copy. The checks of section 2 and 3 ask a sandboxed runner
(:mod:`grading.session`) for data and decide with :mod:`grading.checks`; the static reading of
the notebooks (:mod:`grading.checks.static`) is done in a bounded child process; each notebook is re-executed in a
sandboxed kernel (:mod:`grading.notebooks`). A runner that dies, hangs or sends something
malformed costs the check it was answering; a fresh runner, in a fresh copy, takes the next.
"""
from __future__ import annotations

import dataclasses
import os
import re
import stat
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inf265 import ROOT

from . import inbox, notebooks, registry, sandbox
from .checks import backprop as bp_checks
from .checks import sgd as sgd_checks
from .checks import static
from .rubric import Rubric
from .session import BadReply, Runner, RunnerFailure, text

SELF_CHECK = ROOT / "tests_gradient_descent.py"
NOTEBOOKS = {"backprop": "backpropagation.ipynb", "sgd": "gradient_descent.ipynb"}
PACKAGES_HINT = ("a package students may use goes into the rubric's [environment] packages (grading/rubric.toml), "
                 "installed by make grade")
NOTEBOOK_CHECKS = {"notebook_backpropagation": "backpropagation.ipynb",
                   "notebook_gradient_descent": "gradient_descent.ipynb"}


class NotGradable(ValueError):
    """The folder is not a submission (missing, empty, no notebook); the message says what it is."""


@dataclass
class Context:
    course: Path                 # the read-only support folder (grading.course.build)
    data: Path | None            # the data folder, mounted read-only
    harness: Path                # the official tests_backpropagation.py, replacing the student's copy
    rubric: Rubric
    limits: sandbox.Limits
    check_cpu: float             # CPU seconds per request to the student's code
    cell_timeout: float
    isolated: bool = True
    notebooks: bool = True       # re-execute the notebooks (False: --no-notebooks, the checks only)
    notebook_timeout: float | None = None  # wall-clock seconds per notebook (default: the rubric's)
    box: sandbox.Box | None = None  # the submission's control group (set per submission by grade())
    run_as: tuple[int, int] | None = None  # without bwrap: students' code runs as this (uid, gid)
    static: dict = dataclasses.field(default_factory=dict)  # static.read of the submission's copy

    @property
    def notebook_seconds(self) -> float:
        return self.notebook_timeout or self.rubric.notebook_timeout

    @property
    def provided(self) -> dict[str, Path]:
        """The course's files put into every working copy in place of the student's own: the official
        harness and the public self-check (students hand in only their notebooks)."""
        return {"tests_backpropagation.py": self.harness, "harness_core.py": self.harness.parent / "harness_core.py",
                "tests_gradient_descent.py": SELF_CHECK}


def check_folder(folder: Path) -> None:
    """The folder is a submission: a folder (not a link to one) holding a notebook (not a link to one)."""
    if not os.path.lexists(folder):
        raise NotGradable(f"{folder} does not exist")
    if folder.is_symlink() or not folder.is_dir():
        raise NotGradable(f"{folder} is not a folder (give the folder holding the student's notebooks; links are "
                          f"not followed)")
    if not any(_regular(folder / nb) for nb in NOTEBOOKS.values()):
        content = "it is empty" if not any(folder.iterdir()) else "it holds neither notebook"
        if any((folder / nb).is_symlink() for nb in NOTEBOOKS.values()):
            content = "its notebooks are symbolic links, which the grader does not follow"
        raise NotGradable(f"{folder} is not a submission: {content} ({' nor '.join(NOTEBOOKS.values())})")


def unreadable(folder: Path, name: str, ctx: Context) -> dict | None:
    """The record of a notebook that cannot be read (its checks alone are not gradable), or None."""
    why = inbox.unreadable(folder / name, ctx.rubric.notebook_mib) if (folder / name).is_file() else None
    return record("not_gradable", f"not gradable: {why}") if why else None


def _regular(path: Path) -> bool:
    """A regular file itself, not a link to one (``Path.is_file`` follows links)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def record(status: str, message: str, **details) -> dict:
    return {"status": status, "message": message, "details": details}


class Checks:
    """The runner's part of one submission: a runner per workspace, replaced when it fails."""

    def __init__(self, submission: Path, ctx: Context):
        self.submission, self.ctx = submission, ctx
        self.runner = self.ws = None
        self.loaded: dict[str, dict] = {}
        self.hung: dict[str, str] = {}  # a graded function -> why its later checks are skipped
        self.notes: list[str] = []
        self.loaded_requests: dict[str, list[str]] = {}  # reloaded into every fresh runner

    def _runner(self) -> Runner:
        if self.runner is not None and not self.runner.dead:
            return self.runner
        self.close()
        self.ws = sandbox.Workspace(self.submission, self.ctx.course, self.ctx.data, self.ctx.provided,
                                    self.ctx.isolated, self.ctx.box, self.ctx.run_as).__enter__()
        self.runner = Runner(self.ws, self.ctx.limits).__enter__()
        for notebook, wanted in list(self.loaded_requests.items()):
            self.runner.request("load", {"notebook": notebook, "wanted": wanted}, cpu_seconds=self.ctx.check_cpu * 3,
                                what=f"loading {notebook}")
        return self.runner

    def close(self) -> None:
        if self.runner is not None:
            out = self.runner.close()
            if out is not None and (out.stdout + out.stderr).strip():
                self.notes.append(text((out.stdout + out.stderr).strip(), 3000))
            self.runner = None
        if self.ws is not None:
            self.ws.__exit__(None, None, None)
            self.ws = None

    def load(self, notebook: str, wanted: list[str]) -> dict:
        runner = self._runner()
        reply, _ = runner.request("load", {"notebook": notebook, "wanted": wanted}, cpu_seconds=self.ctx.check_cpu * 3,
                                  what=f"loading {notebook}")
        self.loaded_requests[notebook] = wanted
        self.loaded[notebook] = reply
        return reply

    def run(self, check_id: str, uses: str, fn) -> dict:
        """``fn(runner) -> (status, message, details)`` as check ``check_id``, under the runner's limits."""
        if uses in self.hung:
            return record("skipped", f"skipped: {uses} {self.hung[uses]} in an earlier check")
        start = time.monotonic()
        try:
            status, message, details = fn(self._runner())
        except RunnerFailure as failure:
            if failure.halts:
                self.hung[uses] = failure.halts
            status, message, details = failure.status, failure.message, failure.details
        except BadReply as exc:
            status, message, details = "error", f"malformed reply from the runner: {exc}", {}
        except Exception as exc:  # noqa: BLE001 - a reply that trips our own checking code
            status, message, details = "error", (f"the grader could not judge this check ({type(exc).__name__}: "
                                                 f"{exc}); the reply may be malformed"), {}
        if status != "pass" and sandbox.is_memory_error(message) and "memory limit" not in message:
            message = f"stopped: {sandbox.memory_message(self.ctx.limits)} ({message})"
        result = record(status, message, **details)
        result["seconds"] = round(time.monotonic() - start, 2)
        return result


def _load_record(reply: dict, notebook: str, wanted: list[str], required: list[str],
                 syntax: list[str] = ()) -> tuple[dict, bool]:
    """The load check's record, and whether the graded functions are there (``syntax``: the cells that do
    not parse, which define nothing)."""
    found, skipped = reply.get("found", {}), reply.get("skipped", [])
    missing_modules = reply.get("missing_modules", {})
    absent = [w for w in required if w not in found]
    notes = [f"code cell {text(s.get('cell'), 10)}: `{text(s.get('statement'), 120)}` skipped "
             f"({text(s.get('error'), 200)})" for s in skipped[:6]]
    details = {"found": {text(k, 60): text(v, 300) for k, v in list(found.items())[:20]}, "skipped": notes}
    if not absent:
        message = f"{', '.join(required)} loaded from {notebook}"
        if notes:
            message += f"; {len(skipped)} statement(s) skipped, not needed by them (first: {notes[0]})"
        return record("pass", message, **details), True
    # a graded function missing because one of its imports failed is the machine's problem, not the student's
    needs = [m for m, names in missing_modules.items() if names]
    why = {w: next((n for n in notes if f"def {w}(" in n or f"class {w}" in n), None) for w in absent}
    if needs and all(why[w] is None or "ModuleNotFoundError" in (why[w] or "") for w in absent):
        return record("not_gradable", f"not gradable here: needs the Python module(s) {', '.join(map(str, needs))} "
                                      f"(not installed here), for {', '.join(absent)}; {PACKAGES_HINT}", **details), False
    parts = [f"{w}: {why[w]}" if why[w] else f"{w}: not defined at the top level of the notebook" for w in absent]
    broken = f" ({'; '.join(syntax)})" if syntax else ""
    return record("fail", f"{notebook}: cannot load {'; '.join(parts)}{broken}", **details), False


def environment(records: dict, reply: dict) -> None:
    """A check that failed with ``NameError`` for a name whose import failed (a package not installed
    here, a module the student did not hand in) is not gradable here, not the student's error."""
    names = {name: module for module, bound in (reply.get("missing_modules") or {}).items()
             if isinstance(bound, list) for name in bound}
    for check_id, rec in records.items():
        found = re.search(r"NameError: name '(\w+)' is not defined", rec.get("message", ""))
        if rec["status"] in ("error", "fail", "partial") and found and found.group(1) in names:
            module = text(names[found.group(1)], 80)
            records[check_id] = record("not_gradable", f"not gradable here: needs the Python module {module} "
                                                       f"({found.group(1)} comes from it; not installed here, or not "
                                                       f"handed in); {PACKAGES_HINT}", **rec.get("details", {}))


def _skip_all(ids, message: str, status: str = "skipped") -> dict:
    return {cid: record(status, message) for cid in ids}


def grade_backprop(checks: Checks, folder: Path, ctx: Context) -> dict:
    notebook = NOTEBOOKS["backprop"]
    ids = registry.ids(part="backprop") + ("backprop_by_hand",)
    if not (folder / notebook).is_file():
        return _skip_all(ids, f"{notebook} is missing from the submission", "fail")
    if bad := unreadable(folder, notebook, ctx):
        return _skip_all(ids, bad["message"], "not_gradable")
    try:
        reply = checks.load(notebook, ["MyNet", "backpropagation"])
    except RunnerFailure as failure:
        return {"load_backpropagation": record(failure.status, f"loading {notebook}: {failure.message}"),
                **_skip_all([i for i in ids if i != "load_backpropagation"], "skipped: the notebook did not load")}
    records = {}
    read = ctx.static.get(notebook, {})
    if "backpropagation" not in reply.get("found", {}) and read.get("backprop_method"):
        reply.setdefault("found", {})["backpropagation"] = "MyNet.backpropagation (a method of MyNet)"
    records["load_backpropagation"], ok = _load_record(reply, notebook, ["MyNet", "backpropagation"],
                                                       ["MyNet", "backpropagation"], read.get("syntax", []))
    if "method" in reply["found"].get("backpropagation", ""):
        records["load_backpropagation"]["message"] += (" (backpropagation is defined inside the MyNet class: "
                                                       "called as MyNet.backpropagation(model, y_true, y_pred))")
    if not ok:
        records.update(_skip_all([i for i in ids if i != "load_backpropagation"],
                                 "skipped: MyNet / backpropagation could not be loaded",
                                 "not_gradable" if records["load_backpropagation"]["status"] == "not_gradable"
                                 else "skipped"))
        return records
    findings = read.get("autograd", [])
    records["backprop_by_hand"] = (record("fail", "backpropagation does not compute the gradients by hand: "
                                                  + static.describe(findings), findings=findings) if findings else
                                   record("pass", "no autograd and no evaluation of the model in backpropagation "
                                                  "or the notebook code it calls (read from its source)"))
    for check_id in registry.ids(part="backprop"):
        if check_id == "load_backpropagation":
            continue
        records[check_id] = checks.run(check_id, "backpropagation",
                                       lambda r, c=check_id: bp_checks.check(r, notebook, c, ctx))
    environment(records, reply)
    if findings:  # gradients obtained with autograd are not the student's: the course's checks score 0
        for check_id in registry.ids(part="backprop", scope="course"):
            if check_id != "load_backpropagation" and records[check_id]["status"] in ("pass", "partial"):
                records[check_id] = record("fail", "not credited: backpropagation uses autograd or evaluates the "
                                                   "model (see backprop_by_hand); " + records[check_id]["message"],
                                           **records[check_id]["details"])
    return records


def grade_sgd(checks: Checks, folder: Path, ctx: Context) -> dict:
    notebook = NOTEBOOKS["sgd"]
    ids = registry.ids(part="sgd")
    if not (folder / notebook).is_file():
        return _skip_all(ids, f"{notebook} is missing from the submission", "fail")
    if bad := unreadable(folder, notebook, ctx):
        return _skip_all(ids, bad["message"], "not_gradable")
    read = ctx.static.get(notebook, {})
    wanted = ["train", "train_manual_update"] + read.get("names", [])
    try:
        reply = checks.load(notebook, wanted)
    except RunnerFailure as failure:
        return {"load_gradient_descent": record(failure.status, f"loading {notebook}: {failure.message}"),
                **_skip_all([i for i in ids if i != "load_gradient_descent"], "skipped: the notebook did not load")}
    found = reply.get("found", {})
    manual = sgd_checks.manual_functions(found)
    required = ["train", manual[0] if manual else "train_manual_update"]
    records = {}
    records["load_gradient_descent"], _ = _load_record(reply, notebook, wanted, required, read.get("syntax", []))
    if not reply.get("classes"):
        records["load_gradient_descent"]["message"] += "; no nn.Module subclass (MyMLP) is defined"
    cpu = ctx.check_cpu
    state = {"class": None}

    def architecture(runner):
        state["class"], verdict = sgd_checks.probe(runner, notebook, cpu)
        return verdict
    records["mymlp_architecture"] = checks.run("mymlp_architecture", "MyMLP", architecture)
    status = records["load_gradient_descent"]["status"]
    for check_id in ("train_sgd",) + tuple(sgd_checks.CASES):
        uses = "train" if check_id == "train_sgd" else "train_manual_update"
        if uses == "train" and "train" not in found or uses != "train" and not manual:
            records[check_id] = record("not_gradable" if status == "not_gradable" else "fail",
                                       f"{uses} could not be loaded (see load_gradient_descent)")
        elif check_id == "train_sgd":
            records[check_id] = checks.run(check_id, uses, lambda r: sgd_checks.check_train(
                r, notebook, state["class"], cpu))
        else:
            records[check_id] = checks.run(check_id, uses, lambda r, c=check_id: sgd_checks.check_manual(
                r, notebook, state["class"], c, manual, cpu))
    environment(records, reply)
    optimizer = read.get("optimizer", [])
    if optimizer:  # an optimizer's update is not the manual one the task asks for
        for check_id in sgd_checks.CASES:
            rec = records.get(check_id)
            if rec and rec["status"] in ("pass", "partial"):
                records[check_id] = record("fail", "not credited: train_manual_update does not update the parameters "
                                                   "by hand: " + static.describe(optimizer), findings=optimizer,
                                           **rec["details"])
    return records


def integrity(folder: Path, ctx: Context, skipped: list[str] = ()) -> dict:
    """Tampering findings per notebook (static, from the copy; a notebook that cannot be read is not
    gradable, not a finding), and the files of the submission that were not copied (links, special
    files), for the report and the verdicts."""
    found = {nb: read.get("tampering", []) for nb, read in ctx.static.items() if not unreadable(folder, nb, ctx)}
    if skipped:
        found["submission files"] = [{"cell": None, "where": s.split(": ", 1)[0], "line": 0, "code": "",
                                      "what": s.split(": ", 1)[-1]} for s in skipped]
    return found


def apply_integrity(records: dict, findings: dict) -> None:
    """Code that patches what the grader relies on voids the checks of its notebook's part."""
    for part, notebook in NOTEBOOKS.items():
        if not findings.get(notebook):
            continue
        why = static.describe(findings[notebook])
        for check_id in registry.ids(part=part) + (("backprop_by_hand",) if part == "backprop" else ()):
            rec = records.get(check_id)
            if rec and rec["status"] in ("pass", "partial"):
                records[check_id] = record("fail", f"not credited: {notebook} tampers with the environment ({why})",
                                           **rec["details"])


def _prepare(ctx: Context) -> None:
    bp_checks.prepare(ctx)
    sgd_checks.prepare()


def run_checks(folder: Path, ctx: Context) -> tuple[dict, float, list[str]]:
    """Every runner check of the submission: (records, seconds, notes about the runner)."""
    start = time.monotonic()
    checks = Checks(folder, ctx)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # the trusted references are computed while the runner starts (torch's import takes seconds)
        ready = pool.submit(_prepare, ctx)
        try:
            checks._runner()
            ready.result()
            records = grade_backprop(checks, folder, ctx)
            records.update(grade_sgd(checks, folder, ctx))
        finally:
            checks.close()
    return records, round(time.monotonic() - start, 2), checks.notes


def run_notebook(folder: Path, name: str, ctx: Context, out_dir: Path) -> dict:
    if not (folder / name).is_file():
        return record("fail", f"{name} is missing from the submission")
    if bad := unreadable(folder, name, ctx):
        return bad
    if ctx.static.get(name, {}).get("error"):
        return record("error", ctx.static[name]["error"])
    with sandbox.Workspace(folder, ctx.course, ctx.data, ctx.provided,
                           ctx.isolated, ctx.box, ctx.run_as) as ws:
        # a time limit per cell, and one for the whole notebook (wall clock, from the kernel's start)
        limits = sandbox.Limits(memory=ctx.limits.memory, processes=ctx.limits.processes,
                                cpu_seconds=10 ** 6, wall_seconds=ctx.notebook_seconds)
        rec = notebooks.execute(ws, name, ctx.cell_timeout, limits, out_dir / "executed" / name)
    if "(not installed here)" in rec.get("message", ""):
        rec["message"] += f"; {PACKAGES_HINT}"
    rec["details"] = {k: rec.pop(k) for k in list(rec) if k not in ("status", "message", "seconds")}
    rec["details"]["executed_notebook"] = f"executed/{name}"
    return rec


def grade(folder: Path, ctx: Context, out_dir: Path) -> dict:
    """All checks of one submission folder: ``{"records", "steps", "integrity", "notes"}``.

    The folder is read once, into a private copy (no link followed); the static reading of that
    copy runs in a bounded child process; everything the submission starts shares one box
    (:class:`grading.sandbox.Box`: memory and processes together), emptied when grading ends.
    """
    check_folder(folder)
    with tempfile.TemporaryDirectory(prefix="inf265-copy-") as tmp:
        copy = Path(tmp) / "submission"
        skipped = sandbox.copy_tree(folder, copy)
        box = sandbox.Box.create(ctx.limits.total_memory, ctx.limits.tasks)
        ctx = dataclasses.replace(ctx, static=static.read_bounded(copy), box=box)
        try:
            return _grade(copy, ctx, out_dir, integrity(copy, ctx, skipped))
        finally:
            if box is not None:
                box.close()
            if ctx.run_as:
                sandbox.kill_user(ctx.run_as[0])


def _grade(folder: Path, ctx: Context, out_dir: Path, findings: dict) -> dict:
    with ThreadPoolExecutor(max_workers=3) as pool:
        checks_future = pool.submit(run_checks, folder, ctx)
        nb_futures = {cid: pool.submit(run_notebook, folder, nb, ctx, out_dir)
                      for cid, nb in NOTEBOOK_CHECKS.items() if ctx.notebooks}
        records, check_seconds, notes = checks_future.result()
        steps = {"checks": check_seconds}
        for cid in NOTEBOOK_CHECKS:
            if cid in nb_futures:
                records[cid] = nb_futures[cid].result()
                steps[cid] = records[cid].get("seconds")
            else:
                records[cid] = record("skipped", "not re-executed (--no-notebooks)")
    apply_integrity(records, findings)
    return {"records": records, "steps": steps, "integrity": findings, "notes": notes}
