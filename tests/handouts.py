"""What the hand-out tests of both notebooks share: the students' notebook, and running it to its first stub."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from inf265 import ROOT
from inf265 import release


def write_handout(notebook: Path, folder: Path) -> Path:
    """The students' version of ``notebook`` (``make release``'s), written into ``folder``."""
    path = folder / notebook.name
    nbformat.write(release.release_notebook(nbformat.read(notebook, as_version=4), notebook.name), path)
    return path


def messages(notebook: Path) -> list[str]:
    """The NotImplementedError message of every solution region of ``notebook``, in order."""
    return [region.message for region in release.regions(nbformat.read(notebook, as_version=4), notebook.name)]


def first_stop(handout: Path, results_glob: str) -> str:
    """Run ``handout`` top to bottom from the project root: the NotImplementedError message it stops at
    (raised by a stub, or reported by the harness: "... raised NotImplementedError: <message> (sample ...)").

    Fails when it stops with any other error, or when it writes the results matching ``results_glob``.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(handout, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(ROOT)}})
    results = ROOT / "results"
    before = {p.name: p.read_bytes() for p in results.glob(results_glob)}
    with pytest.raises(CellExecutionError) as err:
        client.execute()
    assert {p.name: p.read_bytes() for p in results.glob(results_glob)} == before, "the hand-out wrote results"
    if err.value.ename == "NotImplementedError":
        return err.value.evalue
    reported = re.search(r"raised NotImplementedError: (.*?)(?: \(sample \d+, point \d+\))?$", err.value.evalue, re.M)
    assert reported, f"stopped by {err.value.ename}: {err.value.evalue}"
    return reported[1]
