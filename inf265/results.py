"""Result export for the report: JSON and figures under ``results/``, written atomically.

Outputs are deterministic (sorted keys, no timestamps, no machine paths, PNGs without the
software/date metadata), so re-running a notebook on the same data rewrites identical files.

Where they go: :func:`results_dir`. A notebook run by hand (Jupyter, nbval) writes straight into
``results/``, each file atomically. Under ``python -m inf265.execute`` (``make run``) the kernel's
environment names a staging folder (:data:`STAGING_ENV`); the executor moves its files into
``results/`` (:func:`publish`) only once the whole notebook has run, so an interrupted run never
leaves ``results/`` half refreshed.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from . import ROOT

RESULTS = ROOT / "results"
STAGING_ENV = "INF265_RESULTS_STAGING"
"""Environment variable naming the staging folder (set by :mod:`inf265.execute` for its kernel)."""


class ResultsError(ValueError):
    """A results file cannot be written where asked; the message says why and what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def results_dir() -> Path:
    """Where :func:`save_json` and :func:`save_figure` write: the staging folder named by
    ``$INF265_RESULTS_STAGING`` when the notebook runs under ``python -m inf265.execute``,
    else ``results/``."""
    staging = os.environ.get(STAGING_ENV)
    if not staging:
        return RESULTS
    if not Path(staging).is_dir():
        raise ResultsError(f"{STAGING_ENV}={staging} is not a folder. python -m inf265.execute sets it for "
                           f"the notebook it runs; unset it to write into {RESULTS}")
    return Path(staging)


def _target(name: str, folder) -> Path:
    """``folder / name``, refusing names that would leave the folder."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.name:
        raise ResultsError(f"results file name {name!r}: give a plain file name such as 'toy_problems.json'")
    return Path(results_dir() if folder is None else folder) / relative


def _finite(obj):
    """NaN/inf (e.g. a precision of 0/0) become null: JSON has no NaN, and Typst rejects it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def rounded(obj, significant: int):
    """``obj`` with every float rounded to ``significant`` significant digits (ints, strings,
    booleans untouched)."""
    if isinstance(significant, bool) or not isinstance(significant, int) or not 1 <= significant <= 17:
        raise ValueError(f"significant must be an integer from 1 to 17, got {significant!r}")
    if isinstance(obj, float):
        return float(f"{obj:.{significant}g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: rounded(v, significant) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, significant) for v in obj]
    return obj


def save_json(name: str, obj, folder: Path | None = None, significant: int | None = None) -> Path:
    """Save ``obj`` as ``<results folder>/<name>`` (pretty, sorted keys, trailing newline).

    ``significant``: round every float to that many significant digits. The last digits of a
    floating-point result depend on the CPU's vector instructions and the BLAS code path (they
    differ between machines, not between runs); a file meant to be reproduced elsewhere should
    hold the digits that mean something, e.g. those the notebook prints.
    """
    obj = _finite(obj if significant is None else rounded(obj, significant))
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write_bytes(_target(name, folder), text.encode("utf-8"))


def load_json(name: str, folder: Path | None = None):
    """Read a results file: from ``folder``, else the staging folder if it holds it, else ``results/``."""
    if folder is None and not _target(name, None).is_file():
        folder = RESULTS
    return json.loads(_target(name, folder).read_text(encoding="utf-8"))


def save_figure(fig, name: str, folder: Path | None = None, dpi: int = 150) -> Path:
    """Save a matplotlib figure as ``<results folder>/<name>`` (PNG, reproducible bytes)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return atomic_write_bytes(_target(name, folder), buf.getvalue())


def publish(staging: Path, target: Path = RESULTS) -> list[Path]:
    """Move every file of ``staging`` (a run's results) into ``target``, keeping relative paths,
    each file atomically. Returns the written paths, sorted."""
    staging, target = Path(staging), Path(target)
    written = []
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        written.append(atomic_write_bytes(target / path.relative_to(staging), path.read_bytes()))
    return written


class ClaimError(AssertionError):
    """A sentence of a notebook's prose that its computed results no longer support."""


def claim(sentence: str, holds: bool) -> None:
    """Print ``sentence``, a statement about computed results, if ``holds``; raise if not.

    Notebooks state their findings through this, with the numbers formatted into the sentence
    from the run, so that prose never goes stale when the data or the code change.
    """
    if not holds:
        raise ClaimError(f"the computed results no longer support: {sentence}")
    print(sentence)
