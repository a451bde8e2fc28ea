"""Figures of ``gradient_descent.ipynb`` (matplotlib): class counts, examples, confusion matrix, errors."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from cycler import cycler

from . import plotting  # shared rcParams and learning_curves


def learning_curves(histories: dict[str, dict[str, list[float]]]):
    """Training loss and validation accuracy per epoch, one line per configuration.

    :func:`inf265.plotting.learning_curves` with up to 20 distinct colours (and line styles) and
    the legend outside the panels, so that a dozen configurations stay readable.
    """
    styles = cycler(color=plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2]) + \
        cycler(linestyle=["-"] * 10 + ["--"] * 10)
    with plt.rc_context({"axes.prop_cycle": styles}):
        fig = plotting.learning_curves(histories)
    fig.set_size_inches(13, 4)
    axes = fig.axes
    axes[-1].get_legend().remove()
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


def class_counts(counts: dict[str, list[int]], classes: list[str], highlight=()):
    """Grouped bars: number of images of each class in each split (``counts[split][class]``)."""
    fig, ax = plt.subplots(figsize=(10, 3.8))
    x = np.arange(len(classes))
    width = 0.8 / len(counts)
    for i, (split, values) in enumerate(counts.items()):
        ax.bar(x + (i - (len(counts) - 1) / 2) * width, values, width, label=split)
    ax.set_xticks(x, [f"{c}*" if c in highlight else c for c in classes], rotation=30)
    ax.set_ylabel("images")
    ax.set_title("CIFAR-10 images per class and split" + (" (* kept: cat vs automobile)" if highlight else ""))
    ax.set_ylim(0, 1.2 * max(max(v) for v in counts.values()))
    ax.legend(ncols=len(counts), loc="upper right")
    fig.tight_layout()
    return fig


def examples(images: np.ndarray, targets, classes: list[str], per_class: int = 8):
    """A grid with the first ``per_class`` images (N, 32, 32, 3 uint8) of every class, one row each."""
    targets = np.asarray(targets)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95))
    for row, name in enumerate(classes):
        idx = np.flatnonzero(targets == row)[:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(idx):
                ax.imshow(images[idx[col]], interpolation="nearest")
        axes[row, 0].text(-4, 16, name, ha="right", va="center", fontsize=9)
    fig.subplots_adjust(left=0.15, wspace=0.05, hspace=0.05)
    return fig


def confusion_matrix(matrix, classes: list[str], title: str = "test set"):
    """Counts of true (rows) vs predicted (columns) classes, annotated."""
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(m, cmap="Blues")
    ax.grid(False)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black", fontsize=12)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def misclassified(images: np.ndarray, true, probs, classes: list[str], n: int = 16, ncols: int = 8):
    """The ``n`` most confident errors: image, true class, predicted class and its probability.

    ``images`` (N, H, W, 3) uint8, ``true`` (N,) labels, ``probs`` (N, C) predicted probabilities,
    all restricted to the misclassified items.
    """
    probs = np.asarray(probs)
    order = np.argsort(-probs.max(axis=1), kind="stable")[:n]
    nrows = max(1, -(-len(order) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.3, nrows * 1.85), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        pred = int(probs[i].argmax())
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(f"true {classes[int(true[i])]}\npred {classes[pred]} {probs[i, pred]:.2f}", fontsize=7)
    fig.suptitle("most confident test errors (predicted probability)", fontsize=9)
    fig.tight_layout()
    return fig
