"""Infrastructure of the INF265 Project 1 bundle: data, notebook execution, plotting, results.

What the course asks students to write by hand (``backpropagation``, ``train_manual_update``)
lives in the notebooks, not here.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
