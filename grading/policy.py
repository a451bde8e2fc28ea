"""The project text's late policy (rubric ``[late]``) and where submission times come from.

A late project loses ``points`` (2), plus ``per_period`` (2) for every started ``period_hours``
(12-hour) period after the deadline: handed in at 00:01 the day after a 23:59 deadline, -4; at
12:01, -6. Times come from a CSV ``student,submitted_at`` (ISO 8601; a time without a zone is in
the rubric's ``timezone``) or from Canvas's submissions API (:func:`canvas_times`: the course,
the assignment and a token from the environment, never written anywhere).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo


class PolicyError(ValueError):
    """The late policy or a submission time is not usable; the message says what to fix."""


@dataclass
class LatePolicy:
    deadline: datetime
    points: float = 2
    per_period: float = 2
    period_hours: float = 12

    @classmethod
    def from_rubric(cls, rubric) -> "LatePolicy | None":
        late = rubric.extras.get("late") or {}
        if not late.get("deadline"):
            return None
        zone = ZoneInfo(str(late.get("timezone", "UTC")))
        try:
            deadline = parse_time(str(late["deadline"]), zone)
        except PolicyError as exc:
            raise PolicyError(f"{rubric.path}: late.deadline: {exc}") from None
        return cls(deadline, float(late.get("points", 2)), float(late.get("per_period", 2)),
                   float(late.get("period_hours", 12)))

    def deduction(self, submitted: datetime) -> float:
        """Points lost by a submission at ``submitted`` (0 when on time)."""
        late = (submitted - self.deadline).total_seconds()
        if late <= 0:
            return 0.0
        return self.points + self.per_period * math.ceil(late / (self.period_hours * 3600))


def parse_time(text: str, zone) -> datetime:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PolicyError(f"{text!r} is not a date and time (write it as ISO 8601, e.g. 2025-02-22T00:01:00+01:00)") \
            from None
    return when if when.tzinfo else when.replace(tzinfo=zone)


def read_times(path: Path, zone) -> dict[str, datetime]:
    """``student,submitted_at`` rows; ``student`` is the report folder's name or the LMS user id."""
    try:
        rows = list(csv.DictReader(path.open(encoding="utf-8-sig", newline="")))
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc}") from None
    if rows and not {"student", "submitted_at"} <= set(rows[0]):
        raise PolicyError(f"{path}: the columns must be student,submitted_at (found {', '.join(rows[0])})")
    out = {}
    for n, row in enumerate(rows, start=2):
        if row["submitted_at"].strip():
            try:
                out[row["student"].strip()] = parse_time(row["submitted_at"], zone)
            except PolicyError as exc:
                raise PolicyError(f"{path}, line {n}: {exc}") from None
    return out


def canvas_times(api=None) -> dict[str, datetime]:
    """Submission times by Canvas user id, from Canvas's API (canvasapi). The address, token, course
    and assignment come from the environment: CANVAS_URL, CANVAS_TOKEN, CANVAS_COURSE_ID,
    CANVAS_ASSIGNMENT_ID. ``api`` replaces ``canvasapi.Canvas`` (tests)."""
    names = ("CANVAS_URL", "CANVAS_TOKEN", "CANVAS_COURSE_ID", "CANVAS_ASSIGNMENT_ID")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise PolicyError(f"--canvas needs the environment variables {', '.join(missing)} (the token is read from "
                          f"the environment only, never stored)")
    if api is None:
        from canvasapi import Canvas as api
    canvas = api(os.environ["CANVAS_URL"], os.environ["CANVAS_TOKEN"])
    assignment = canvas.get_course(int(os.environ["CANVAS_COURSE_ID"])).get_assignment(
        int(os.environ["CANVAS_ASSIGNMENT_ID"]))
    out = {}
    for s in assignment.get_submissions():
        when = getattr(s, "submitted_at", None)
        if when:
            out[str(s.user_id)] = parse_time(str(when), ZoneInfo("UTC"))
    return out


def apply(report: dict, policy: LatePolicy | None, times: dict[str, datetime]) -> None:
    """Write the lateness into a report: ``submitted_at``, ``late``, ``late_deduction``."""
    when = times.get(report["student"]) or times.get(report.get("lms_user_id") or "\0")
    if when is not None:
        report["submitted_at"] = when.isoformat()
        if policy is not None:
            report["late_deduction"] = policy.deduction(when)
            report["late"] = report["late_deduction"] > 0
    elif report.get("late") and policy is not None:
        report["late_deduction"] = None  # late by the LMS's mark, time unknown: the instructor decides
