"""`make run`'s notebook execution: in place, atomic, and clear about the failing cell."""
import json
import os
import subprocess
import sys

import nbformat
import pytest

from inf265 import ROOT
from inf265.execute import execute


def _write(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path.read_bytes()


def test_success_writes_outputs_in_place_without_timing(tmp_path):
    path = tmp_path / "ok.ipynb"
    _write(path, "x = 6 * 7", "import sys, time\nprint(x, flush=True)\ntime.sleep(0.3)\nprint('again')")
    execute(path)
    nb = json.loads(path.read_text())
    assert len(nb["cells"][1]["outputs"]) == 1, "stream chunks not merged: output depends on flush timing"
    assert "".join(nb["cells"][1]["outputs"][0]["text"]) == "42\nagain\n"
    assert [c["execution_count"] for c in nb["cells"]] == [1, 2]
    assert all("execution" not in c["metadata"] for c in nb["cells"])
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask, "written with mkstemp's private mode"


def test_failure_leaves_notebook_untouched_and_names_the_cell(tmp_path):
    path = tmp_path / "bad.ipynb"
    before = _write(path, "x = 1", "y = x + 1", "raise ValueError('boom in cell three')", "print('never')")
    with pytest.raises(RuntimeError) as err:
        execute(path)
    msg = str(err.value)
    assert "code cell 3" in msg and "boom in cell three" in msg and "left unchanged" in msg
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_reports_failure_with_exit_code(tmp_path):
    path = tmp_path / "bad.ipynb"
    before = _write(path, "1 / 0")
    proc = subprocess.run([sys.executable, "-m", "inf265.execute", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "code cell 1" in proc.stderr and "ZeroDivisionError" in proc.stderr
    assert path.read_bytes() == before
