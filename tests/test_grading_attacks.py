"""The grader against hostile submissions (tests/attack_bank.py): no trick raises a score.

All attacks are graded in one run of ``python -m grading``, as an instructor would run it. For
each: its score is at most the plain wrong submission's; the canary folder beside the
submissions is neither changed nor read into any report; the loopback server and a unix socket of
the host get no connection; no process started by a submission is left; the memory attack is
reported as such. A correct submission in the course's Lab 4 style (layers with their own
``backward``) is graded in the same run and gets the backpropagation points.
"""
from __future__ import annotations

import dataclasses
import http.server
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

import attack_bank

ROOT = Path(__file__).resolve().parent.parent
# the bank is graded in one run (two submissions at a time): longer than the suite's default per test
pytestmark = pytest.mark.timeout(2400)
SECRET = "canary-secret-7f3a9c"


class _Counter(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        _Counter.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("attacks")
    canary = base / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_text(SECRET)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    marker = f"inf265-attack-survivor-{os.getpid()}-{time.monotonic_ns()}"
    (base / "host").mkdir()
    host_socket = base / "host" / "service.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(host_socket))
    listener.listen(64)
    listener.settimeout(0.2)
    accepted = []

    def accept():
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass
    stop = threading.Event()
    threading.Thread(target=accept, daemon=True).start()
    bank = attack_bank.attacks(canary, server.server_address[1], marker, host_socket)
    folders = [attack_bank.build(base / "submissions", name, trick, canary) for name, trick in bank.items()]
    folders.append(attack_bank.build_lab4(base / "submissions"))
    out = base / "out"
    env = dict(os.environ, DATA_DIR=str(Path(shared_data).resolve()))
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "grading", *map(str, folders), "--out", str(out), "--jobs", "2",
                          # limits well above what the attack notebooks' own cells and the checks need (a few s),
                          # well below the rubric's: tricks that sleep or loop are stopped sooner
                          "--timeout", "20", "--check-timeout", "8"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.monotonic() - start
    time.sleep(1)
    server.shutdown()
    stop.set()
    listener.close()
    reports = {name: json.loads((out / name / "report.json").read_text()) for name in bank}
    lab4 = json.loads((out / "lab4_layers" / "report.json").read_text())
    return {"reports": reports, "run": run, "canary": canary, "hits": list(_Counter.hits), "marker": marker,
            "out": out, "seconds": seconds, "socket_connections": len(accepted), "lab4": lab4}


def _checks(report):
    return {c["id"]: c for c in report["checks"]}


def test_the_grader_survives_every_attack(attacked):
    run = attacked["run"]
    assert run.returncode in (0, 1), run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    for name, report in attacked["reports"].items():
        assert not report.get("not_gradable"), (name, report.get("not_gradable"))


def test_no_trick_scores_more_than_the_plain_wrong_code(attacked):
    reports = attacked["reports"]
    plain = reports["plain"]
    assert 0 < plain["score"] < plain["max_score"]
    for name, report in reports.items():
        assert report["score"] <= plain["score"], (name, report["score"], plain["score"],
                                                   {c["id"]: c["status"] for c in report["checks"]})
        for cid in ("manual_plain", "manual_weight_decay", "manual_momentum", "manual_combined"):
            assert _checks(report)[cid]["status"] != "pass", (name, cid)
        assert _checks(report)["backprop_toy"]["status"] != "pass", name


def test_the_canary_is_neither_changed_nor_read(attacked):
    canary = attacked["canary"]
    assert sorted(p.name for p in canary.iterdir()) == ["secret.txt"]
    assert (canary / "secret.txt").read_text() == SECRET
    for path in attacked["out"].rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in attacked["run"].stdout + attacked["run"].stderr


def test_no_request_reaches_the_network(attacked):
    assert attacked["hits"] == []


def test_no_host_socket_is_connected_through_a_planted_link(attacked):
    """The kernel replaced its socket files with links to a host socket: the grader never connects."""
    assert attacked["socket_connections"] == 0
    executed = (attacked["out"] / "socket_link" / "executed" / "backpropagation.ipynb").read_text()
    assert "replaced" in executed  # the links were planted: the trick ran


def test_links_are_named_and_never_read(attacked):
    report = attacked["reports"]["links"]
    named = {f["where"]: f["what"] for f in report["integrity"]["submission files"]}
    assert named == {name: "a symbolic link, not followed" for name in ("backpropagation.ipynb", "notes", "secret.txt")}
    md = (attacked["out"] / "links" / "report.md").read_text()
    assert "3 * (delta.T @ model.a" not in md  # the other student's code (the linked notebook) is not quoted
    checks = _checks(report)
    assert checks["load_backpropagation"]["status"] == "fail" and "missing" in checks["load_backpropagation"]["message"]


def _outside_fences(md: str) -> list[str]:
    """The lines of a Markdown text that are rendered (not inside a fenced block)."""
    out, fence = [], None
    for line in md.splitlines():
        if fence is None and line.startswith("```") and "`" not in line.lstrip("`"):  # an opening fence
            fence = line[:len(line) - len(line.lstrip("`"))]
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is None:
            out.append(line)
    assert fence is None, "a fence is left open"
    return out


def test_student_text_cannot_forge_the_report(attacked):
    md = (attacked["out"] / "forged_report" / "report.md").read_text()
    assert "FORGED" in md  # quoted...
    rendered = _outside_fences(md)
    assert not any(line.lstrip().startswith(("# FORGED", "| forged")) for line in rendered)  # ...never rendered
    assert sum(line.startswith("Score:") for line in rendered) == 1
    assert all("FORGED" not in line or "`" in line for line in rendered)  # in a code span when outside a block


def test_limits_hold_for_the_whole_box(attacked):
    reports, out = attacked["reports"], attacked["out"]
    executed = (out / "writable_places" / "executed" / "backpropagation.ipynb").read_text()
    for folder in ("/dev/shm", "/tmp", "/home/student", "."):
        assert f"{folder} full after 500 MiB" in executed, folder
    nested = _checks(reports["nested_namespace"])["notebook_backpropagation"]["message"]
    assert "process limit of 64 exceeded" in nested, nested
    widgets = _checks(reports["widgets"])["notebook_backpropagation"]["message"]  # 300 MiB of widget state
    assert "output limit of 16 MiB exceeded" in widgets, widgets


def test_a_function_stopped_at_a_limit_or_ending_the_process_is_not_run_again(attacked):
    """Each later check of it would fork, end the process or write into the channel again: skipped, with why
    (each would otherwise start a fresh runner, seconds of a grader's time per check)."""
    for name, first, why in (("nested_namespace", "backprop_toy", "was stopped at a limit (process limit of 64"),
                             ("forgery", "backprop_toy", "wrote into the grader's channel")):
        checks = _checks(attacked["reports"][name])
        assert checks[first]["status"] == "error", (name, checks[first])
        for cid in ("backprop_mnist", "backprop_square", "backprop_deep"):
            assert checks[cid]["status"] == "skipped", (name, cid, checks[cid])
            assert checks[cid]["message"].startswith(f"skipped: backpropagation {why}"), checks[cid]["message"]
        assert checks["manual_plain"]["status"] == "error" and checks["manual_momentum"]["status"] == "skipped"


def test_a_backward_method_of_the_students_own_layers_is_not_autograd(attacked):
    """Lab 4 style: layer objects with a hand-written backward(); the grader credits it."""
    checks = _checks(attacked["lab4"])
    assert checks["backprop_by_hand"]["status"] == "pass", checks["backprop_by_hand"]["message"]
    # the grader's reading voids nothing (the harness's own reading of names is issue 21's, in tests_backpropagation)
    for cid in ("backprop_toy", "backprop_mnist", "backprop_square"):
        assert "not credited" not in checks[cid]["message"], (cid, checks[cid]["message"])


def test_resolved_names_and_optimizers_are_named(attacked):
    reports = attacked["reports"]
    by_hand = _checks(reports["getattr_autograd"])["backprop_by_hand"]
    assert by_hand["status"] == "fail" and "autograd" in by_hand["message"], by_hand["message"]
    manual = _checks(reports["optimizer"])["manual_plain"]
    assert manual["status"] == "fail" and ("torch.optim" in manual["message"] or ".step()" in manual["message"]), \
        manual["message"]
    helper = reports["helper_module"]["integrity"]["gradient_descent.ipynb"]
    assert any(f["where"] == "helpers.py" and "torch.equal" in f["what"] for f in helper), helper


def test_no_process_survives(attacked):
    marker = attacked["marker"].encode()
    left = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                    left.append(pid)
            except OSError:
                pass
    assert left == []


def test_the_memory_limit_is_reported(attacked):
    checks = _checks(attacked["reports"]["memory"])
    assert "memory limit of 4 GiB exceeded" in checks["backprop_toy"]["message"], checks["backprop_toy"]["message"]
    assert "memory limit of 4 GiB exceeded" in checks["notebook_backpropagation"]["message"]


def test_autograd_and_tampering_are_named(attacked):
    reports = attacked["reports"]
    assert _checks(reports["autograd"])["backprop_by_hand"]["status"] == "fail"
    for name in ("patches", "runner_hook", "helper_module"):
        assert reports[name]["integrity"], name
        md = (attacked["out"] / name / "report.md").read_text()
        assert "## Integrity" in md


def test_every_report_prints_the_time_of_the_checks(attacked):
    for name, report in attacked["reports"].items():
        md = (attacked["out"] / name / "report.md").read_text()
        assert f"took **{report['checks_seconds']:.1f} s**" in md


# ------------------------------------------------------------------------------- without the big run

def test_a_notebook_has_a_wall_clock_limit_besides_the_cell_limit(tmp_path, shared_data):
    """Cells of 3 s each stay under a 4 s cell limit; the notebook is stopped at its own limit."""
    from grading import cli, grade, rubric

    folder = tmp_path / "slow"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time\ntime.sleep(3)") for _ in range(12)]
    nbformat.write(nb, str(folder / "backpropagation.ipynb"))
    os.environ.setdefault("DATA_DIR", str(shared_data))
    with cli.Setup(rubric.load(), ROOT / "tests_backpropagation.py", cell_timeout=4) as setup:
        ctx = dataclasses.replace(setup.ctx, notebook_timeout=15)
        start = time.monotonic()
        rec = grade.run_notebook(folder, "backpropagation.ipynb", ctx, tmp_path / "out")
    assert time.monotonic() - start < 90  # the kernel's start (torch preloaded) and 15 s, not 12 cells of 3 s
    assert rec["status"] == "error" and "time limit of 15 s (wall clock) exceeded" in rec["message"], rec


def test_a_huge_literal_is_read_outside_the_grader(tmp_path):
    """A notebook of one 4.9 MiB literal is read by a bounded child: the grader's memory does not move."""
    from grading.checks import static

    folder = tmp_path / "literal"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = [" + "1," * 2_580_000 + "]\ndef backpropagation(model, y_true, "
                                          "y_pred):\n    pass")]
    nbformat.write(nb, str(folder / "backpropagation.ipynb"))
    assert (folder / "backpropagation.ipynb").stat().st_size > 4.8 * (1 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    read = static.read_bounded(folder)["backpropagation.ipynb"]
    assert time.monotonic() - start < 2 * static.READ_SECONDS + 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: under 100 MiB
    # read within the child's limits, or refused with a finding that voids the notebook's credit
    assert read["error"] is None or read["autograd"] and read["tampering"], read


def test_gradescope_without_bubblewrap_runs_students_as_another_user(tmp_path, shared_data):
    """bwrap cannot start (as in some containers): a separate user, which cannot rewrite the results,
    and no process of it outlives grading; the line students see says what happened."""
    from grading import sandbox

    if os.geteuid() != 0:
        pytest.skip("the separate user needs a grader running as root (as Gradescope runs it)")
    # the grader's Python must be one the students' user can run, as Gradescope's /autograder/venv is:
    # this one, or the venv .ci/run builds from the system's Python in a folder open to others
    python = next((p for p in (sys.executable, os.environ.get("INF265_SHARED_PYTHON"))
                   if p and Path(p).exists() and sandbox.reachable_by_others(Path(p))), None)
    if python is None:
        pytest.skip(f"{sys.executable} is not reachable by other users here and INF265_SHARED_PYTHON names no "
                    f"Python that is (.ci/run builds one); tests/test_sandbox.py tests the separate user alone")
    canary = tmp_path / "canary"
    canary.mkdir(mode=0o700)
    (canary / "secret.txt").write_text(SECRET)
    root = tmp_path / "autograder"
    (root / "results").mkdir(parents=True)
    results = root / "results" / "results.json"
    marker = f"inf265-gradescope-daemon-{os.getpid()}-{time.monotonic_ns()}"
    daemon = f'''
        import os, shutil, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                for _ in range(240):
                    for action in (lambda: open({str(results)!r}, "w").write('{{"score": 28}}'),
                                   lambda: shutil.copy({str(canary / "secret.txt")!r}, "/tmp/stolen-{marker}")):
                        try:
                            action()
                        except OSError:
                            pass
                    time.sleep(0.25)
                os._exit(0)
            os._exit(0)
    '''
    attack_bank.build(root, "submission", daemon)
    env = dict(os.environ, DATA_DIR=str(Path(shared_data).resolve()), INF265_BWRAP="/bin/false")
    env.pop("INF265_REQUIRE_SANDBOX", None)
    run = subprocess.run([python, "-m", "grading.gradescope", "grade", str(root / "submission"), str(results)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    written = results.read_text()
    time.sleep(2)
    assert results.read_text() == written
    data = json.loads(written)
    assert 0 < data["score"] < 28 and "separate unprivileged user" in data["output"]
    assert "--no-sandbox" not in data["output"]
    assert not Path(f"/tmp/stolen-{marker}").exists()
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _uid(pid) == sandbox.STUDENT_UID]
    assert left == []


def _uid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return int(next(line.split()[1] for line in fh if line.startswith("Uid:")))
    except (OSError, StopIteration, ValueError):
        return None


def test_gradescope_refuses_without_any_isolation_unless_allowed(monkeypatch):
    from grading import gradescope, sandbox

    def unavailable():
        raise sandbox.SandboxUnavailable("no user namespaces")
    monkeypatch.setattr(sandbox, "probe", unavailable)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("INF265_REQUIRE_SANDBOX", raising=False)
    monkeypatch.delenv("INF265_ALLOW_UNISOLATED", raising=False)
    assert gradescope.isolation()[0] == "refused"
    monkeypatch.setenv("INF265_ALLOW_UNISOLATED", "1")
    assert gradescope.isolation()[0] == "none"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("INF265_ALLOW_UNISOLATED")
    monkeypatch.setattr(sandbox, "reachable_by_others", lambda path: False)
    mode, why = gradescope.isolation()
    assert mode == "refused" and "cannot run" in why  # root, but the students' user could not run Python
    monkeypatch.setattr(sandbox, "reachable_by_others", lambda path: True)
    assert gradescope.isolation()[0] == "user"
    monkeypatch.setenv("INF265_REQUIRE_SANDBOX", "1")
    assert gradescope.isolation()[0] == "refused"
