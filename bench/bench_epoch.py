"""Benchmark of gradient_descent.ipynb's data path: ``python bench/bench_epoch.py [--no-notebook]``.

1. One training epoch of the notebook's ``MyMLP`` with its ``train`` over 10000 cat/automobile
   images (the size of full CIFAR-10's cat+automobile training set; the offline sample is tiled
   to that size), batch 256, one CPU thread (as in the notebook):
   A = the usual course style, a ``DataLoader`` whose dataset applies PIL ``Resize`` +
   ``ToTensor`` + ``Normalize`` to every image in ``__getitem__``, every epoch;
   B = the notebook's path, images preprocessed once into double tensors (``inf265.cifar``),
   batches by indexing (``cifar.tensor_loader``). Prints ``epoch (...): A s vs B s, ratio A/B``
   (best of 5 runs each; the one-off preprocessing cost of B is printed separately).
2. The whole notebook, executed like ``make run`` in a scratch copy of the project, on a
   full-size tiled replica of CIFAR-10 (50000 training / 10000 test images, built in memory by
   tiling the data found in ``$DATA_DIR``). The project's ``results/`` are not touched.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inf265 import ROOT, cifar  # noqa: E402
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


def tiled_cat_car(n: int):
    ds = get_cifar10(True, verbose=False)
    keep = np.isin(np.asarray(ds.targets), cifar.KEEP)
    reps = -(-n // int(keep.sum()))
    ds.data = np.concatenate([ds.data[keep]] * reps)[:n]
    ds.targets = [cifar.KEEP.index(t) for t in np.asarray(ds.targets)[keep]] * reps
    ds.targets = ds.targets[:n]
    return ds


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
    ds = tiled_cat_car(N_IMAGES)
    start = time.perf_counter()
    x = cifar.resize_to_double(cifar.images_as_tensor(ds), 16)
    mean, std = cifar.channel_stats(x)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = torch.tensor(ds.targets)
    prep = time.perf_counter() - start
    torch.manual_seed(0)
    model0 = nb.MyMLP()
    loss_fn = nn.CrossEntropyLoss()

    def epoch(loader):
        model = copy.deepcopy(model0)
        nb.train(1, torch.optim.SGD(model.parameters(), lr=0.01), model, loss_fn, loader)

    pil = cifar.pil_loader(ds, mean, std, BATCH, image_size=16, seed=0)
    fast = cifar.tensor_loader(x, y, BATCH, shuffle=True, seed=0)
    a = best_of(runs, lambda: epoch(pil))
    b = best_of(runs, lambda: epoch(fast))
    print(f"preprocessing once ({N_IMAGES} images to 16x16 double tensors): {prep:.2f} s")
    print(f"epoch ({N_IMAGES} images, batch {BATCH}, 1 thread, per-image PIL DataLoader vs preloaded tensors): "
          f"{a:.2f} s vs {b:.2f} s, ratio {a / b:.1f}")
    return a / b


def bench_notebook() -> float:
    with tempfile.TemporaryDirectory(prefix="inf265-bench-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(ROOT / "inf265", tmp / "inf265", ignore=shutil.ignore_patterns("__pycache__"))
        nb = nbformat.read(NOTEBOOK, as_version=4)
        nb.cells.insert(0, nbformat.v4.new_code_cell(TILE_CELL))
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, tmp / NOTEBOOK.name)
        from inf265.execute import execute

        os.environ["DATA_DIR"] = str(data_dir().resolve())  # the kernel runs in the scratch copy
        start = time.perf_counter()
        execute(tmp / NOTEBOOK.name)
        took = time.perf_counter() - start
    print(f"notebook (full-size tiled replica, 50000/10000 images): {took:.1f} s")
    return took


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-notebook", action="store_true", help="skip the full-size notebook run")
    parser.add_argument("--runs", type=int, default=5, help="runs per epoch timing (best is kept)")
    args = parser.parse_args(argv)
    bench_epoch(args.runs)
    if not args.no_notebook:
        bench_notebook()
    return 0


if __name__ == "__main__":
    sys.exit(main())
