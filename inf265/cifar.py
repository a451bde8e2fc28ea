"""CIFAR-10 cat vs automobile for ``gradient_descent.ipynb``: preprocessing once, split, loaders, metrics.

The notebook's pipeline, as infrastructure (the course asks students to write the model and the
training loops by hand, not this):

* :func:`load_cat_car` loads CIFAR-10 through :func:`inf265.data.get_cifar10` (official dataset or
  the offline sample), carves a seeded, stratified validation set out of the training split
  (:func:`stratified_split`), keeps cat (3) and automobile (1) relabelled to 0/1
  (:func:`select_classes`), resizes every image **once** with torchvision's batched tensor
  transforms, and normalises with per-channel statistics of the training part only. The result
  is a :class:`CatCar` of ready double tensors: epochs never redo image work.
* :func:`tensor_loader` iterates over those tensors in shuffled mini-batches with a seeded
  ``torch.Generator`` (same order on every call with the same seed), one indexing operation per
  batch instead of one ``__getitem__`` per image.
* :func:`pil_loader` is the usual per-image PIL-transform ``DataLoader`` (for the benchmark).
* :func:`confusion_matrix`, :func:`precision_recall`, :func:`wilson_interval` evaluate a classifier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset
from torchvision.transforms import v2

from . import data as _data

AUTOMOBILE, CAT = 1, 3
#: CIFAR-10 labels kept, in the order of their new labels 0, 1.
KEEP = (AUTOMOBILE, CAT)


def stratified_split(targets, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` of a seeded split that keeps every class's proportion.

    Each class ``c`` with ``n_c`` items gives ``round(val_fraction * n_c)`` of them, chosen by a
    ``torch.Generator`` seeded with ``seed``, to validation. Both index tensors are sorted.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.numel() == 0:
        raise ValueError(f"targets must be a non-empty 1-D sequence of labels, got shape {tuple(targets.shape)}")
    gen = torch.Generator().manual_seed(seed)
    val = []
    for c in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == c).flatten()
        n_val = round(val_fraction * len(idx))
        val.append(idx[torch.randperm(len(idx), generator=gen)[:n_val]])
    is_val = torch.zeros(len(targets), dtype=torch.bool)
    is_val[torch.cat(val)] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def select_classes(images: torch.Tensor, targets, keep=KEEP) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the images whose label is in ``keep``; relabel ``keep[i]`` to ``i``."""
    targets = torch.as_tensor(targets)
    new = torch.full((int(targets.max()) + 1,), -1, dtype=torch.long)
    new[torch.as_tensor(keep)] = torch.arange(len(keep))
    mask = torch.isin(targets, torch.as_tensor(keep))
    return images[mask], new[targets[mask]]


def class_counts(targets, n_classes: int) -> list[int]:
    """Number of items of each label ``0 .. n_classes-1``."""
    return torch.bincount(torch.as_tensor(targets), minlength=n_classes).tolist()


def images_as_tensor(dataset) -> torch.Tensor:
    """A torchvision CIFAR-10 dataset's images as one uint8 tensor (N, 3, 32, 32)."""
    return torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()


