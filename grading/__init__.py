"""Instructors' grading of INF265 Project 1 submissions: ``python -m grading SUBMISSION_DIR``.

See :mod:`grading.cli` for the command line, ``grading/rubric.toml`` for the points.
"""
import sys

# as in inf265/__init__.py: jsonschema (under nbformat) would import rfc3987_syntax, which compiles a
# grammar for seconds, in the grader, its static and deliverables readers and the sandboxed runner alike
sys.modules.setdefault("rfc3987_syntax", None)
