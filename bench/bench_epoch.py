"""Benchmark of gradient_descent.ipynb's data path: ``python bench/bench_epoch.py [--notebook]``.

1. One training epoch of the notebook's ``MyMLP`` with its ``train`` over 10000 cat/automobile
   images (the size of full CIFAR-10's cat+automobile training set; the offline sample is tiled
   to that size), batch 256, one CPU thread (as in the notebook):
   A = the usual course style, a ``DataLoader`` whose dataset applies torchvision's ``Resize``,
   ``ToDtype`` and ``Normalize`` to every image in ``__getitem__``, every epoch;
   B = the notebook's path: its ``resize`` and ``normalise`` once over the whole tensor, then its
   ``make_loader`` (a ``DataLoader`` over a ``TensorDataset``).
   Prints ``epoch (...): A s vs B s, ratio A/B`` (best of 5 runs each); the one-off preprocessing
   cost of B is printed on its own line. Both paths give the same images (checked).
2. With ``--notebook``: the whole notebook, executed like ``make run`` in a scratch copy of the
   project, on a full-size tiled replica of CIFAR-10 (50000 training / 10000 test images, built in
   memory by tiling the data found in ``$DATA_DIR``). Prints its wall time, its slowest cell, and
   the grader's limits this measurement suggests (twice the measure: ``[limits] cell_timeout`` and
   ``notebook_timeout`` of grading/rubric.toml); ``results/`` are not touched.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inf265 import ROOT  # noqa: E402
from inf265.data import data_dir, get_cifar10  # noqa: E402
from inf265.nbdefs import load_definitions  # noqa: E402

NOTEBOOK = ROOT / "gradient_descent.ipynb"
N_IMAGES, BATCH = 10000, 256

TILE_CELL = '''\
# Benchmark only: tile whatever CIFAR-10 data is found to the official sizes (50000 / 10000).
import numpy as _np
import inf265.data as _data
_get = _data.get_cifar10
def _tiled(train=True, *args, **kwargs):
    ds = _get(train, *args, **kwargs)
    n = 50000 if train else 10000
    reps = -(-n // len(ds))
    ds.data = _np.concatenate([ds.data] * reps)[:n]
    ds.targets = (list(ds.targets) * reps)[:n]
    return ds
_data.get_cifar10 = _tiled
'''


def tiled_cat_car(nb, n: int):
    """(uint8 images (n, 3, 32, 32), labels 0/1): the notebook's class selection, tiled to n images."""
    ds = get_cifar10(True, verbose=False)
    images, labels = nb.select_classes(nb.as_tensor_images(ds), ds.targets, nb.KEEP)
    reps = -(-n // len(labels))
    return images.repeat(reps, 1, 1, 1)[:n], labels.repeat(reps)[:n]


class PerImage(Dataset):
    """The usual course style: every image transformed on its own, at every access."""

    def __init__(self, images, labels, mean, std, size):
        self.images, self.labels = images, labels
        self.transform = v2.Compose([v2.Resize((size, size), antialias=True),
                                     v2.ToDtype(torch.double, scale=True), v2.Normalize(mean, std)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def best_of(runs, fn):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_epoch(runs: int = 5) -> float:
    torch.set_default_dtype(torch.double)
    torch.set_num_threads(1)
    nb = load_definitions(NOTEBOOK)
    images, labels = tiled_cat_car(nb, N_IMAGES)
    start = time.perf_counter()
    (x,), mean, std = nb.normalise(nb.resize(images, nb.IMAGE_SIZE))
    prep = time.perf_counter() - start
    per_image = PerImage(images, labels, mean, std, nb.IMAGE_SIZE)
    for i in (0, N_IMAGES // 2, N_IMAGES - 1):
        assert torch.allclose(per_image[i][0], x[i], atol=1e-12), "the two data paths give different images"
    torch.manual_seed(0)
    model0 = nb.MyMLP()
    loss_fn = nn.CrossEntropyLoss()

    def epoch(loader):
        model = copy.deepcopy(model0)
        nb.train(1, torch.optim.SGD(model.parameters(), lr=0.01), model, loss_fn, loader)

    course = DataLoader(per_image, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0))
    ours = nb.make_loader(x, labels, BATCH, 0)
    a = best_of(runs, lambda: epoch(course))
    b = best_of(runs, lambda: epoch(ours))
    print(f"preprocessing once ({N_IMAGES} images to 16x16 double tensors): {prep:.2f} s")
    print(f"epoch ({N_IMAGES} images, batch {BATCH}, 1 thread, per-image transforms vs the notebook's "
          f"preprocessed tensors): {a:.2f} s vs {b:.2f} s, ratio {a / b:.1f}")
    return a / b


CELL_TIMER = '''\
# Benchmark only: the wall time of every cell, written to cell_times.json
import json as _json, time as _time
_cell_start, _cell_times = [None], []
def _pre_cell(*_):
    _cell_start[0] = _time.perf_counter()
def _post_cell(*_):
    if _cell_start[0] is not None:
        _cell_times.append(_time.perf_counter() - _cell_start[0])
        open("cell_times.json", "w").write(_json.dumps(_cell_times))
get_ipython().events.register("pre_run_cell", _pre_cell)
get_ipython().events.register("post_run_cell", _post_cell)
'''
MARGIN = 2  # the grader's limits: twice the reference's measure on full-size data


def bench_notebook() -> float:
    with tempfile.TemporaryDirectory(prefix="inf265-bench-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(ROOT / "inf265", tmp / "inf265", ignore=shutil.ignore_patterns("__pycache__"))
        nb = nbformat.read(NOTEBOOK, as_version=4)
        nb.cells.insert(0, nbformat.v4.new_code_cell(TILE_CELL))
        nb.cells.insert(0, nbformat.v4.new_code_cell(CELL_TIMER))
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, tmp / NOTEBOOK.name)
        from inf265.execute import execute

        os.environ["DATA_DIR"] = str(data_dir().resolve())  # the kernel runs in the scratch copy
        start = time.perf_counter()
        execute(tmp / NOTEBOOK.name)
        took = time.perf_counter() - start
        cells = json.loads((tmp / "cell_times.json").read_text())[1:]  # the tiling cell left out
    slowest = max(range(len(cells)), key=cells.__getitem__)
    print(f"notebook (full-size tiled replica, 50000/10000 images): {took:.1f} s; slowest cell: code cell "
          f"{slowest + 1}, {cells[slowest]:.1f} s; grader's limits with a {MARGIN}x margin: cell_timeout "
          f"{MARGIN * cells[slowest]:.0f} s, notebook_timeout {MARGIN * took:.0f} s")
    return took


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", action="store_true", help="also run the whole notebook at full size")
    parser.add_argument("--runs", type=int, default=5, help="runs per epoch timing (best is kept)")
    args = parser.parse_args(argv)
    bench_epoch(args.runs)
    if args.notebook:
        bench_notebook()
    return 0


if __name__ == "__main__":
    sys.exit(main())
