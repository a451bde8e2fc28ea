"""The grader's sandbox (grading/sandbox.py) on its own: what a process inside can and cannot do.

Each test starts a small Python program in a workspace, as the runner and the notebook kernels
are started, and checks the boundary from outside: a canary folder beside the workspace stays
unread and unchanged, no network, no process outlives the sandbox, and each resource limit ends
the run with a message that names it.
"""
from __future__ import annotations

import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grading import course, sandbox

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap is Linux-only")


@pytest.fixture(scope="module")
def course_dir():
    folder = course.build()
    yield folder
    import shutil
    shutil.rmtree(folder)


@pytest.fixture
def canary(tmp_path):
    folder = tmp_path / "canary"
    folder.mkdir()
    (folder / "secret.txt").write_text("do not read me")
    return folder


def run(tmp_path, course_dir, code: str, limits=None, timeout=120, shared_data=None, box=None):
    submission = tmp_path / "submission"
    submission.mkdir(exist_ok=True)
    (submission / "program.py").write_text(textwrap.dedent(code))
    with sandbox.Workspace(submission, course_dir, shared_data, box=box) as ws:
        proc = sandbox.Process(ws, [sys.executable, "-P", "program.py"], limits or sandbox.Limits())
        outcome = proc.finish(timeout)
        tree_left = proc.tree.pids()
    return outcome, tree_left


def test_sandbox_is_available_here():
    assert "bubblewrap" in sandbox.probe()


def test_outside_files_are_invisible_and_the_system_read_only(tmp_path, course_dir, canary):
    checkout, home = Path(__file__).resolve().parent.parent, Path.home()
    python_roots = sandbox._python_roots()
    outcome, _ = run(tmp_path, course_dir, f"""
        import os
        for path in ({str(canary)!r}, {str(canary / 'secret.txt')!r}):
            print(path, "visible" if os.path.exists(path) else "invisible")
        for folder in ({str(checkout)!r}, {str(home)!r}, "/tmp"):
            print(folder, "holds", sorted(os.listdir(folder)) if os.path.isdir(folder) else [])
        for path in ("/usr/evil", "/course/evil", "/etc/evil", "/evil", {str(canary / 'new.txt')!r}):
            try:
                open(path, "w").write("x")
                print(path, "WRITTEN")
            except OSError as exc:
                print(path, "refused", type(exc).__name__)
        open("inside.txt", "w").write("ok")
        print("inside written")
        print("shadow", os.path.exists("/etc/shadow"))
    """)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stdout.count(" invisible") == 2, outcome.stdout
    # of the checkout and the home folder, only the path to the Python environment exists inside
    # (/tmp is the sandbox's own, empty but for that path when the environment is kept below /tmp)
    for folder in (checkout, home, Path("/tmp")):
        line = next(l for l in outcome.stdout.splitlines() if l.startswith(f"{folder} holds"))
        shown = eval(line.split(" holds ", 1)[1])
        allowed = {Path(r).relative_to(folder).parts[0] for r in python_roots if Path(r).is_relative_to(folder)}
        assert set(shown) <= allowed, (folder, shown, allowed)
    assert "WRITTEN" not in outcome.stdout and outcome.stdout.count("refused") == 5
    assert "inside written" in outcome.stdout and "shadow False" in outcome.stdout
    assert sorted(p.name for p in canary.iterdir()) == ["secret.txt"]
    assert (canary / "secret.txt").read_text() == "do not read me"


def test_no_network(tmp_path, course_dir):
    outcome, _ = run(tmp_path, course_dir, """
        import socket
        for target in (("10.255.255.53", 53), ("1.1.1.1", 443), ("pypi.org", 443)):
            try:
                socket.create_connection(target, timeout=3).close()
                print(target, "CONNECTED")
            except OSError as exc:
                print(target, "no network", type(exc).__name__)
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) if hasattr(socket, "SOCK_RAW") else None
    """)
    assert "CONNECTED" not in outcome.stdout and outcome.stdout.count("no network") == 3, outcome.stdout


