"""`make run`'s notebook execution: in place, atomic, results published only with a complete run,
one clear line when interrupted or when the kernel dies, and the executor the grader shares."""
import json
import os
import signal
import re
import subprocess
import sys
import tempfile
import time

import nbformat
import pytest

from inf265 import ROOT
from inf265.execute import Failure, NotebookFailed, execute, run
from inf265.results import STAGING_ENV


def _notebook(*sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


def _write(path, *sources):
    nbformat.write(_notebook(*sources), path)
    return path.read_bytes()


def _snapshot(folder):
    """Every file under ``folder`` with its bytes (to compare before and after)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A private temporary folder for this process and its children: staging folders land there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# A cell that saves two results files (the second one after checking that the first did not go
# into results/ yet) and one that says the notebook ran to its end.
SAVE_TWO = (
    "import os, pathlib, sys\n"
    "from inf265.results import save_json, results_dir\n"
    "save_json('a.json', {'new': 1})\n"
    f"assert results_dir() == pathlib.Path(os.environ['{STAGING_ENV}']), 'not staged'\n"
    "assert (results_dir() / 'a.json').is_file()\n"
    "save_json('sub/b.json', {'new': 2})"
)


def test_success_writes_outputs_in_place_without_timing(tmp_path, private_tmp):
    path = tmp_path / "ok.ipynb"
    _write(path, "x = 6 * 7", "import sys, time\nprint(x, flush=True)\ntime.sleep(0.3)\nprint('again')")
    execute(path, results=tmp_path / "results")
    nb = json.loads(path.read_text())
    assert len(nb["cells"][1]["outputs"]) == 1, "stream chunks not merged: output depends on flush timing"
    assert "".join(nb["cells"][1]["outputs"][0]["text"]) == "42\nagain\n"
    assert [c["execution_count"] for c in nb["cells"]] == [1, 2]
    assert all("execution" not in c["metadata"] for c in nb["cells"])
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask, "written with mkstemp's private mode"


def test_results_are_staged_then_published_with_the_notebook(tmp_path, private_tmp):
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text('{"old": true}\n')
    (results / "kept.json").write_text('{"other": "notebook"}\n')
    path = tmp_path / "nb.ipynb"
    _write(path, SAVE_TWO, f"assert not (pathlib.Path({str(results)!r}) / 'sub').exists()")
    execute(path, results=results)
    assert json.loads((results / "a.json").read_text()) == {"new": 1}
    assert json.loads((results / "sub" / "b.json").read_text()) == {"new": 2}
    assert (results / "kept.json").read_text() == '{"other": "notebook"}\n'   # not ours: untouched
    assert nbformat.read(path, as_version=4).cells[1].execution_count == 2
    assert not list(private_tmp.iterdir()), "staging folder left behind"


def test_failure_leaves_notebook_and_results_untouched_and_names_the_cell(tmp_path, private_tmp):
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text('{"old": true}\n')
    path = tmp_path / "bad.ipynb"
    before, old = _write(path, "x = 1", SAVE_TWO, "raise ValueError('boom in cell three')", "print('never')"), \
        _snapshot(results)
    with pytest.raises(NotebookFailed) as err:
        execute(path, results=results)
    msg = str(err.value)
    assert "cell 3 (`raise ValueError('boom in cell three')`) raised ValueError: boom in cell three" in msg
    assert "bad.ipynb and its results were left unchanged" in msg
    assert path.read_bytes() == before and _snapshot(results) == old
    assert not list(tmp_path.glob("*.tmp")) and not list(private_tmp.iterdir())


def test_cli_reports_failure_with_exit_code(tmp_path, private_tmp):
    path = tmp_path / "bad.ipynb"
    before = _write(path, "1 / 0")
    proc = subprocess.run([sys.executable, "-m", "inf265.execute", "--results", str(tmp_path / "results"), str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "cell 1 (`1 / 0`) raised ZeroDivisionError" in proc.stderr
    assert re.search(r"^  cell 1/1  1 / 0  \d+\.\d s  error$", proc.stdout, re.M), proc.stdout  # progress line
    assert path.read_bytes() == before and not (tmp_path / "results").exists()


# ------------------------------------------------------------------ interrupted or killed runs
def _start_slow_run(tmp_path):
    """``python -m inf265.execute`` on a notebook that saves two results, writes its kernel's pid,
    then sleeps; returns the process (own session, like a terminal job) once the kernel sleeps."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text('{"old": true}\n')
    pid_file = tmp_path / "kernel.pid"
    path = tmp_path / "slow.ipynb"
    _write(path, SAVE_TWO, f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
                           "import time\ntime.sleep(120)", "print('never')")
    before = {"notebook": path.read_bytes(), "results": _snapshot(results)}
    proc = subprocess.Popen([sys.executable, "-m", "inf265.execute", "--results", str(results), str(path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not pid_file.is_file() or not pid_file.read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the notebook never reached its sleeping cell"
        time.sleep(0.1)
    time.sleep(0.3)
    return proc, int(pid_file.read_text()), path, results, before


def _gone(pid, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _assert_left_unchanged(proc, status, words, path, results, before, private_tmp):
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert all(w in lines[0] for w in words) and "slow.ipynb and its results were left unchanged" in lines[0]
    assert "Traceback" not in out + err
    # make run's progress: the notebook, then each cell as it ran, the stopped one last
    assert out.splitlines()[0] == ">> executing slow.ipynb" and len(out.splitlines()) == 3, out
    assert re.match(r"  cell 2/3  pathlib\.Path\(.* \d+\.\d s  stopped$", out.splitlines()[-1]), out
    assert path.read_bytes() == before["notebook"]
    assert _snapshot(results) == before["results"]
    assert not list(private_tmp.iterdir()), "staging folder left behind"


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_says_so_in_one_line_and_changes_nothing(tmp_path, private_tmp, signum, status):
    proc, kernel, path, results, before = _start_slow_run(tmp_path)
    os.killpg(proc.pid, signum)  # the whole job, as Ctrl-C does in a terminal
    _assert_left_unchanged(proc, status, ["interrupted", signal.Signals(signum).name], path, results, before,
                           private_tmp)
    assert _gone(kernel), "the kernel outlived the interrupted run"


def test_killed_kernel_says_so_in_one_line_and_changes_nothing(tmp_path, private_tmp):
    proc, kernel, path, results, before = _start_slow_run(tmp_path)
    os.kill(kernel, signal.SIGKILL)  # e.g. the out-of-memory killer
    _assert_left_unchanged(proc, 1, ["kernel died", "cell 2 (`pathlib.Path("], path, results, before, private_tmp)


# ------------------------------------------------------------------- the executor (and grader's)
def test_run_returns_the_failure_kind_cell_and_error(tmp_path):
    nb = _notebook("x = 1", "print('hello')\nraise KeyError('missing')", "print('never')")
    sizes, started = [], []
    failure = run(nb, timeout=60, cwd=tmp_path, on_start=started.append, on_output=lambda n, cell: sizes.append(n))
    assert failure == Failure("error", cell=2, index=1, source="print('hello')\nraise KeyError('missing')",
                              ename="KeyError", evalue="'missing'")
    assert len(started) == 1 and started[0].nb is nb
    assert len(sizes) == 2 and all(n > 0 for n in sizes)   # the print and the error
    assert nb.cells[1].outputs[0].text == "hello\n" and not nb.cells[2].outputs
    assert run(_notebook("y = 2")) is None


def test_run_stops_a_cell_at_the_time_limit(tmp_path):
    failure = run(_notebook("pass", "import time\ntime.sleep(30)"), timeout=2, cwd=tmp_path)
    assert (failure.kind, failure.cell, failure.timeout) == ("timeout", 2, 2)


def test_a_failure_names_the_cell_as_jupyterlab_counts_it_and_the_harness_cause_line(tmp_path):
    """Cells are numbered among all cells (markdown included) from the top; the message's line to act on
    is the harness's cause line, not its last line."""
    error = ("backpropagation failed 1 of 7 checks (MyNet([2, 3, 2])):\n"
             "- matches autograd: fc[2].weight is wrong; likely cause: off by a factor 2 (too small)\n"
             "    sample 4, point 1: fc[1].weight 8.42e-01")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T"), nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_markdown_cell("text"),
                                         nbformat.v4.new_code_cell(f"# the test\nraise AssertionError({error!r})")])
    failure = run(nb, timeout=60, cwd=tmp_path)
    assert (failure.cell, failure.index) == (2, 3)
    where, _, why = failure.describe().partition("`) raised ")
    assert where.startswith("cell 4 (`raise AssertionError('backpropagation failed") and where.endswith("...")
    assert why == "AssertionError: matches autograd: fc[2].weight is wrong; likely cause: off by a factor 2 (too small)"


def test_a_kernel_that_cannot_start_is_a_failure_and_leaves_nothing_at_exit(tmp_path):
    # nbclient registers the kernel's clean-up at exit and keeps it when the kernel does not answer in
    # time; the grader's process then printed a traceback when it ended (seen under load in CI)
    code = ("import nbformat\n"
            "from jupyter_client.asynchronous import AsyncKernelClient\n"
            "from inf265.execute import run\n"
            "async def silent(self, timeout=None):\n"
            "    raise RuntimeError(\"Kernel didn't respond in 120 seconds\")\n"
            "AsyncKernelClient.wait_for_ready = silent\n"
            "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')])\n"
            "failure = run(nb)\n"
            "print(failure.kind, failure.evalue)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "start Kernel didn't respond in 120 seconds"
    assert "Traceback" not in done.stderr, done.stderr
