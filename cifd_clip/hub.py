"""Pretrained weights from the Hugging Face Hub (open_clip's `NAME@TAG` and `hf-hub:ORG/REPO`), offline-aware.

Whether the network may be used is the hub's own decision, never a probe of ours: weights already in the cache
(`cache_dir`, as open_clip's --cache-dir, or the Hugging Face cache) are loaded without the network; otherwise,
with `HF_HUB_OFFLINE` set, one sentence says what is missing; otherwise open_clip downloads them through
huggingface_hub, which honours `HF_ENDPOINT` (a mirror), proxies and tokens, and a failed download is one
sentence too.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Optional

import open_clip

from .errors import UserError

HF_HUB = "hf-hub:"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1/ON/YES/TRUE), now or when it was imported."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE") or \
        bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _offline():
    """Serve everything from the local cache: huggingface_hub reads HF_HUB_OFFLINE once, at import."""
    from huggingface_hub import constants

    previous_env, previous_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous_const
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env


def _cached(repo_id: str, filenames, cache_dir: Optional[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache_dir), str) for f in filenames)


def _where(cache_dir: Optional[str]) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def _download_failed(what: str, error: BaseException) -> UserError:
    from huggingface_hub import constants

    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return UserError(f"could not download {what} from {constants.ENDPOINT} ({first}); download it where the hub is "
                     f"reachable (or set HF_ENDPOINT to a mirror), or pass a local weights file instead")


def _missing_offline(what: str, cache_dir: Optional[str]) -> UserError:
    return UserError(f"no copy of {what} is in the local cache ({_where(cache_dir)}) and HF_HUB_OFFLINE is set: download it "
                     f"where the hub is reachable (or pass --cache-dir to a cache that holds it), or pass a local "
                     f"weights file instead")


def weights_are_cached(name: str, tag: str, cache_dir: Optional[str] = None) -> bool:
    """Whether open_clip would find NAME@TAG's weights on disk (Hugging Face cache or its URL cache)."""
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    hub = cfg.get("hf_hub", "")
    if hub:
        model_id, filename = os.path.split(hub)  # "org/model/" names no file: open_clip's default names
        if _cached(model_id, [filename] if filename else WEIGHT_FILES, cache_dir):
            return True
    url = cfg.get("url", "")
    url_cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "clip"
    return bool(url) and (url_cache / os.path.basename(url)).is_file()


def _create(name: str, cache_dir: Optional[str], **kwargs):
    return open_clip.create_model_and_transforms(name, cache_dir=cache_dir, **kwargs)


def create_pretrained(name: str, tag: str, *, device, precision: str, aug_cfg, cache_dir: Optional[str] = None):
    """open_clip's (model, preprocess_train, preprocess_val) for NAME@TAG, by the module docstring's rules."""
    common = dict(pretrained=tag, device=device, precision=precision, aug_cfg=aug_cfg)
    if weights_are_cached(name, tag, cache_dir):
        with _offline():
            return _create(name, cache_dir, **common)
    if hub_offline():
        raise _missing_offline(f"{name}@{tag}'s weights", cache_dir)
    try:
        return _create(name, cache_dir, **common)
    except (OSError, RuntimeError, ValueError) as e:  # requests' and huggingface_hub's errors are OSErrors
        raise _download_failed(f"{name}@{tag}'s weights", e) from None


def hub_config(spec: str, cache_dir: Optional[str] = None) -> dict:
    """The open_clip_config.json of an `hf-hub:` model ({"model_cfg", "preprocess_cfg"})."""
    from huggingface_hub import hf_hub_download

    repo = spec[len(HF_HUB):]
    if not repo or "/" not in repo:
        raise UserError(f"{spec} is not an hf-hub:ORG/REPO name")
    try:
        if _cached(repo, [CONFIG_FILE], cache_dir):
            with _offline():
                path = hf_hub_download(repo, CONFIG_FILE, cache_dir=cache_dir)
        elif hub_offline():
            raise _missing_offline(spec, cache_dir)
        else:
            path = hf_hub_download(repo, CONFIG_FILE, cache_dir=cache_dir)
    except UserError:
        raise
    except (OSError, RuntimeError, ValueError) as e:
        raise _download_failed(spec, e) from None
    return json.loads(Path(path).read_text())


def create_from_hub(spec: str, *, device, precision: str, aug_cfg, cache_dir: Optional[str] = None):
    """(model, preprocess_train, preprocess_val, tokenizer, model_cfg) for `hf-hub:ORG/REPO`, by the module
    docstring's rules."""
    repo = spec[len(HF_HUB):]
    model_cfg = hub_config(spec, cache_dir)["model_cfg"]  # a missing or unreachable repo: one sentence, first
    common = dict(device=device, precision=precision, aug_cfg=aug_cfg)

    def build():
        model, pp_train, pp_val = _create(spec, cache_dir, **common)
        return model, pp_train, pp_val, open_clip.get_tokenizer(spec, cache_dir=cache_dir), model_cfg

    if _cached(repo, WEIGHT_FILES, cache_dir):
        with _offline():
            return build()
    if hub_offline():
        raise _missing_offline(f"{spec}'s weights", cache_dir)
    try:
        return build()
    except (OSError, RuntimeError, ValueError) as e:
        raise _download_failed(f"{spec}'s weights", e) from None
