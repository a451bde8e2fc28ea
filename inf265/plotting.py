"""Plotting helpers shared by the notebooks (matplotlib, one small function per figure type)."""
from __future__ import annotations

import matplotlib.pyplot as plt

plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3,
                     "svg.hashsalt": "inf265"})


def learning_curves(histories: dict[str, dict[str, list[float]]], keys=("train_loss", "val_acc"),
                    titles=("training loss", "validation accuracy")):
    """One panel per key, one line per configuration: ``histories[config][key]`` per epoch."""
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4))
    axes = list(axes) if len(keys) > 1 else [axes]
    for ax, key, title in zip(axes, keys, titles):
        for name, hist in histories.items():
            ax.plot(range(1, len(hist[key]) + 1), hist[key], label=name)
        ax.set_xlabel("epoch")
        ax.set_title(title)
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    return fig
