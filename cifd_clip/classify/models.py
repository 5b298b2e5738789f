"""Classifier specs, named the way the CLIP side names open_clip models: a zoo name (`resnet8x4`,
`resnet18`, `timm:NAME`), `NAME@FILE` (weights from a file: ours, a bare state_dict, or a torchvision/timm one),
or one of our checkpoints on its own (it records its model)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError
from ..file_io import read_torch_file
from .zoo import ClassifierNet, ExternalNet, build_classifier

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass
class LoadedClassifier:
    net: ClassifierNet
    name: str  # zoo name
    num_classes: int
    spec: str

    def model_cfg(self, image_size: int, kind: str) -> dict:
        return {"classifier": self.name, "num_classes": self.num_classes, "image_size": image_size,
                "data_kind": kind, "feature_dim": self.net.feature_dim}


def _state_dict_of(obj: dict, path) -> dict:
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} holds no tensor state_dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _load_into(net: ClassifierNet, sd: dict, path, spec: str) -> None:
    if isinstance(net, ExternalNet) and not any(k.startswith(("net.", "fc.")) for k in sd):
        # a torchvision / timm state_dict: its head keys sit beside the backbone's
        head = {k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith(("fc.", "classifier.", "head."))}
        sd = {**{f"net.{k}": v for k, v in sd.items() if not k.startswith(("fc.", "classifier.", "head."))},
              **{f"fc.{k}": v for k, v in head.items()}}
    try:
        result = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), "shapes differ")
        raise UserError(f"weights {path} do not fit {spec}: {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        key = (result.missing_keys or result.unexpected_keys)[0]
        raise UserError(f"weights {path} do not fit {spec} ({len(result.missing_keys)} missing, "
                        f"{len(result.unexpected_keys)} unexpected keys, e.g. {key})")


def load_classifier(spec: str, pretrained: Optional[str] = None, num_classes: Optional[int] = None) -> LoadedClassifier:
    spec = str(spec).strip()
    if not spec:
        raise UserError("empty model spec")
    name, weights = (spec.split("@", 1) + [None])[:2] if "@" in spec else (spec, pretrained)
    if "@" in spec and pretrained:
        raise UserError(f"model spec {spec} names its weights already; drop --pretrained {pretrained}")
    path = Path(name)
    if path.suffix in WEIGHT_SUFFIXES or path.is_file():
        ckpt = read_torch_file(path, "checkpoint file")
        cfg = ckpt.get("model_cfg") if isinstance(ckpt, dict) else None
        if not isinstance(cfg, dict) or "classifier" not in cfg:
            raise UserError(f"{path} is not a classifier checkpoint of cifd-clip (no model_cfg naming a classifier); "
                            f"give the architecture too: NAME@{path}")
        net = build_classifier(cfg["classifier"], int(cfg["num_classes"]))
        _load_into(net, _state_dict_of(ckpt, path), path, spec)
        return LoadedClassifier(net, cfg["classifier"], int(cfg["num_classes"]), spec)
    if num_classes is None and weights:
        ckpt = read_torch_file(weights, "weights file")
        head = [v for k, v in _state_dict_of(ckpt, weights).items() if k.endswith(("fc.weight", "classifier.weight"))]
        num_classes = int(head[-1].shape[0]) if head else None
    net = build_classifier(name, num_classes or 100)
    if weights:
        if Path(weights).is_dir():
            raise UserError(f"weights {weights} is a folder; give a checkpoint file")
        _load_into(net, _state_dict_of(read_torch_file(weights, "weights file"), weights), weights, spec)
    return LoadedClassifier(net, name, net.num_classes, spec)


def export_state_dict(loaded: LoadedClassifier) -> dict:
    """The weights as the architecture's own constructor loads them: our zoo's keys, or for a torchvision /
    timm model its original keys (backbone plus its head under `fc.` / `classifier.` / `head.`)."""
    net = loaded.net
    if isinstance(net, ExternalNet):
        head_name = "fc" if hasattr(net.net, "fc") else ("classifier" if hasattr(net.net, "classifier") else "head")
        sd = {k: v for k, v in net.net.state_dict().items()}
        sd.update({f"{head_name}.{k}": v for k, v in net.fc.state_dict().items()})
        return sd
    return net.state_dict()
