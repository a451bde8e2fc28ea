"""Infrastructure of the INF265 Project 1 bundle: data, notebook execution, plotting, results.

What the course asks students to write by hand (``backpropagation``, ``train_manual_update``)
lives in the notebooks, not here.
"""
import sys
from pathlib import Path

# jsonschema imports the optional package rfc3987_syntax when it is installed (jupyterlab's
# dependencies bring it), and that package compiles a grammar for about 4 s on import. nbformat
# validates notebooks with jsonschema but uses none of the formats it checks; every process that
# reads a notebook (tests, make run, the grader and its sandboxed runner) would pay those seconds.
sys.modules.setdefault("rfc3987_syntax", None)  # None: "import rfc3987_syntax" raises ImportError

ROOT = Path(__file__).resolve().parent.parent
