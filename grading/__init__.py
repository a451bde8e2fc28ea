"""Instructors' grading of INF265 Project 1 submissions: ``python -m grading SUBMISSION_DIR``.

See :mod:`grading.cli` for the command line, ``grading/rubric.toml`` for the points.
"""
