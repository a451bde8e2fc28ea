"""A small class as Canvas's "Download Submissions" gives it, built from tests/fixtures/students/.

Files flattened and renamed ``name[_LATE]_userid_submissionid_originalname``:

- hansenkari (1001): backpropagation.ipynb truncated, then resubmitted whole (``-1``), and
  ``Gradient_Descent.ipynb`` in another case (skeleton_conventions);
- olsenper (1002): LATE (renamed_params_neuron_loops), with a README.txt and a helper file;
- berglie (1003): the project folder zipped, notebooks one level down, and a report PDF
  (backprop_as_method);
- nilsenola (1004): a truncated backpropagation.ipynb, a good gradient_descent.ipynb
  (derivative_at_activation);
- dahlsigrid (1005): only a PDF.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "students"
STUDENTS = {"hansenkari_1001": "skeleton_conventions", "olsenper_1002": "renamed_params_neuron_loops",
            "berglie_1003": "backprop_as_method", "nilsenola_1004": "derivative_at_activation"}


def pdf(text: str) -> bytes:
    """A one-page PDF holding ``text`` (matplotlib's PDF backend: real, extractable text)."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    fig.text(0.05, 0.5, text, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf")
    return buf.getvalue()


def build(folder: Path) -> Path:
    """Write ``folder/submissions.zip`` (and return it)."""
    bp, gd = "backpropagation.ipynb", "gradient_descent.ipynb"
    read = lambda fixture, nb: (FIXTURES / fixture / nb).read_bytes()  # noqa: E731
    files = {
        "hansenkari_1001_5001_backpropagation.ipynb": read("skeleton_conventions", bp)[:2000],
        "hansenkari_1001_5001_backpropagation-1.ipynb": read("skeleton_conventions", bp),
        "hansenkari_1001_5001_Gradient_Descent.ipynb": read("skeleton_conventions", gd),
        "olsenper_LATE_1002_5002_backpropagation.ipynb": read("renamed_params_neuron_loops", bp),
        "olsenper_LATE_1002_5002_gradient_descent.ipynb": read("renamed_params_neuron_loops", gd),
        "olsenper_LATE_1002_5002_README.txt": b"helpers.py: plotting helpers\n",
        "olsenper_LATE_1002_5002_helpers.py": b"def plot():\n    pass\n",
        "nilsenola_1004_5004_backpropagation.ipynb": read("derivative_at_activation", bp)[:3000],
        "nilsenola_1004_5004_gradient_descent.ipynb": read("derivative_at_activation", gd),
        "dahlsigrid_1005_5005_report.pdf": pdf("Report of Dahl and Sigrid"),
    }
    project = folder / "berglie_project.zip"
    with zipfile.ZipFile(project, "w") as z:
        z.writestr(f"INF265-P1/{bp}", read("backprop_as_method", bp))
        z.writestr(f"INF265-P1/{gd}", read("backprop_as_method", gd))
        z.writestr("INF265-P1/report.pdf", pdf("Authors: Kari Berg and Ola Lie\nAnswers to the questions (a) to (g)"))
    files["berglie_1003_5003_project.zip"] = project.read_bytes()
    project.unlink()
    out = folder / "submissions.zip"
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out
