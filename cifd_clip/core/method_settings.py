"""What both paths' method settings share (torch-free): a setting the chosen --loss does not read is refused."""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError


def refuse_unread_settings(settings, settings_class: type, reads) -> None:
    """ConfigError naming the first field of `settings_class` (a stage's Config may hold more) that differs from
    its default although `settings.loss` does not read it (`reads`: the fields its METHODS row lists)."""
    used = set(reads)
    for f in dataclasses.fields(settings_class):
        if f.name == "loss" or f.name in used:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if getattr(settings, f.name) != default:
            raise ConfigError(f"--{f.name.replace('_', '-')} is not used by --loss {settings.loss}; remove it or "
                              f"pick a loss that uses it")
