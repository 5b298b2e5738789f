"""Which checkpoints a run keeps, and how many it holds on disk at most (torch-free: `plan` reads it too).

A run writes `epoch_N.pt` every --save-every-epochs (and at its end), `step_N.pt` every --save-every-steps and at
--stop-after-steps,
and keeps `epoch_latest.pt` on the newest of them (--save-most-recent, a hard link: no space of its own).
After each write, and only once the new file is complete, the retention rules delete older ones:
--delete-previous-checkpoint (open_clip_train's meaning) deletes every checkpoint written before the new one, so
the run keeps its newest only; --keep-step-checkpoints N keeps the N newest step checkpoints (0: all of them) and
leaves epoch checkpoints alone. Checkpoints of a later step than the new one (left by a run resumed from an
earlier file) are never deleted: the run overwrites them as it passes them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

LATEST = "epoch_latest.pt"
_NAME = re.compile(r"(step|epoch)_(\d+)\.pt")


@dataclass(frozen=True)
class Retention:
    keep_step_checkpoints: int = 2  # 0: every step checkpoint is kept
    delete_previous_checkpoint: bool = False
    save_most_recent: bool = True

    @classmethod
    def of(cls, cfg) -> "Retention":
        return cls(int(getattr(cfg, "keep_step_checkpoints", 2)), bool(getattr(cfg, "delete_previous_checkpoint",
                                                                               False)),
                   bool(getattr(cfg, "save_most_recent", True)))

    def describe(self) -> str:
        if self.delete_previous_checkpoint:
            return "the newest checkpoint only"
        steps = "every step checkpoint" if not self.keep_step_checkpoints else \
            f"the newest {self.keep_step_checkpoints} step checkpoint{'s' if self.keep_step_checkpoints > 1 else ''}"
        return f"every epoch checkpoint and {steps}"


def checkpoint_step(name: str, steps_per_epoch: int) -> Optional[tuple[int, str]]:
    """(optimizer steps done, kind) of `step_N.pt` / `epoch_N.pt`; None for any other file (epoch_latest.pt)."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    n = int(m.group(2))
    return (n if m.group(1) == "step" else n * steps_per_epoch), m.group(1)


def to_delete(names: Iterable[str], written: str, steps_per_epoch: int, retention: Retention) -> list[str]:
    """The checkpoint files (names in the run's checkpoints/ folder) that retention deletes once `written` is
    complete."""
    here = checkpoint_step(written, steps_per_epoch)
    if here is None:
        return []
    older = []
    for name in names:
        found = checkpoint_step(name, steps_per_epoch)
        if name != written and found is not None and found[0] <= here[0]:
            older.append((found[0], found[1], name))
    if retention.delete_previous_checkpoint:
        return sorted(name for _, _, name in older)
    keep = retention.keep_step_checkpoints
    if not keep:
        return []
    steps = sorted((s, name) for s, kind, name in older if kind == "step")
    keep_older = keep - 1 if here[1] == "step" else keep  # the new one counts when it is a step checkpoint
    return [name for _, name in (steps[:-keep_older] if keep_older > 0 else steps)]


def save_counts(start: int, end: int, total: int, steps_per_epoch: int, save_every_steps: int,
                save_every_epochs: int = 1) -> tuple[int, int]:
    """(epoch checkpoints, step checkpoints) that steps start+1 .. end of a run of `total` steps write: an epoch
    checkpoint at every `save_every_epochs`-th epoch end (0: none) and at the run's last step or where it stops at
    an epoch end; a step checkpoint every `save_every_steps` where no epoch checkpoint is written, and one where the
    run stops before its end (--stop-after-steps) between epoch ends."""
    def multiples(k: int) -> int:
        return end // k - start // k if k else 0

    epoch_every = steps_per_epoch * save_every_epochs
    at_epoch_end = end > start and end % steps_per_epoch == 0
    extra_epoch = at_epoch_end and not (epoch_every and end % epoch_every == 0)  # the last epoch, or a stop
    epochs = multiples(epoch_every) + extra_epoch
    steps = 0
    if save_every_steps:
        lcm = save_every_steps * epoch_every // _gcd(save_every_steps, epoch_every) if epoch_every else 0
        steps = multiples(save_every_steps) - multiples(lcm) - (extra_epoch and end % save_every_steps == 0)
    if start < end < total and not at_epoch_end and not (save_every_steps and end % save_every_steps == 0):
        steps += 1
    return epochs, steps


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def peak_checkpoints(epochs: int, steps: int, retention: Retention) -> int:
    """The most new checkpoint files on disk at once while `epochs` epoch and `steps` step checkpoints are written
    under `retention` (the file being written counts: older ones go only after it is complete; epoch_latest.pt is
    a hard link to the newest and adds nothing)."""
    if not epochs + steps:
        return 0
    if retention.delete_previous_checkpoint:
        return min(epochs + steps, 2)
    keep = retention.keep_step_checkpoints
    return epochs + (steps if not keep else min(steps, keep + 1))
