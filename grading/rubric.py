"""The grading rubric (``grading/rubric.toml``): points per check, partial credit, limits.

Check ids and their tasks are declared once, in :mod:`grading.registry`; the rubric gives their
points (a check it does not list is run and reported for 0 points, as the beyond-the-course ones
are by default) and may change their titles, never invent an id.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import registry

DEFAULT = Path(__file__).resolve().parent / "rubric.toml"
#: the harness's sub-checks of a backpropagation check -> share of its points (partial credit)
SUBCHECK_WEIGHTS = {"runs": 0.1, "untouched": 0.1, "stored": 0.1, "autograd": 0.35, "finite_differences": 0.35}


class RubricError(ValueError):
    """The rubric file is not valid; the message says what to fix."""


@dataclass
class Rubric:
    title: str
    points: dict[str, float]
    titles: dict[str, str]
    check_timeout: float
    cell_timeout: float
    memory_gib: float
    processes: int
    subcheck_weights: dict[str, float] = field(default_factory=lambda: dict(SUBCHECK_WEIGHTS))
    path: str = ""
    notebook_timeout: float = 1800.0
    notebook_mib: float = 50.0
    packages: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict)   # [late], [lms], [deliverables], [manual], [similarity]: see their modules

    def score(self, check: str, status: str, fraction: float | None = None) -> float:
        pts = self.points.get(check, 0.0)
        if status == "pass":
            return pts
        if status == "partial" and fraction is not None:
            return round(pts * max(0.0, min(1.0, fraction)), 4)
        return 0.0

    @property
    def total(self) -> float:
        return sum(self.points.values())


def _number(value, what: str, path: Path, minimum=0.0, maximum=None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RubricError(f"{path}: {what} must be a number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f"at least {minimum:g}"
        raise RubricError(f"{path}: {what} must be {bound}, got {value!r}")
    return float(value)


def load(path: Path | str | None = None) -> Rubric:
    path = Path(path) if path else DEFAULT
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RubricError(f"rubric file {path} not found; pass --rubric FILE or restore grading/rubric.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise RubricError(f"{path} is not valid TOML: {exc}") from None
    checks = data.get("checks", {})
    if not isinstance(checks, dict):
        raise RubricError(f"{path}: [checks] must be a table of [checks.<id>] tables")
    unknown = sorted(set(checks) - set(registry.IDS))
    if unknown:
        raise RubricError(f"{path}: unknown check id(s) {', '.join(unknown)}; known ids: {', '.join(registry.IDS)}")
    points = {c.id: 0.0 for c in registry.CHECKS}
    titles = {c.id: c.title for c in registry.CHECKS}
    for cid, spec in checks.items():
        if not isinstance(spec, dict):
            raise RubricError(f"{path}: [checks.{cid}] must be a table (points = <number>, title = \"...\")")
        if "points" in spec:
            points[cid] = _number(spec["points"], f"checks.{cid}.points", path)
        if "title" in spec:
            titles[cid] = str(spec["title"])
    limits, scoring = data.get("limits", {}), data.get("scoring", {})
    weights = dict(SUBCHECK_WEIGHTS)
    for key, value in scoring.get("backprop_subchecks", {}).items():
        if key not in weights:
            raise RubricError(f"{path}: scoring.backprop_subchecks.{key} is not a sub-check; known: {', '.join(weights)}")
        weights[key] = _number(value, f"scoring.backprop_subchecks.{key}", path, 0, 1)
    if abs(sum(weights.values()) - 1) > 1e-9:
        raise RubricError(f"{path}: scoring.backprop_subchecks must add up to 1, got {sum(weights.values()):g}")
    return Rubric(
        title=str(data.get("title", "Grading report")), points=points, titles=titles,
        check_timeout=_number(limits.get("check_timeout", 20), "limits.check_timeout", path, 0.1),
        cell_timeout=_number(limits.get("cell_timeout", 20), "limits.cell_timeout", path, 0.1),
        memory_gib=_number(limits.get("memory_gib", 4), "limits.memory_gib", path, 1),
        processes=int(_number(limits.get("processes", 64), "limits.processes", path, 8)),
        subcheck_weights=weights, path=str(path),
        notebook_timeout=_number(limits.get("notebook_timeout", 1800), "limits.notebook_timeout", path, 1),
        notebook_mib=_number(limits.get("notebook_mib", 50), "limits.notebook_mib", path, 0.1),
        packages=_packages(data.get("environment", {}).get("packages", []), path),
        extras={k: data.get(k, {}) for k in ("late", "lms", "deliverables", "manual", "similarity")},
    )


def _packages(value, path: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RubricError(f"{path}: environment.packages must be a list of package names (pip requirement strings), "
                          f"got {value!r}")
    return [v.strip() for v in value]


def main(argv=None) -> int:
    """``python -m grading.rubric --packages [RUBRIC]``: the students' extra packages, one per line
    (what ``make grade``'s setup and the Gradescope package's setup.sh install)."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "--packages" or len(argv) > 2:
        print("usage: python -m grading.rubric --packages [RUBRIC]", file=sys.stderr)
        return 2
    try:
        print("\n".join(load(argv[1] if len(argv) > 1 else None).packages))
    except RubricError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
