"""A file-system and process guard for code running in the grading sandbox.

``install(roots, extra_files)`` adds a :func:`sys.addaudithook` hook (it cannot be removed
afterwards) that, in this process and every Python process it forks or starts:

* allows writing, creating, renaming, deleting and changing the mode of files only under the
  sandbox ``roots`` (the student's temporary working copy, its ``HOME`` and ``TMPDIR``) and
  the ``extra_files`` the grader reads back (its results file);
* refuses to start programs other than Python (``os.system``, ``subprocess`` on ``rm``,
  ``sh`` ...) and Python programs started without the sandbox environment;
* refuses to send signals outside the process's own session (``os.kill(os.getppid(), 9)``,
  ``os.kill(-1, 9)``).

Refused operations raise ``PermissionError`` naming the grader, so the student's cell fails
with a readable message and the grader carries on. Reading is not restricted (the student
needs the data folder and the libraries).

This stops accidents and naive malice (``shutil.rmtree("..")``, ``os.remove`` of an absolute
path, ``!rm -rf``); it is not a security boundary against code written to escape it (ctypes,
C extensions). Grade untrusted code inside a container or a throw-away user for that.

Sandboxed processes get it through ``grading/_site/sitecustomize.py`` when the environment
variable ``INF265_SANDBOX_ROOTS`` is set (``os.pathsep``-separated).
"""
from __future__ import annotations

import os
import sys

ROOTS_ENV = "INF265_SANDBOX_ROOTS"
FILES_ENV = "INF265_SANDBOX_FILES"

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_ALLOWED_DEVICES = ("/dev/null", "/dev/shm/", "/dev/tty", "/dev/pts/")
_installed = False


def install(roots, extra_files=()) -> None:
    """Install the guard once in this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    roots_t = tuple(os.path.realpath(r) for r in roots if r)
    files_t = frozenset(os.path.realpath(f) for f in extra_files if f)
    python_names = frozenset({os.path.realpath(sys.executable), sys.executable})
    session = os.getsid(0)
    realpath, join, isabs = os.path.realpath, os.path.join, os.path.isabs
    fs_events = frozenset({"open", "os.remove", "os.rmdir", "os.rename", "os.replace", "os.mkdir",
                           "os.chmod", "os.chown", "os.truncate", "os.link", "os.symlink",
                           "os.utime", "shutil.rmtree", "os.chflags", "os.lchflags"})
    proc_events = frozenset({"os.system", "subprocess.Popen", "os.exec", "os.posix_spawn",
                             "os.spawn", "pty.spawn", "os.kill", "os.killpg"})

    def refuse(what: str, why: str = "only files under the submission's temporary copy may be changed"):
        raise PermissionError(f"refused by the INF265 grader's sandbox: {what} ({why})")

    def resolve(path, dir_fd=None, follow=True) -> str:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        path = os.fspath(path)
        if not isabs(path):
            base = (os.readlink(f"/proc/self/fd/{dir_fd}") if isinstance(dir_fd, int) and dir_fd >= 0
                    else os.getcwd())
            path = join(base, path)
        head, tail = os.path.split(path.rstrip(os.sep) or os.sep)
        if follow or tail in ("", ".", ".."):
            return realpath(path)
        return join(realpath(head), tail)  # the link itself, not its target

    def inside(path: str) -> bool:
        if path in files_t or path == "/dev/null" or path.startswith(_ALLOWED_DEVICES):
            return True
        return any(path == r or path.startswith(r + os.sep) for r in roots_t)

    def check_path(event, path, dir_fd=None, follow=True):
        if isinstance(path, int) or path is None:
            return
        target = resolve(path, dir_fd, follow)
        if not inside(target):
            refuse(f"{event} {target}")

    def hook(event, args):
        if event in fs_events:
            if event == "open":
                path, mode, flags = args
                if isinstance(flags, int) and flags & _WRITE_FLAGS or (
                        isinstance(mode, str) and any(c in mode for c in "wax+")):
                    check_path("writing", path)
            elif event in ("os.rename", "os.replace", "os.link"):
                src, dst, src_fd, dst_fd = args[:4]
                check_path(event, src, src_fd, follow=False)
                check_path(event, dst, dst_fd, follow=False)
            elif event == "os.symlink":
                check_path(event, args[1], args[2] if len(args) > 2 else None, follow=False)
            elif event in ("os.remove", "os.rmdir"):
                check_path(event, args[0], args[1] if len(args) > 1 else None, follow=False)
            elif event == "shutil.rmtree":
                check_path(event, args[0], args[1] if len(args) > 1 else None, follow=False)
            elif event == "os.mkdir":
                check_path(event, args[0], args[2] if len(args) > 2 else None, follow=False)
            elif event in ("os.chmod", "os.chown", "os.utime", "os.chflags", "os.lchflags"):
                fd = args[-1] if event in ("os.chmod", "os.chown", "os.utime") else None
                check_path(event, args[0], fd if isinstance(fd, int) else None)
            elif event == "os.truncate":
                check_path(event, args[0])
        elif event in proc_events:
            if event in ("os.kill", "os.killpg"):
                pid = args[0]
                if event == "os.kill":
                    if pid == os.getpid():
                        return
                    try:
                        ok = pid > 0 and os.getsid(pid) == session
                    except OSError:
                        ok = True  # no such process: the kill itself will fail
                else:
                    ok = pid == os.getpgid(0)
                if not ok:
                    refuse(f"{event}({pid})", "signals may only go to the student's own processes")
            elif event == "subprocess.Popen":
                executable, argv, cwd, env = args
                exe = executable or (argv[0] if isinstance(argv, (list, tuple)) and argv else argv)
                exe = os.fsdecode(exe) if isinstance(exe, bytes) else str(exe)
                is_python = realpath(exe) in python_names or exe in python_names
                if not is_python or (env is not None and ROOTS_ENV not in env):
                    refuse(f"starting the program {exe!r}", "no program other than Python runs under grading")
            else:
                refuse(f"{event} {args[0]!r}" if args else event, "no program other than Python runs under grading")

    sys.addaudithook(hook)


def install_from_environment() -> None:
    roots = os.environ.get(ROOTS_ENV, "")
    if roots:
        install(roots.split(os.pathsep), os.environ.get(FILES_ENV, "").split(os.pathsep))