def test_no_process_outlives_the_sandbox(tmp_path, course_dir):
    marker = f"inf265-survivor-{os.getpid()}-{time.monotonic_ns()}"
    outcome, _ = run(tmp_path, course_dir, f"""
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # {marker}"], start_new_session=True)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)  # {marker}"])
            os._exit(0)
        time.sleep(1)
        print("daemons started")
    """)
    assert "daemons started" in outcome.stdout, outcome.stderr
    time.sleep(0.5)
    survivors = [pid for pid in os.listdir("/proc") if pid.isdigit() and marker.encode() in
                 _cmdline(int(pid))]
    assert not survivors


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_memory_limit(tmp_path, course_dir):
    outcome, _ = run(tmp_path, course_dir, """
        import torch, torchvision
        t = torch.ones(2 << 30, dtype=torch.uint8)  # 2 GiB, touched: within the limit
        print("allocated 2 GiB", bool(t[0] == 1) and bool(t[-1] == 1))
        del t
        try:
            t = torch.empty(8 << 30, dtype=torch.uint8)
            print("ALLOCATED 8 GiB")
        except RuntimeError as exc:
            print(exc)
    """, limits=sandbox.Limits(memory=4 * sandbox.GiB))
    assert "allocated 2 GiB True" in outcome.stdout, outcome.stdout + outcome.stderr
    assert "ALLOCATED" not in outcome.stdout
    assert sandbox.is_memory_error(outcome.stdout), outcome.stdout + outcome.stderr
    assert sandbox.memory_message(sandbox.Limits()) == "memory limit of 4 GiB exceeded"


def test_output_flood_is_cut_and_stopped(tmp_path, course_dir):
    limits = sandbox.Limits(output=2 * sandbox.MiB, keep_output=1000)
    outcome, _ = run(tmp_path, course_dir, """
        import sys
        while True:
            sys.stdout.write("x" * 10000 + "\\n")
    """, limits=limits, timeout=60)
    assert outcome.limit == "output" and "output limit of 2 MiB exceeded" in outcome.limit_message
    assert len(outcome.stdout) < 5000 and "bytes of output cut" in outcome.stdout


def test_process_limit(tmp_path, course_dir):
    limits = sandbox.Limits(processes=16)
    outcome, _ = run(tmp_path, course_dir, """
        import os, time
        for _ in range(200):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        time.sleep(60)
    """, limits=limits, timeout=60)
    assert outcome.limit == "processes" and outcome.limit_message == "process limit of 16 exceeded"
    assert outcome.seconds < 30


def test_cpu_limit(tmp_path, course_dir):
    outcome, _ = run(tmp_path, course_dir, "while True:\n    pass\n", limits=sandbox.Limits(cpu_seconds=2),
                     timeout=60)
    assert outcome.limit == "cpu" and "CPU time limit of 2 s" in outcome.limit_message


def test_file_size_limit(tmp_path, course_dir):
    outcome, _ = run(tmp_path, course_dir, """
        try:
            with open("big.bin", "wb") as fh:
                fh.write(b"0" * (64 << 20))
            print("WROTE")
        except OSError as exc:
            print("refused", exc.errno)
    """, limits=sandbox.Limits(file_size=8 * sandbox.MiB))
    assert "refused 27" in outcome.stdout, outcome.stdout + outcome.stderr  # EFBIG


def test_links_are_never_followed_only_named(tmp_path, course_dir, canary):
    submission = tmp_path / "submission"
    (submission / "sub").mkdir(parents=True)
    (submission / "escape").symlink_to(canary / "secret.txt")
    (submission / "inside").symlink_to("program.py")
    (submission / "sub" / "folder").symlink_to(canary)
    (submission / "program.py").write_text("")
    os.mkfifo(submission / "fifo")
    with sandbox.Workspace(submission, course_dir, None) as ws:
        copied = sorted(str(p.relative_to(ws.cwd)) for p in ws.cwd.rglob("*"))
        assert copied == ["program.py", "results", "sub"], copied
        assert ws.skipped == ["escape: a symbolic link, not followed", "fifo: not a regular file (a FIFO, socket "
                              "or device), not copied", "inside: a symbolic link, not followed",
                              "sub/folder: a symbolic link, not followed"]


