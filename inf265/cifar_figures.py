"""Figures of ``gradient_descent.ipynb`` (matplotlib): class counts, examples, confusion matrix, errors."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import plotting  # shared rcParams and the grid of curves

# Text sizes for figures shown at the notebook's width: the notebook draws at 80 dpi, so 11 pt
# here is about 9 pt on a 96-dpi screen at 100 % zoom, the smallest we use.
_READABLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 11,
             "ytick.labelsize": 11, "legend.fontsize": 11}


# Line styles of the learning curves: a colour and a marker per configuration label, the line
# style by learning rate, and markers staggered along each curve, so that curves lying on top of
# each other stay visible.
_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
_LINESTYLES = ["-", "--", ":", "-."]


def curve_label(config: dict) -> str:
    """A configuration's label within its momentum panel: ``"lr=0.01, wd=0.001"``."""
    return f"lr={config['lr']:g}, wd={config['weight_decay']:g}"


def curve_styles(configs: list[dict]) -> dict[str, dict]:
    """Matplotlib line properties of each :func:`curve_label` of ``configs``, distinct per label."""
    lrs = sorted({c["lr"] for c in configs})
    labels = {}
    for c in sorted(configs, key=lambda c: (c["lr"], c["weight_decay"])):
        labels.setdefault(curve_label(c), c["lr"])
    return {label: {"color": _COLOURS[i % len(_COLOURS)], "marker": _MARKERS[i % len(_MARKERS)],
                    "linestyle": _LINESTYLES[lrs.index(lr) % len(_LINESTYLES)], "markersize": 4,
                    "linewidth": 1.4, "markevery": (i % 5, 5)}
            for i, (label, lr) in enumerate(labels.items())}


def learning_curves(configs: list[dict], histories: dict[str, dict[str, list[float]]]):
    """Training loss, training accuracy and validation accuracy per epoch (one row each), one column
    per momentum value.

    ``configs`` are dicts with ``name``, ``lr``, ``momentum`` and ``weight_decay``;
    ``histories[name]`` has ``train_loss``, ``train_acc`` and ``val_acc`` per epoch.
    """
    styles = curve_styles(configs)
    panels = {}
    for mom in sorted({c["momentum"] for c in configs}):
        panels[f"momentum {mom:g}"] = {curve_label(c): _in_percent(histories[c["name"]])
                                       for c in configs if c["momentum"] == mom}
    with plt.rc_context(_READABLE):
        return plotting.curve_grid(panels, styles, keys=("train_loss", "train_acc", "val_acc"),
                                   ylabels=("training loss", "training accuracy (%)",
                                            "validation accuracy (%)"),
                                   width=10.5, height_per_row=2.6)


def _in_percent(history: dict[str, list[float]]) -> dict[str, list[float]]:
    """A history with its accuracies (fractions) in %, as the report's tables give them."""
    return {k: [100 * v for v in vals] if k.endswith("_acc") else vals for k, vals in history.items()}


def class_counts(counts: dict[str, list[int]], classes: list[str], highlight=()):
    """Grouped bars: number of images of each class in each split (``counts[split][class]``)."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = np.arange(len(classes))
    width = 0.8 / len(counts)
    for i, (split, values) in enumerate(counts.items()):
        ax.bar(x + (i - (len(counts) - 1) / 2) * width, values, width, label=split)
    ax.set_xticks(x, [f"{c}*" if c in highlight else c for c in classes], rotation=30)
    ax.set_ylabel("images")
    ax.set_title("CIFAR-10 images per class and split" + (f" (* kept: {', '.join(highlight)})" if highlight else ""))
    ax.set_ylim(0, 1.2 * max(max(v) for v in counts.values()))
    ax.legend(ncols=len(counts), loc="upper right")
    fig.tight_layout()
    return fig


def examples(images: np.ndarray, targets, classes: list[str], per_class: int = 3):
    """A grid with the first ``per_class`` images (N, 32, 32, 3 uint8) of every class, one column each."""
    targets = np.asarray(targets)
    fig, axes = plt.subplots(per_class, len(classes), figsize=(len(classes) * 0.8, per_class * 0.8 + 0.3),
                             squeeze=False)
    for col, name in enumerate(classes):
        idx = np.flatnonzero(targets == col)[:per_class]
        axes[0, col].set_title(name, fontsize=9)
        for row in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if row < len(idx):
                ax.imshow(images[idx[row]], interpolation="nearest")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.05)
    return fig


def confusion_matrix(matrix, classes: list[str], title: str = "test set"):
    """Counts of true (rows) vs predicted (columns) classes, annotated."""
    m = np.asarray(matrix)
    with plt.rc_context(_READABLE):
        fig, ax = plt.subplots(figsize=(5.4, 4.8))
        ax.imshow(m, cmap="Blues")
        ax.grid(False)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, str(m[i, j]), ha="center", va="center",
                        color="white" if m[i, j] > m.max() / 2 else "black", fontsize=18)
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        fig.tight_layout()
    return fig


def most_confident(probs, n: int) -> np.ndarray:
    """Indices of the ``n`` rows of ``probs`` (N, C) with the highest top probability, highest first."""
    probs = np.asarray(probs)
    return np.argsort(-probs.max(axis=1), kind="stable")[:n]


def misclassified(originals: np.ndarray, seen: np.ndarray, true, probs, classes: list[str], n: int = 12,
                  ncols: int = 4):
    """The ``n`` most confident errors, each as a pair: the original image and the input the model saw.

    ``originals`` (N, H, W, 3) uint8 (CIFAR-10's 32x32), ``seen`` (N, h, w, 3) floats in [0, 1]
    (the model's 16x16 input, un-normalised for display), ``true`` (N,) labels and ``probs``
    (N, C) predicted probabilities, all restricted to the misclassified items.
    """
    probs = np.asarray(probs)
    order = most_confident(probs, n)
    nrows = max(1, -(-len(order) // ncols))
    ratios = [r for j in range(ncols) for r in ([1, 1, 0.4] if j < ncols - 1 else [1, 1])]
    height = 2.0 * nrows + 0.4
    fig = plt.figure(figsize=(11, height))
    grid = fig.add_gridspec(nrows, len(ratios), width_ratios=ratios, wspace=0.06, hspace=0.9)
    for k, i in enumerate(order):
        row, col = divmod(k, ncols)
        pred = int(probs[i].argmax())
        pair = [fig.add_subplot(grid[row, 3 * col + j]) for j in (0, 1)]
        for ax, img in zip(pair, (originals[i], seen[i])):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(f"{img.shape[0]}×{img.shape[1]}", fontsize=11, pad=2)
            ax.axis("off")
        pair[0].text(1.03, 1.22, f"true: {classes[int(true[i])]}\npred.: {classes[pred]} {probs[i, pred]:.2f}",
                     transform=pair[0].transAxes, ha="center", va="bottom", fontsize=11)
    fig.suptitle("Most confident test errors: the original (left) and the 16×16 input the model saw (right)",
                 fontsize=12, y=1 + 0.22 / height)
    return fig
