"""Load open_clip models from any spec a user has, and wrap a frozen teacher.

Model specs (wherever a model is named):
  - `NAME`                 an open_clip config name (built in, or ours in model_configs/), random init
  - `NAME@TAG`             open_clip pretrained tag (downloaded into `cache_dir` or the Hugging Face cache once; a
                           copy already there is used without the network)
  - `hf-hub:ORG/REPO`      a model on the Hugging Face Hub in open_clip's format (config + weights), as open_clip
                           names it; cached the same way
  - `NAME@FILE`, or NAME with `pretrained=FILE`: a local checkpoint (open_clip training checkpoint
                           dict or bare state_dict, .pt/.pth/.bin/.safetensors)
  - `FILE.pt`              one of our checkpoints, which carry their model config
  - `local-dir:PATH`       open_clip's folder format (open_clip_config.json + weights)
  - `PATH.json`            the user's own model config (registered with open_clip under the file's stem)
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import open_clip
import torch
from torch import nn

from .errors import UserError
from .file_io import read_json_file, read_torch_file

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
PREFIXES = ("module.", "_orig_mod.")


_registered = False


def register_model_configs() -> None:
    """Make our small configs (model_configs/*.json) known to open_clip by name (once per process)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


@dataclass
class LoadedCLIP:
    """An open_clip model with everything needed to feed it raw images and strings."""

    model: nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Callable
    model_name: str
    model_cfg: dict
    preprocess_cfg: dict
    spec: str
    extra: dict = field(default_factory=dict)

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])


def same_inputs(a: LoadedCLIP, b: LoadedCLIP) -> bool:
    """Whether two towers turn a raw sample into the same tensors: the same eval preprocessing (open_clip builds
    it from `preprocess_cfg` alone) and the same tokenizer (built from the text config's tokenizer fields)."""
    def tokenizer_key(tower: LoadedCLIP) -> tuple:
        text = tower.model_cfg.get("text_cfg", {})
        return (type(tower.tokenizer), getattr(tower.tokenizer, "context_length", None), text.get("hf_tokenizer_name"),
                json.dumps(text.get("tokenizer_kwargs") or {}, sort_keys=True))
    return a.preprocess_cfg == b.preprocess_cfg and tokenizer_key(a) == tokenizer_key(b)


def strip_prefixes(state_dict: dict) -> dict:
    """Drop DDP's `module.` and torch.compile's `_orig_mod.` wherever they lead a key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint file safely (weights_only); returns the raw object as a dict."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file
        try:
            return {"state_dict": load_file(str(path))}
        except Exception:  # noqa: BLE001 - SafetensorError and friends: one sentence
            raise UserError(f"could not read checkpoint {path}: it is not a safetensors file, or it is truncated") \
                from None
    obj = read_torch_file(path, "checkpoint file")
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict or checkpoint dict")
    return obj


def read_state_dict(path: str | os.PathLike) -> dict:
    """The model weights of a checkpoint file: unwraps `state_dict`, strips DDP/compile prefixes."""
    obj = read_checkpoint(path)
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"checkpoint {path} has no tensor state_dict")
    return strip_prefixes(sd)


HF_HUB = "hf-hub:"
_config_folder: Optional[Path] = None


def _register_cfg(model_cfg: dict, hint: str) -> str:
    """Register a config dict with open_clip under a name derived from its content; returns the name.

    open_clip registers files and rereads them on every later registration, so the file stays for the life of
    the process, in one temporary folder that is removed at exit."""
    global _config_folder
    digest = hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:10]
    name = f"{hint}-{digest}" if hint else f"cfg-{digest}"
    if open_clip.get_model_config(name) is None:
        if _config_folder is None:
            _config_folder = Path(tempfile.mkdtemp(prefix="cifd_cfg_"))
            atexit.register(shutil.rmtree, _config_folder, ignore_errors=True)
        (_config_folder / f"{name}.json").write_text(json.dumps(model_cfg))
        open_clip.add_model_config(_config_folder / f"{name}.json")
    return name


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "Model initialized randomly" when it builds a model without weights; when we load the
    user's weights right after, that warning is false."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _known_names_hint(name: str) -> str:
    close = [m for m in open_clip.list_models() if name.lower()[:4] in m.lower()][:6]
    return f" (similar: {', '.join(close)})" if close else " (see `open_clip.list_models()`)"


def _load_weights_into(model: nn.Module, path: str, spec: str) -> None:
    sd = read_state_dict(path)
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches raise instead of being reported
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), "shapes differ")
        raise UserError(f"checkpoint {path} does not fit model {spec}: {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[0]})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[0]})")
        raise UserError(f"checkpoint {path} does not fit model {spec}: " + " and ".join(parts))


def _create(name: str, device, precision: str, aug_cfg, **kwargs):
    try:
        return open_clip.create_model_and_transforms(name, device=device, precision=precision, aug_cfg=aug_cfg,
                                                     **kwargs)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError, OSError) as e:
        raise UserError(f"open_clip could not build model {name}: {str(e).splitlines()[0][:300]}") from None


def load_model(spec: str, pretrained: Optional[str] = None, device: str | torch.device = "cpu",
               precision: str = "fp32", aug_cfg: Optional[dict] = None, cache_dir: Optional[str] = None) -> LoadedCLIP:
    """Build an open_clip model from any spec (see module doc) and its transforms and tokenizer. `cache_dir`:
    where downloaded weights go and are looked for (open_clip's --cache-dir; default the Hugging Face cache)."""
    register_model_configs()
    spec = str(spec).strip()
    if not spec:
        raise UserError("empty model spec")
    if spec.startswith(HF_HUB):
        return _load_from_hub(spec, pretrained, device, precision, aug_cfg, cache_dir)
    if spec.startswith("local-dir:"):
        return _load_local_dir(spec, pretrained, device, precision, aug_cfg)

    name, tag = spec, pretrained
    if "@" in spec:
        name, tag = spec.split("@", 1)
        if pretrained:
            raise UserError(f"model spec {spec} names its weights already; drop --pretrained {pretrained}")
    name, tag = _resolve_model_name(name, tag)
    extra: dict[str, Any] = {}
    weights_file = _resolve_weights(name, tag, extra)
    if "pretrained_tag" in extra:
        from .hub import create_pretrained

        model, pp_train, pp_val = create_pretrained(name, extra["pretrained_tag"], device=device, precision=precision,
                                                    aug_cfg=aug_cfg, cache_dir=cache_dir)
    elif weights_file:
        quiet = _DropRandomInitWarning()
        logging.getLogger().addFilter(quiet)
        try:
            model, pp_train, pp_val = _create(name, device, precision, aug_cfg)
        finally:
            logging.getLogger().removeFilter(quiet)
        _load_weights_into(model, weights_file, f"{name}")
        extra["weights_file"] = weights_file
    else:
        model, pp_train, pp_val = _create(name, device, precision, aug_cfg)
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedCLIP(model, pp_train, pp_val, tokenizer, name, open_clip.get_model_config(name),
                 dict(model.visual.preprocess_cfg), spec, extra)


def _load_from_hub(spec, pretrained, device, precision, aug_cfg, cache_dir) -> LoadedCLIP:
    from .hub import create_from_hub

    if pretrained:
        raise UserError(f"{spec} brings its own weights; drop --pretrained {pretrained}")
    model, pp_train, pp_val, tokenizer, model_cfg = create_from_hub(spec, device=device, precision=precision,
                                                                    aug_cfg=aug_cfg, cache_dir=cache_dir)
    return LoadedCLIP(model, pp_train, pp_val, tokenizer, spec, model_cfg, dict(model.visual.preprocess_cfg), spec,
                 {"hf_hub": spec})


def _load_local_dir(spec, pretrained, device, precision, aug_cfg) -> LoadedCLIP:
    folder = Path(spec[len("local-dir:"):])
    if not (folder / "open_clip_config.json").is_file():
        raise UserError(f"{folder} is not an open_clip model folder (no open_clip_config.json in it)")
    model, pp_train, pp_val = _create(spec, device, precision, aug_cfg)
    model_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    tokenizer = open_clip.get_tokenizer(spec)
    if pretrained:
        _load_weights_into(model, pretrained, spec)
    return LoadedCLIP(model, pp_train, pp_val, tokenizer, spec, model_cfg, dict(model.visual.preprocess_cfg), spec)


def _resolve_model_name(name: str, tag: Optional[str]) -> tuple[str, Optional[str]]:
    """(open_clip model name, weights tag or file) for a name, a model config .json or a checkpoint file."""
    path = Path(name)
    if path.is_dir():
        raise UserError(f"{name} is a directory; to load an open_clip model folder write local-dir:{name}")
    if path.suffix == ".json":
        if not path.is_file():
            raise UserError(f"model config file {name} does not exist")
        cfg = read_json_file(path, "model config file")
        if not isinstance(cfg, dict):
            raise UserError(f"model config file {name} holds a JSON {type(cfg).__name__}, not an object with "
                            f"embed_dim, vision_cfg and text_cfg")
        cfg = cfg.get("model_cfg", cfg)
        if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise UserError(f"model config file {name} needs the keys embed_dim, vision_cfg and text_cfg")
        return _register_cfg(cfg, path.stem), tag
    if path.suffix in WEIGHT_SUFFIXES:
        ckpt = read_checkpoint(path)
        if "model_cfg" not in ckpt:
            raise UserError(f"checkpoint {path} does not record its model config; name the model too: NAME@{path}")
        name = ckpt.get("model_name") if open_clip.get_model_config(ckpt.get("model_name") or "") == ckpt["model_cfg"] \
            else _register_cfg(ckpt["model_cfg"], "ckpt")
        return name, str(path)
    if open_clip.get_model_config(name) is None:
        if path.is_file():
            raise UserError(f"{name} is a {path.suffix or 'plain'} file, not a model: give an open_clip model name, "
                            f"NAME@WEIGHTS, a checkpoint (.pt/.pth/.bin/.safetensors), local-dir:FOLDER or a "
                            f"model config .json")
        if os.sep in name or name.startswith("."):
            raise UserError(f"model {name} does not exist (no such file)")
        raise UserError(f"unknown model name {name}{_known_names_hint(name)}")
    return name, tag


def _resolve_weights(name: str, tag: Optional[str], extra: dict) -> Optional[str]:
    """The weights file a tag names (None: none, or a pretrained tag, then recorded in `extra`)."""
    if not tag:
        return None
    if Path(tag).is_dir():
        raise UserError(f"weights {tag} is a folder; give a checkpoint file (or local-dir:{tag} as the model "
                        f"if it is an open_clip export)")
    if Path(tag).is_file():
        return tag
    if tag in open_clip.list_pretrained_tags_by_model(name):
        extra["pretrained_tag"] = tag
        return None
    if os.sep in tag or Path(tag).suffix in WEIGHT_SUFFIXES:
        raise UserError(f"checkpoint file {tag} does not exist")
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise UserError(f"{tag} is neither a file nor a pretrained tag of {name}"
                    + (f" (tags: {', '.join(tags)})" if tags else " (it has no pretrained tags)"))


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights: caches record it so another teacher can't reuse them."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Teacher(nn.Module):
    """A frozen open_clip model: no gradients, always in eval mode, with its own preprocess and tokenizer.

    Like mdistiller's distillers, it ignores `.train()` from an enclosing module so that dropout
    and batch-norm statistics of the teacher never change during distillation.
    """

    def __init__(self, tower: LoadedCLIP, normalize: bool = True):
        super().__init__()
        self.tower = tower
        self.model = tower.model
        self.normalize = normalize
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):
        super().train(False)
        return self

    @property
    def preprocess(self):
        return self.tower.preprocess_val

    @property
    def tokenizer(self):
        return self.tower.tokenizer

    @property
    def embed_dim(self) -> int:
        return self.tower.embed_dim

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, normalize=self.normalize)

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=self.normalize)


def load_teacher(spec: str, pretrained: Optional[str] = None, device="cpu", precision="fp32",
                 normalize: bool = True, cache_dir: Optional[str] = None) -> Teacher:
    return Teacher(load_model(spec, pretrained, device=device, precision=precision, cache_dir=cache_dir),
                   normalize=normalize)


# ---------------------------------------------------------------- GPU speed settings of a trained model

def is_convolutional(model: nn.Module) -> bool:
    """A model with more than one 2-d convolution (a ResNet or CNN); a ViT has only its patch embedding."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def has_grad_checkpointing(model: nn.Module) -> bool:
    return callable(getattr(model, "set_grad_checkpointing", None))


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> bool:
    """open_clip's (and timm's) gradient checkpointing: the transformer blocks are recomputed in the backward pass
    (open_clip's ModifiedResNet has none: an RN student checkpoints its text tower only). False if the model
    has no such switch."""
    if not has_grad_checkpointing(model):
        return False
    model.set_grad_checkpointing(enabled)
    return True


def compile_towers(model: nn.Module, **compile_kwargs) -> list[str]:
    """torch.compile a CLIP model's image and text towers (or a whole classifier) in place.

    In place (`nn.Module.compile`), so the state_dict keys stay as they were (no `_orig_mod.` prefix) and DDP,
    the optimizer and the checkpoints see the same module. A CLIP model is trained through encode_image/encode_text,
    which call the towers, not the model's own forward, so it is the towers that are compiled; the loss code around
    them (IBM noise, rounding, gathering) stays eager. Returns the names of the compiled modules."""
    names = []
    if callable(getattr(model, "encode_image", None)):
        for name in ("visual", "transformer", "text"):  # CLIP: visual + transformer; CustomTextCLIP: visual + text
            tower = getattr(model, name, None)
            if isinstance(tower, nn.Module):
                tower.compile(**compile_kwargs)
                names.append(name)
    else:
        model.compile(**compile_kwargs)
        names.append(type(model).__name__)
    return names
