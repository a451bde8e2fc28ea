"""A temporary working copy of a submission and time-limited subprocesses running in it.

Every student process (definition loading and checks, notebook kernels) runs

* with the copy as working directory, and ``HOME``, ``TMPDIR``, ``IPYTHONDIR``,
  ``MPLCONFIGDIR`` inside the sandbox folder (so ``~`` and temporary files are the copy's);
* in its own session / process group, killed as a whole when its time limit is reached;
* under the guard of :mod:`grading.guard` (writes only inside the sandbox, no other program);
* offline (``INF265_OFFLINE=1``), with the project's ``DATA_DIR`` made absolute.

The submission folder itself is never written to.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import guard

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(__file__).resolve().parent / "_site"
NOTEBOOKS = ("backpropagation.ipynb", "gradient_descent.ipynb")
KERNEL_ROOTS_ENV = "INF265_KERNEL_SANDBOX_ROOTS"
# Not copied: version control, caches, environments and data folders (the data comes from DATA_DIR).
_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".ipynb_checkpoints", ".venv", "venv",
                                 "data", "grading-out", "*.pyc")


class SubmissionError(ValueError):
    """The submission folder cannot be graded; the message says what to do."""


def check_submission(folder: Path) -> None:
    if not folder.exists():
        raise SubmissionError(f"{folder} does not exist; give the path of a student's submission folder")
    if not folder.is_dir():
        raise SubmissionError(f"{folder} is not a folder; give the folder holding the student's notebooks, "
                              f"not a file")
    missing = [nb for nb in NOTEBOOKS if not (folder / nb).is_file()]
    if len(missing) == len(NOTEBOOKS):
        raise SubmissionError(f"{folder} holds neither {' nor '.join(NOTEBOOKS)}; "
                              f"point SUBMISSION at the student's folder holding the notebooks")


@dataclass
class Run:
    """What a sandboxed subprocess did."""
    returncode: int | None  # None when killed at the time limit
    timed_out: bool
    seconds: float
    stdout: str
    stderr: str


class Sandbox:
    """``with Sandbox(submission, harness) as box:`` a fresh copy of the submission in a temp dir."""

    def __init__(self, submission: Path, harness: Path | None = None):
        self.submission = Path(submission).resolve()
        self.harness = harness

    def __enter__(self) -> "Sandbox":
        self.top = Path(tempfile.mkdtemp(prefix="inf265-grade-")).resolve()
        self.root = self.top / "sandbox"        # everything the student may write to
        self.work = self.root / "submission"    # working copy = cwd
        self.home = self.root / "home"
        self.tmp = self.root / "tmp"
        self.private = self.top / "grader"      # the grader's own files (results), not writable
        shutil.copytree(self.submission, self.work, symlinks=True, ignore=_IGNORE)
        for d in (self.home, self.tmp, self.private):
            d.mkdir(parents=True)
        # Kernels import torch while starting (startup_timeout), not in the student's first cell:
        # on a loaded machine that import alone can take longer than a short per-cell limit.
        startup = self.home / ".ipython" / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / "00-inf265-preload.py").write_text(
            "try:\n    import torch, torchvision  # noqa: F401  (preloaded by the grader)\n"
            "except ImportError:\n    pass\n")
        self.replaced_harness = False
        if self.harness is not None:
            target = self.work / "tests_backpropagation.py"
            self.replaced_harness = target.exists() or target.is_symlink()
            if target.is_symlink() or target.exists():
                target.unlink()
            shutil.copyfile(self.harness, target)
        return self

    def __exit__(self, *exc) -> None:
        # The student may have made files read-only; make them writable again before removing.
        def onerror(func, path, _):
            try:
                os.chmod(path, 0o700)
                os.chmod(os.path.dirname(path), 0o700)
                func(path)
            except OSError:
                pass
        shutil.rmtree(self.top, onerror=onerror)

    def env(self, extra_files=()) -> dict:
        """The environment of a sandboxed process."""
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "LANG", "LC_ALL", "TERM", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        data = os.environ.get("DATA_DIR", "").strip()
        env.update({
            "HOME": str(self.home),
            "TMPDIR": str(self.tmp),
            "IPYTHONDIR": str(self.home / ".ipython"),
            "MPLCONFIGDIR": str(self.home / ".matplotlib"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "JUPYTER_RUNTIME_DIR": str(self.home / ".jupyter-runtime"),
            "MPLBACKEND": "Agg",
            "INF265_OFFLINE": "1",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)]),
            guard.ROOTS_ENV: str(self.root),
            guard.FILES_ENV: os.pathsep.join(str(f) for f in extra_files),
            "DATA_DIR": str(Path(data).expanduser().resolve()) if data else str(ROOT / "data"),
        })
        # one math thread per student process unless the instructor says otherwise: graders run
        # side by side (--jobs) and the time limits should not depend on oversubscription
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def run(self, args: list[str], timeout: float, extra_files=(), guarded: bool = True) -> Run:
        """Run ``args`` in the working copy; kill its whole process group after ``timeout`` s.

        ``guarded=False`` is for the grader's own notebook runner: it is not guarded itself (it
        must stop its kernel), and passes the guard on to the kernel it starts
        (``KERNEL_ROOTS_ENV``).
        """
        env = self.env(extra_files)
        if not guarded:
            env[KERNEL_ROOTS_ENV] = env.pop(guard.ROOTS_ENV)
            env.pop(guard.FILES_ENV)
        out_path, err_path = self.private / "stdout.log", self.private / "stderr.log"
        start = time.monotonic()
        with open(out_path, "w+b") as out, open(err_path, "w+b") as err:
            proc = subprocess.Popen(args, cwd=self.work, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                kill_group(proc.pid)
                proc.wait()
            seconds = time.monotonic() - start
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode("utf-8", "replace")
            stderr = err.read().decode("utf-8", "replace")
        return Run(None if timed_out else proc.returncode, timed_out, seconds, stdout, stderr)


def kill_group(pgid: int) -> None:
    """SIGKILL a process group (a sandboxed process and everything it started)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

