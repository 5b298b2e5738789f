"""What the training loop needs of any distiller, CLIP or classification (mdistiller's habit: the distiller owns
everything trainable in a run and turns a batch into named, weighted loss terms)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import UserError


class DistillerBase(nn.Module):
    """What the training loop needs of any distiller (CLIP or classification): a student and a method that are
    trained and checkpointed, frozen parts (teacher, assistants, RDMs) that follow `.to()` but are neither
    parameters nor buffers, and a KD-dropout generator seeded from (seed, step)."""

    def __init__(self, student: nn.Module, method: nn.Module, frozen: dict, seed: int = 0):
        super().__init__()
        self.student = student
        self.method = method
        self._frozen = dict(frozen)
        self.seed = int(seed)
        self._kd_generator = torch.Generator().manual_seed(self.seed)
        self._teaching_generator = torch.Generator().manual_seed(self.seed + 1)  # --rdm-teaching stochastic

    def _frozen_modules(self):
        for value in self._frozen.values():
            for module in (value if isinstance(value, (list, tuple)) else [value]):
                if module is not None:
                    yield module

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for module in self._frozen_modules():
            module._apply(fn)
        return self

    @property
    def find_unused_parameters(self) -> bool:
        return self.method.find_unused_parameters

    def begin_step(self, step: int, total_steps: Optional[int] = None) -> None:
        """KD dropout and stochastic teaching draw from (seed, step), and the curriculum reads step / total: the
        same on every rank and again after a resume."""
        self._kd_generator.manual_seed(self.seed * 1_000_003 + step)
        self._teaching_generator.manual_seed(self.seed * 1_000_033 + step + 7)
        if total_steps:
            self.method.progress = step / total_steps  # --rdm-teaching curriculum reads it

    def post_step(self) -> None:
        pass

    def student_state_dict(self) -> dict:
        return self.student.state_dict()

    def distill_state_dict(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("student.")}

    def migrate(self, distill_state_dict: dict) -> dict:
        """Map the keys of checkpoints written by older versions (none by default)."""
        return distill_state_dict

    def load_states(self, state_dict: dict, distill_state_dict: dict) -> None:
        full = {**{f"student.{k}": v for k, v in state_dict.items()}, **self.migrate(distill_state_dict)}
        own = self.state_dict()
        for key, value in full.items():
            if key in own and tuple(own[key].shape) != tuple(value.shape):
                raise UserError(f"the checkpoint holds weights of another shape than this run's model ({key}: "
                                f"{list(value.shape)} in the checkpoint, {list(own[key].shape)} here); --resume needs "
                                f"a checkpoint of the same --model and loss settings")
        result = self.load_state_dict(full, strict=False)
        if result.missing_keys or result.unexpected_keys:
            key = (result.missing_keys or result.unexpected_keys)[0]
            raise UserError(f"the checkpoint does not fit this run's student/loss set-up (e.g. {key!r} "
                            f"{'missing' if result.missing_keys else 'unexpected'}); check --model and --loss")
