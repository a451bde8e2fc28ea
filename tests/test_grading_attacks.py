"""The grader against hostile submissions (tests/attack_bank.py): no trick raises a score.

All attacks are graded in one run of ``python -m grading``, as an instructor would run it. For
each: its score is at most the plain wrong submission's; the canary folder beside the
submissions is neither changed nor read into any report; the loopback server of the host gets no
request; no process started by a submission is left; the memory attack is reported as such.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import attack_bank

ROOT = Path(__file__).resolve().parent.parent
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
    bank = attack_bank.attacks(canary, server.server_address[1], marker)
    folders = [attack_bank.build(base / "submissions", name, trick) for name, trick in bank.items()]
    out = base / "out"
    env = dict(os.environ, DATA_DIR=str(Path(shared_data).resolve()))
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "grading", *map(str, folders), "--out", str(out), "--jobs", "2",
                          "--timeout", "30"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.monotonic() - start
    time.sleep(1)
    server.shutdown()
    reports = {name: json.loads((out / name / "report.json").read_text()) for name in bank}
    return {"reports": reports, "run": run, "canary": canary, "hits": list(_Counter.hits), "marker": marker,
            "out": out, "seconds": seconds}


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
    for name in ("patches", "runner_hook"):
        assert reports[name]["integrity"], name
        md = (attacked["out"] / name / "report.md").read_text()
        assert "## Integrity" in md


def test_every_report_prints_the_time_of_the_checks(attacked):
    for name, report in attacked["reports"].items():
        md = (attacked["out"] / name / "report.md").read_text()
        assert f"took **{report['checks_seconds']:.1f} s**" in md
