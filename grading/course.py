"""The course folder: what the sandbox may see of ours, mounted read-only at /course.

It holds the runner package (and the channel it speaks), the data layer and notebook loader it
uses, the official harness, and a ``sitecustomize`` that emulates the course's normal online
setup offline: ``torchvision.datasets.CIFAR10(root=<any folder>, download=True)`` (and the MNIST
test split) are served from the data folder, so a notebook that downloads its data, as students'
notebooks do, runs in the grader without a network.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from inf265 import ROOT

#: files copied, relative to the project root: the runner and its channel, the harness, and the course's
#: support package (the data layer, figures and results helpers the notebooks import; not the report builder)
FILES = ("grading/__init__.py", "grading/channel.py", "grading/runner/*.py", "inf265/*.py", "tests_backpropagation.py",
         "harness_core.py")
EXCLUDED = ("inf265/report.py",)

SITECUSTOMIZE = '''\
# Written by the INF265 grader (grading/course.py) into the sandbox's /course: students' dataset
# downloads are served from the read-only data folder ($DATA_DIR), since the sandbox has no network.
import importlib.abc
import importlib.util
import os
import sys


def _patch(datasets):
    from inf265 import data as _data

    root = _data.data_dir()

    def offline_cifar10():
        base = _data.cifar10_class(root, download=False)

        class CIFAR10(base):
            def __init__(self, root_=None, train=True, transform=None, target_transform=None, download=False,
                         **kwargs):
                super().__init__(str(root), train=train, transform=transform, target_transform=target_transform,
                                 download=False)
        CIFAR10.__name__ = CIFAR10.__qualname__ = "CIFAR10"
        return CIFAR10

    class MNIST(_data.MNISTTestSplit):
        def __init__(self, root_=None, train=True, transform=None, target_transform=None, download=False, **kwargs):
            if train:
                raise _data.DataError("the grader has only the MNIST test split offline (train=False)")
            super().__init__(str(root), transform=transform, target_transform=target_transform)

    try:
        datasets.CIFAR10 = offline_cifar10()
    except _data.DataError:
        pass  # no CIFAR-10 here either: the student's own call fails with torchvision's message
    datasets.MNIST = MNIST


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "torchvision.datasets":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)
        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("INF265_GRADING"):
    sys.meta_path.insert(0, _Hook())
'''


def build(harness: Path | None = None) -> Path:
    """A fresh course folder (a temporary directory the caller removes)."""
    folder = Path(tempfile.mkdtemp(prefix="inf265-course-"))
    for pattern in FILES:
        for source in sorted(ROOT.glob(pattern)):
            name = str(source.relative_to(ROOT))
            if name in EXCLUDED:
                continue
            if name in ("tests_backpropagation.py", "harness_core.py") and harness:
                source = harness.parent / name  # the official harness and the core beside it
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (folder / "ipython-startup.py").write_text(
        "try:\n    import torch, torchvision  # noqa: F401  (preloaded by the grader while the kernel starts)\n"
        "except ImportError:\n    pass\n")
    folder.chmod(0o755)
    return folder
