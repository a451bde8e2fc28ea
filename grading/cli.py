"""Grade student submissions: ``python -m grading SUBMISSION_DIR [SUBMISSION_DIR ...]``.

For each folder holding ``backpropagation.ipynb`` and ``gradient_descent.ipynb``:

1. loads the student's ``MyNet``/``backpropagation`` and ``MyMLP``/``train``/
   ``train_manual_update`` with ``inf265.nbdefs.load_definitions`` (definitions only, no heavy
   cells) inside a sandboxed subprocess, and runs on them the official harness
   ``tests_backpropagation.main_test`` (toy, MNIST, a batch, other activations, a deeper net) and
   the exactness check against ``torch.optim.SGD`` (:mod:`grading.sgd_check`);
2. re-executes each notebook top to bottom in a fresh kernel (nbclient) with a per-cell time
   limit and reports the cell that fails;
3. writes ``<out>/<student>/report.md`` and ``report.json`` (each check, status, diagnostic
   message, points from the rubric) and the executed notebooks under ``executed/``.

Every step runs in a subprocess with a time limit, in a temporary copy of the submission
(:mod:`grading.sandbox`); the submission folder is only read. Exit status: 0 when every
submission was graded (whatever the students' scores), 2 on a usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import rubric as rubric_mod
from .report import write_reports
from .sandbox import NOTEBOOKS, ROOT, Sandbox, SubmissionError, check_submission, kill_group

DEFAULT_OUT = ROOT / "grading-out"
DEFAULT_HARNESS = ROOT / "tests_backpropagation.py"
PY = [sys.executable, "-P"]  # -P: the student's folder does not shadow the grader's modules


def _parse_results(path: Path) -> tuple[dict, list[str], set[str]]:
    results, started, done = {}, [], set()
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("event") == "start":
                started.append(rec["check"])
            elif rec.get("event") == "result":
                results[rec["check"]] = rec
            elif rec.get("event") == "part_done":
                done.add(rec["part"])
    return results, started, done


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def run_checks(submission: Path, parts: dict[str, tuple[str, ...]], harness: Path | None,
               check_timeout: float) -> dict:
    """Run the check parts (``{"backprop": check ids, "sgd": ...}``) in sandboxed workers.

    One worker process runs every part (one torch import); when it dies or is killed in a part,
    that part's unfinished checks are reported and a fresh worker in a fresh copy runs the
    parts after it. Returns one record per check, whatever happened.
    """
    records, remaining, seconds, replaced = {}, list(parts), 0.0, False
    while remaining:
        checks = [c for p in remaining for c in parts[p]]
        with Sandbox(submission, harness) as box:
            results_file = box.private / "results.jsonl"
            results_file.touch()
            limit = check_timeout * (len(checks) + 1) + 60
            run = box.run(PY + ["-m", "grading.worker", ",".join(remaining), str(results_file), str(check_timeout)],
                          timeout=limit, extra_files=[results_file])
            results, started, done = _parse_results(results_file)
            replaced = replaced or box.replaced_harness
        seconds += run.seconds
        for part in list(remaining):
            if part in done:
                records.update({c: results[c] for c in parts[part] if c in results})
                remaining.remove(part)
                continue
            # the process ended or was killed in this part: report its unfinished checks
            details = {"stderr": _tail(run.stderr)} if run.stderr.strip() else {}
            for check in parts[part]:
                if check in results:
                    records[check] = results[check]
                elif check in started:
                    if run.timed_out:
                        status, msg = "timeout", f"stopped: the grading process was killed at its limit of {limit:g} s"
                    else:
                        status, msg = "error", (f"the grading process ended during this check (exit status "
                                                f"{run.returncode}): the student's code exited or crashed Python")
                    records[check] = {"check": check, "status": status, "message": msg, "details": details}
                else:
                    records[check] = {"check": check, "status": "skipped", "details": details,
                                      "message": "not reached: the grading process "
                                                 + ("was stopped at its limit" if run.timed_out else
                                                    f"ended early (exit status {run.returncode})")}
            remaining.remove(part)
            break  # the parts after it get a fresh process
    return {"records": records, "seconds": round(seconds, 2), "replaced_harness": replaced}


def run_notebook(submission: Path, name: str, cell_timeout: float, out_dir: Path, harness: Path | None) -> dict:
    """Execute one notebook in a fresh kernel in a fresh sandbox; the check record."""
    import nbformat

    try:
        n_code = sum(c.cell_type == "code" for c in nbformat.read(str(submission / name), as_version=4).cells)
    except Exception as exc:  # not a notebook at all
        return {"status": "error", "message": f"{name} is not a readable notebook: {type(exc).__name__}: {exc}"}
    with Sandbox(submission, harness) as box:
        out_nb, out_json, pid_file = (box.private / "executed.ipynb", box.private / "result.json",
                                      box.private / "kernel.pid")
        limit = cell_timeout * (n_code + 1) + 90
        run = box.run(PY + ["-m", "grading.notebooks", name, str(cell_timeout), str(out_nb), str(out_json),
                            str(pid_file)], timeout=limit, guarded=False)
        if pid_file.exists():  # the kernel runs in its own session: end it too
            try:
                kill_group(int(pid_file.read_text()))
            except ValueError:
                pass
        if out_json.exists():
            record = json.loads(out_json.read_text())
        elif run.timed_out:
            record = {"status": "timeout", "message": f"stopped at the overall limit of {limit:g} s"}
        else:
            record = {"status": "error", "message": f"the execution process failed (exit status "
                                                    f"{run.returncode})", "details": {"stderr": _tail(run.stderr)}}
        if out_nb.exists():
            (out_dir / "executed").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out_nb, out_dir / "executed" / name)
            record["executed_notebook"] = f"executed/{name}"
    record["seconds"] = round(run.seconds, 2)
    if record["status"] != "pass" and record.get("cell"):
        later = record.get("cells_not_run") or 0
        record["message"] = (f"code cell {record['cell']} of {record['code_cells']}: {record['message']}"
                             + (f" ({later} later code cell(s) not run)" if later else ""))
    elif record["status"] == "pass":
        record["message"] = f"all {record.get('code_cells', n_code)} code cells ran without error"
    return record


def grade(submission: Path, out_root: Path, rubric: rubric_mod.Rubric, harness: Path,
          check_timeout: float, cell_timeout: float) -> dict:
    submission = submission.resolve()
    check_submission(submission)
    out_dir = out_root / submission.name
    if out_dir.exists():
        if not (out_dir / "report.json").is_file() and any(out_dir.iterdir()):
            raise SubmissionError(f"{out_dir} exists and is not a grading report folder (no report.json); "
                                  f"choose another --out folder")
        shutil.rmtree(out_dir)  # an earlier report of this student: replaced
    out_dir.mkdir(parents=True)
    start = time.monotonic()
    records: dict[str, dict] = {}
    steps = {}
    parts = {}
    for part, checks, nb in (("backprop", rubric_mod.BACKPROP_CHECKS, NOTEBOOKS[0]),
                             ("sgd", rubric_mod.SGD_CHECKS, NOTEBOOKS[1])):
        if (submission / nb).is_file():
            parts[part] = checks
        else:
            for check in checks:
                records[check] = {"status": "fail", "message": f"{nb} is missing from the submission"}
    # The three steps are independent sandboxed processes: run them side by side.
    with ThreadPoolExecutor(max_workers=3) as pool:
        checks_future = pool.submit(run_checks, submission, parts, harness, check_timeout) if parts else None
        nb_futures = {check: pool.submit(run_notebook, submission, nb, cell_timeout, out_dir, harness)
                      for nb, check in zip(NOTEBOOKS, rubric_mod.NOTEBOOK_CHECKS) if (submission / nb).is_file()}
        replaced = False
        if checks_future is not None:
            res = checks_future.result()
            records.update(res["records"])
            steps["checks"] = res["seconds"]
            replaced = res["replaced_harness"]
        for nb, check in zip(NOTEBOOKS, rubric_mod.NOTEBOOK_CHECKS):
            if check in nb_futures:
                records[check] = nb_futures[check].result()
                steps[check] = records[check].get("seconds")
            else:
                records[check] = {"status": "fail", "message": f"{nb} is missing from the submission"}
    report = {
        "student": submission.name,
        "submission": str(submission),
        "rubric": rubric.path,
        "title": rubric.title,
        "loading": "definitions only (inf265.nbdefs.load_definitions) in a sandboxed subprocess; "
                   "notebooks re-executed separately in a fresh kernel",
        "harness": "official tests_backpropagation.py"
                   + (" (the submission's own copy was replaced in the working copy)"
                      if replaced else ""),
        "step_seconds": steps,
        "limits": {"check_timeout": check_timeout, "cell_timeout": cell_timeout},
        "checks": [],
    }
    for check in rubric_mod.ALL_CHECKS:
        rec = records[check]
        status = rec["status"]
        report["checks"].append({
            "id": check, "title": rubric.titles.get(check, check), "status": status,
            "points": rubric.score(check, status), "max_points": rubric.points.get(check, 0.0),
            "message": rec.get("message", ""), "seconds": rec.get("seconds"),
            "details": {k: v for k, v in rec.items()
                        if k not in ("check", "status", "message", "seconds", "event")} | rec.get("details", {}),
        })
    for c in report["checks"]:
        c["details"].pop("details", None)
    report["score"] = round(sum(c["points"] for c in report["checks"]), 4)
    report["max_score"] = rubric.total
    report["seconds"] = round(time.monotonic() - start, 1)
    write_reports(report, out_dir)
    report["out_dir"] = str(out_dir)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grading", description=__doc__.splitlines()[0])
    parser.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSION_DIR",
                        help="a student's folder holding backpropagation.ipynb and gradient_descent.ipynb")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="reports go to OUT/<student folder name>/ (default: grading-out/ in the project)")
    parser.add_argument("--rubric", type=Path, default=None, help="rubric TOML (default: grading/rubric.toml)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per notebook cell when re-executing (default: the rubric's cell_timeout)")
    parser.add_argument("--check-timeout", type=float, default=None,
                        help="seconds per check on a student's function (default: the rubric's check_timeout)")
    parser.add_argument("--jobs", "-j", type=int, default=1,
                        help="grade this many submissions at the same time (default 1)")
    parser.add_argument("--harness", type=Path, default=DEFAULT_HARNESS,
                        help="the backpropagation harness to grade with (default: tests_backpropagation.py)")
    args = parser.parse_args(argv)
    try:
        rubric = rubric_mod.load(args.rubric)
    except rubric_mod.RubricError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for value, name in ((args.timeout, "--timeout"), (args.check_timeout, "--check-timeout")):
        if value is not None and value <= 0:
            print(f"error: {name} must be a positive number of seconds, got {value:g}", file=sys.stderr)
            return 2
    if not args.harness.is_file():
        print(f"error: the harness {args.harness} does not exist; pass --harness FILE", file=sys.stderr)
        return 2
    out_root = args.out.resolve()
    for sub in args.submissions:
        try:
            check_submission(sub)
        except SubmissionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if out_root == sub.resolve() or sub.resolve() in out_root.parents:
            print(f"error: --out {args.out} is inside the submission {sub}; the grader never writes into a "
                  f"submission: choose another folder", file=sys.stderr)
            return 2
    cell_timeout = args.timeout or rubric.cell_timeout
    check_timeout = args.check_timeout or rubric.check_timeout
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    names = [sub.resolve().name for sub in args.submissions]
    if len(set(names)) != len(names):
        print("error: two submissions have the same folder name; their reports would overwrite each other "
              "(OUT/<folder name>/): grade them with different --out folders", file=sys.stderr)
        return 2

    for sub in args.submissions:
        out_dir = out_root / sub.resolve().name
        if out_dir.exists() and not (out_dir / "report.json").is_file() and any(out_dir.iterdir()):
            print(f"error: {out_dir} exists and is not a grading report folder (no report.json); the grader "
                  f"would replace it: choose another --out folder", file=sys.stderr)
            return 2

    def one(sub):
        return grade(sub, out_root, rubric, args.harness.resolve(), check_timeout, cell_timeout)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each grade waits on subprocesses
        for report in pool.map(one, args.submissions):
            print(f"{report['student']}: {report['score']:g} / {report['max_score']:g} "
                  f"({report['seconds']:.1f} s)")
            for c in report["checks"]:
                print(f"  {c['status'].upper():8} {c['points']:>4g}/{c['max_points']:<3g} {c['id']:26} "
                      f"{c['message'].splitlines()[0][:150] if c['message'] else ''}")
            print(f"  report: {os.path.relpath(Path(report['out_dir']) / 'report.md')}", flush=True)
    return 0
