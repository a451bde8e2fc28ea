"""Progress over a batch: one tqdm bar (elapsed time, time left) with each finished student printed
as lines above it on a terminal; plain lines, no bar, when the output is not a terminal (CI, logs)."""
from __future__ import annotations

import sys

from tqdm import tqdm


class Bar:
    def __init__(self, total: int, stream=None):
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.count, self.total = 0, total
        self.bar = tqdm(total=total, unit="submission", file=self.stream, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]") if self.tty else None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def done(self, lines: list[str]) -> None:
        """One more submission graded: its lines above the bar (or as they are, with a counter)."""
        self.count += 1
        if self.bar is None:
            lines = [f"[{self.count}/{self.total}] {lines[0]}", *lines[1:]] if lines else lines
            print("\n".join(lines), file=self.stream, flush=True)
            return
        if lines:
            self.bar.write("\n".join(lines), file=self.stream)
        self.bar.update(1)
