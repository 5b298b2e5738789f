"""Training progress for a person: a live bar on a terminal, a log line now and then otherwise.

Off a terminal (a log file, a CI job, a SLURM output) a progress bar would write a carriage-return line per
step — one 100 kB line for a few hundred steps — so there the loop logs about every 5% of the run instead.
With the bar on a terminal, those lines still reach the run's out.log (runlog.py), not the terminal.
"""
from __future__ import annotations

import logging
import sys
import time

from ..runlog import FILE_ONLY

log = logging.getLogger("cifd_clip.progress")


class Progress:
    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, stream=None, lines: int = 20):
        self.total, self.enabled = total, enabled
        stream = stream or sys.stderr
        self.interactive = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.every = max(1, total // lines)
        self.started = time.time()
        self.first = initial
        self.bar = None
        if self.interactive:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=stream)

    def update(self, step: int, *, loss: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4g}", samples_s=f"{samples_per_s:.1f}")
        if step % self.every == 0 or step == self.total:
            done = step - self.first
            elapsed = time.time() - self.started
            left = elapsed / done * (self.total - step) if done else 0.0
            log.info("step %d/%d (%.0f%%): loss %.4g, %.1f samples/s, about %.0f s left", step, self.total,
                     100 * step / self.total, loss, samples_per_s, left,
                     extra=FILE_ONLY if self.bar is not None else None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