def test_cleanup_never_follows_a_planted_link(tmp_path, course_dir, canary):
    """The cleanup makes unwritable folders writable again on the folder itself, not through a link."""
    (canary / "secret.txt").chmod(0o600)
    outcome, _ = run(tmp_path, course_dir, f"""
        import os
        os.makedirs("locked/inner")
        os.symlink({str(canary / 'secret.txt')!r}, "locked/inner/link")
        os.symlink({str(canary)!r}, "locked/dir-link")
        os.chmod("locked/inner", 0o500)
        os.chmod("locked", 0o500)
        print("planted")
    """)
    assert "planted" in outcome.stdout, outcome.stderr
    assert (canary / "secret.txt").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in canary.iterdir()) == ["secret.txt"]
    # the same on the host side: a workspace whose copy holds locked folders and links is removed
    top = tmp_path / "top"
    (top / "locked").mkdir(parents=True)
    (top / "locked" / "link").symlink_to(canary / "secret.txt")
    (top / "locked" / "dir").symlink_to(canary)
    (top / "locked").chmod(0o500)
    sandbox.remove_tree(top)
    assert not top.exists() and (canary / "secret.txt").stat().st_mode & 0o777 == 0o600
    assert (canary / "secret.txt").read_text() == "do not read me"


def test_unavailable_sandbox_says_how_to_enable_it(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: "/bin/false")
    sandbox.probe.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxUnavailable) as info:
            sandbox.probe()
    finally:
        sandbox.probe.cache_clear()
    assert "user namespaces" in str(info.value) and "--no-sandbox" in str(info.value)


def test_loopback_of_the_host_is_unreachable(tmp_path, course_dir):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        outcome, _ = run(tmp_path, course_dir, f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=3)
                print("REACHED THE HOST")
            except OSError as exc:
                print("refused", type(exc).__name__)
        """)
    finally:
        server.close()
    assert "refused" in outcome.stdout and "REACHED" not in outcome.stdout


HOGS = """
    import os, time
    for _ in range(3):
        if os.fork() == 0:
            block = bytearray(700 << 20)  # touched: resident
            for i in range(0, len(block), 4096):
                block[i] = 1
            print("holding 700 MiB", flush=True)
            time.sleep(60)
            os._exit(0)
    time.sleep(60)
"""


@pytest.mark.parametrize("counted_by", ["box", "sampled"])
def test_memory_of_all_processes_together_is_limited(tmp_path, course_dir, counted_by):
    """3 processes of 700 MiB each stay under a per-process limit of 1 GiB, not under a total of 2 GiB."""
    limits = sandbox.Limits(memory=1 * sandbox.GiB)
    box = sandbox.Box.create(limits.total_memory, limits.tasks) if counted_by == "box" else None
    if counted_by == "box" and box is None:
        pytest.skip("no writable cgroup here: the sampled totals are tested instead")
    try:
        outcome, _ = run(tmp_path, course_dir, HOGS, limits=limits, timeout=90, box=box)
    finally:
        if box is not None:
            box.close()
    assert outcome.limit == "memory", (outcome.limit, outcome.stdout, outcome.stderr)
    assert "memory limit of 1 GiB exceeded (all processes together)" == outcome.limit_message
    assert outcome.seconds < 50


def test_every_writable_place_is_sized(tmp_path, course_dir):
    """/dev/shm, /tmp, the home folder and the submission are in-memory folders of their own size, and no
    nested user namespace can mount another (a tmpfs of its own would be unsized)."""
    outcome, _ = run(tmp_path, course_dir, """
        import os
        for folder in ("/dev/shm", "/tmp", os.path.expanduser("~"), "."):
            written = 0
            try:
                for n in range(12):
                    with open(f"{folder}/fill{n}", "wb") as fh:
                        fh.write(b"x" * (100 << 20))
                    written += 100
                print(folder, "WROTE", written)
            except OSError as exc:
                print(folder, "full after", written, "MiB", exc.errno)
            for n in range(12):
                try:
                    os.remove(f"{folder}/fill{n}")
                except OSError:
                    pass
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000) == 0:  # CLONE_NEWUSER
            print("NESTED USER NAMESPACE")
        else:
            print("no nested user namespace", ctypes.get_errno())
    """, timeout=120)
    assert "WROTE" not in outcome.stdout and outcome.stdout.count("full after") == 4, outcome.stdout + outcome.stderr
    assert "no nested user namespace" in outcome.stdout, outcome.stdout + outcome.stderr


def test_the_submission_copy_is_the_sandboxs_own(tmp_path, course_dir):
    """What the sandbox writes to /submission stays in its in-memory copy: the grader's copy is unchanged."""
    submission = tmp_path / "submission"
    submission.mkdir()
    (submission / "data.txt").write_text("original")
    (submission / "program.py").write_text("open('data.txt', 'w').write('changed'); open('new.txt', 'w')\n"
                                           "print(open('data.txt').read())\n")
    with sandbox.Workspace(submission, course_dir, None) as ws:
        outcome = sandbox.Process(ws, [sys.executable, "-P", "program.py"], sandbox.Limits()).finish(60)
        assert outcome.stdout.strip() == "changed", outcome.stderr
        assert (ws.cwd / "data.txt").read_text() == "original" and not (ws.cwd / "new.txt").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="a separate user needs root (Gradescope runs its autograder as root) and a system Python")
