"""Result export for the report: JSON and figures under ``results/``, written atomically.

Outputs are deterministic (sorted keys, no timestamps, no machine paths, PNGs without the
software/date metadata), so re-running a notebook on the same data rewrites identical files.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from . import ROOT

RESULTS = ROOT / "results"


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


def _finite(obj):
    """NaN/inf (e.g. a precision of 0/0) become null: JSON has no NaN, and Typst rejects it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def save_json(name: str, obj, folder: Path = RESULTS) -> Path:
    """Save ``obj`` as ``results/<name>`` (pretty, sorted keys, trailing newline)."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    return atomic_write_bytes(Path(folder) / name, text.encode("utf-8"))


def load_json(name: str, folder: Path = RESULTS):
    return json.loads((Path(folder) / name).read_text(encoding="utf-8"))


def save_figure(fig, name: str, folder: Path = RESULTS, dpi: int = 150) -> Path:
    """Save a matplotlib figure as ``results/<name>`` (PNG, reproducible bytes)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return atomic_write_bytes(Path(folder) / name, buf.getvalue())
