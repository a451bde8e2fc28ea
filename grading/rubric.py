"""The grading rubric (``grading/rubric.toml``): points per check, time limits, partial credit."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "rubric.toml"

BACKPROP_CHECKS = ("load_backpropagation", "backprop_toy", "backprop_mnist", "backprop_batch",
                   "backprop_activations", "backprop_deep")
SGD_CHECKS = ("load_gradient_descent", "train_sgd", "manual_plain", "manual_weight_decay",
              "manual_momentum", "manual_dampening", "manual_nesterov", "manual_combined")
NOTEBOOK_CHECKS = ("notebook_backpropagation", "notebook_gradient_descent")
ALL_CHECKS = BACKPROP_CHECKS + SGD_CHECKS + NOTEBOOK_CHECKS


class RubricError(ValueError):
    """The rubric file is not valid; the message says what to fix."""


@dataclass
class Rubric:
    title: str
    points: dict[str, float]
    titles: dict[str, str]
    check_timeout: float
    cell_timeout: float
    rounding_credit: float
    path: str = ""
    unscored: list[str] = field(default_factory=list)

    def score(self, check: str, status: str) -> float:
        pts = self.points.get(check, 0.0)
        if status == "pass":
            return pts
        if status == "partial":
            return round(pts * self.rounding_credit, 4)
        return 0.0

    @property
    def total(self) -> float:
        return sum(self.points.get(c, 0.0) for c in ALL_CHECKS)


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
    unknown = sorted(set(checks) - set(ALL_CHECKS))
    if unknown:
        raise RubricError(f"{path}: unknown check id(s) {', '.join(unknown)}; known ids: {', '.join(ALL_CHECKS)}")
    points, titles = {}, {}
    for cid, spec in checks.items():
        if not isinstance(spec, dict) or "points" not in spec:
            raise RubricError(f"{path}: [checks.{cid}] needs `points = <number>`")
        points[cid] = _number(spec["points"], f"checks.{cid}.points", path)
        titles[cid] = str(spec.get("title", cid))
    limits = data.get("limits", {})
    scoring = data.get("scoring", {})
    return Rubric(
        title=str(data.get("title", "Grading report")),
        points=points, titles=titles,
        check_timeout=_number(limits.get("check_timeout", 10), "limits.check_timeout", path, 0.1),
        cell_timeout=_number(limits.get("cell_timeout", 20), "limits.cell_timeout", path, 0.1),
        rounding_credit=_number(scoring.get("rounding_credit", 0.5), "scoring.rounding_credit", path, 0, 1),
        path=str(path), unscored=[c for c in ALL_CHECKS if c not in points],
    )