def test_without_bwrap_a_separate_user_runs_the_code(tmp_path, course_dir, canary):
    """Where bwrap cannot start: the student's user writes its copy only; its daemons are killed by uid."""
    canary.chmod(0o700)
    results = tmp_path / "results"
    results.mkdir(mode=0o755)
    marker = f"inf265-user-survivor-{os.getpid()}-{time.monotonic_ns()}"
    submission = tmp_path / "submission"
    submission.mkdir()
    (submission / "program.py").write_text(textwrap.dedent(f"""
        import os, sys, time
        for what, action in (("results", lambda: open({str(results / 'results.json')!r}, "w")),
                             ("canary", lambda: open({str(canary / 'secret.txt')!r}).read()),
                             ("own copy", lambda: open("mine.txt", "w").write("ok")),
                             ("temp", lambda: open(os.environ["TMPDIR"] + "/t", "w").write("ok"))):
            try:
                action()
                print(what, "written")
            except OSError as exc:
                print(what, "refused")
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv("/bin/sleep", ["/bin/sleep", "300", "{marker}"])
            os._exit(0)
        print("uid", os.getuid())
    """))
    uid = sandbox.STUDENT_UID
    with sandbox.Workspace(submission, course_dir, None, isolated=False, run_as=(uid, uid)) as ws:
        outcome = sandbox.Process(ws, ["/usr/bin/python3", "-I", "program.py"], sandbox.Limits()).finish(60)
        assert outcome.returncode == 0, outcome.stderr
        assert f"uid {uid}" in outcome.stdout and "own copy written" in outcome.stdout and "temp written" in \
            outcome.stdout, outcome.stdout
        assert "results refused" in outcome.stdout and "canary refused" in outcome.stdout, outcome.stdout
        time.sleep(0.5)
        sandbox.kill_user(uid)  # what grading does before results are written: re-parented daemons too
    assert not any(marker.encode() in _cmdline(int(p)) for p in os.listdir("/proc") if p.isdigit())
    assert list(results.iterdir()) == []


def test_a_kernel_socket_is_connected_once_it_listens_and_never_through_a_link(tmp_path):
    """The grader connects to the kernel's sockets with ZeroMQ's reconnection off (a socket replaced
    later is never connected to), so a first connection must not come between the kernel's ``bind``
    (the file exists) and its ``listen``: refused, it was never retried and the kernel never answered."""
    from grading.notebooks import _wait_for_socket
    path = str(tmp_path / "shell")
    kernel = socket.socket(socket.AF_UNIX)
    kernel.bind(path)   # bound, not listening yet
    with pytest.raises(RuntimeError, match="did not open its sockets in time"):
        _wait_for_socket(path, time.monotonic() + 0.3)
    kernel.listen(1)
    _wait_for_socket(path, time.monotonic() + 5)
    kernel.close()
    os.unlink(path)
    os.symlink(tmp_path / "elsewhere.sock", path)
    with pytest.raises(RuntimeError, match="replaced by something else"):
        _wait_for_socket(path, time.monotonic() + 5)