def resize_to_double(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 batch (N, 3, H, W) to ``size``x``size`` (bilinear, antialiased) and scale to [0, 1] doubles.

    The batched counterpart of ``Resize(size)`` + ``ToTensor()`` on each PIL image: the resize
    works on uint8 like PIL, then one conversion of the whole batch.
    """
    transform = v2.Compose([v2.Resize((size, size), antialias=True), v2.ToDtype(torch.double, scale=True)])
    return transform(images)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of a batch (N, C, H, W) over N, H, W."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3))
    return mean.tolist(), std.tolist()


@dataclass
class CatCar:
    """The cat vs automobile data, preprocessed once: images (N, 3, S, S) double, labels 0/1."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: list[float]
    std: list[float]
    source: str
    classes: list[str]                      # ["automobile", "cat"]: names of labels 0, 1
    all_classes: list[str]                  # the ten CIFAR-10 class names
    counts: dict[str, list[int]] = field(default_factory=dict)  # per split, all ten classes
    image_size: int = 16

    @property
    def is_sample(self) -> bool:
        return self.source == _data.SAMPLE_NAME

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def load_cat_car(image_size: int = 16, val_fraction: float = 0.2, seed: int = 42, device="cpu",
                 root=None, verbose: bool = True, datasets=None) -> CatCar:
    """CIFAR-10 cat (label 1) vs automobile (label 0), split, resized and normalised once.

    1. training and test splits from :func:`inf265.data.get_cifar10` (or ``datasets=(train, test)``);
    2. validation carved from the training split, stratified over the ten classes, seeded;
    3. only cat and automobile kept, relabelled automobile=0, cat=1;
    4. resized to ``image_size`` and scaled to [0, 1] doubles;
    5. normalised per channel with the mean and std of the **training part only** (cat and
       automobile images, the data the model is fitted on), then moved to ``device``.
    """
    if datasets is None:
        train_ds = _data.get_cifar10(True, root=root, verbose=verbose)
        test_ds = _data.get_cifar10(False, root=root, verbose=verbose)
    else:
        train_ds, test_ds = datasets
    if list(train_ds.classes) != list(test_ds.classes):
        raise ValueError("training and test datasets have different class lists")
    all_train = images_as_tensor(train_ds)
    all_train_y = torch.as_tensor(train_ds.targets)
    tr_idx, va_idx = stratified_split(all_train_y, val_fraction, seed)
    test_y = torch.as_tensor(test_ds.targets)
    n = len(train_ds.classes)
    counts = {"train": class_counts(all_train_y[tr_idx], n), "val": class_counts(all_train_y[va_idx], n),
              "test": class_counts(test_y, n)}
    parts = {}
    for name, (imgs, ys) in {"train": (all_train[tr_idx], all_train_y[tr_idx]),
                             "val": (all_train[va_idx], all_train_y[va_idx]),
                             "test": (images_as_tensor(test_ds), test_y)}.items():
        x, y = select_classes(imgs, ys)
        parts[name] = (resize_to_double(x, image_size), y)
    mean, std = channel_stats(parts["train"][0])
    normalise = v2.Normalize(mean, std)
    out = {}
    for name, (x, y) in parts.items():
        out[f"x_{name}"] = normalise(x).to(device)
        out[f"y_{name}"] = y.to(device)
    return CatCar(**out, mean=mean, std=std, source=getattr(train_ds, "source", _data.OFFICIAL_NAME),
                  classes=[train_ds.classes[c] for c in KEEP], all_classes=list(train_ds.classes),
                  counts=counts, image_size=image_size)


def tensor_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                  seed: int | None = None) -> DataLoader:
    """Mini-batches of preloaded tensors: one fancy-indexing per batch, no per-item Python work.

    With ``shuffle=True`` the order comes from a ``torch.Generator`` seeded with ``seed`` and is
    redrawn every epoch; two loaders made with the same seed give the same batches in the same
    order (what :func:`torch.utils.data.DataLoader` with ``shuffle=True, generator=g`` would give).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    dataset = TensorDataset(x, y)
    if shuffle and seed is None:
        raise ValueError("shuffle=True needs a seed, so that the order is reproducible")
    # The loader draws its per-epoch base seed from this generator, then the sampler its
    # permutation: exactly what DataLoader(shuffle=True, generator=gen) does, and the global RNG
    # is left alone.
    gen = torch.Generator().manual_seed(seed if seed is not None else 0)
    sampler = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
    # batch_size=None: the sampler yields lists of indices and the dataset indexes them at once.
    return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None,
                      generator=gen)


def pil_loader(dataset, mean, std, batch_size: int, image_size: int = 16, seed: int = 0) -> DataLoader:
    """The per-image course style: PIL ``Resize`` + ``ToTensor`` + ``Normalize`` in ``__getitem__``.

    ``dataset`` is a torchvision CIFAR-10 dataset (its ``transform`` is replaced). Used by the
    benchmark as the baseline of :func:`tensor_loader`.
    """
    from torchvision import transforms

    dataset.transform = transforms.Compose([
        transforms.Resize(image_size), transforms.ToTensor(),
        transforms.ConvertImageDtype(torch.double), transforms.Normalize(mean, std)])
    return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def predict_proba(model, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Softmax class probabilities of ``model`` on ``x`` (eval mode, no gradients)."""
    model.eval()
    out = torch.cat([torch.softmax(model(x[i:i + batch_size]), dim=1) for i in range(0, len(x), batch_size)])
    model.train()
    return out


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    return (predict_proba(model, x).argmax(dim=1) == y).double().mean().item()


def confusion_matrix(y_true, y_pred, n_classes: int) -> list[list[int]]:
    """``m[i][j]`` = number of items of true class ``i`` predicted as ``j``."""
    y_true, y_pred = torch.as_tensor(y_true).cpu(), torch.as_tensor(y_pred).cpu()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {tuple(y_true.shape)} vs {tuple(y_pred.shape)}")
    flat = torch.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).tolist()


def precision_recall(matrix, classes) -> tuple[dict[str, float], dict[str, float]]:
    """Per-class precision (column-wise) and recall (row-wise) of a confusion matrix; NaN for 0/0."""
    m = torch.as_tensor(matrix, dtype=torch.double)
    tp = m.diagonal()
    precision = (tp / m.sum(dim=0)).tolist()
    recall = (tp / m.sum(dim=1)).tolist()
    return dict(zip(classes, precision)), dict(zip(classes, recall))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (well behaved near 0 and 1)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
