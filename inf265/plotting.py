"""Plotting helpers shared by the notebooks (matplotlib, one small function per figure type)."""
from __future__ import annotations

import matplotlib.pyplot as plt

plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3,
                     "svg.hashsalt": "inf265"})


def curve_grid(panels: dict[str, dict[str, dict[str, list[float]]]], styles: dict[str, dict],
               keys=("train_loss", "val_acc"), ylabels=("training loss", "validation accuracy"),
               width: float = 8.0, height_per_row: float = 2.4):
    """Curves per epoch in a grid: one row per ``key``, one column per panel, one shared legend.

    ``panels[title][label][key]`` is a list of values per epoch; ``styles[label]`` holds the
    matplotlib line properties of ``label`` (the same in every panel). Rows share their y axis,
    so that panels can be compared at a glance.
    """
    fig, axes = plt.subplots(len(keys), len(panels), figsize=(width, height_per_row * len(keys) + 0.9),
                             sharex=True, sharey="row", squeeze=False)
    for col, (title, series) in enumerate(panels.items()):
        axes[0, col].set_title(title)
        for row, key in enumerate(keys):
            for label, hist in series.items():
                axes[row, col].plot(range(1, len(hist[key]) + 1), hist[key], label=label, **styles[label])
        axes[-1, col].set_xlabel("epoch")
    for row, ylabel in enumerate(ylabels):
        axes[row, 0].set_ylabel(ylabel)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    ordered = [label for label in styles if label in handles]
    fig.legend([handles[k] for k in ordered], ordered, loc="lower center", ncols=min(3, len(ordered)),
               fontsize=plt.rcParams["legend.fontsize"], frameon=False)
    legend_rows = -(-len(ordered) // 3)
    fig.tight_layout(rect=(0, 0.025 + 0.025 * legend_rows, 1, 1))
    return fig
