"""Tiny evaluation sets and models written on the fly, shared by the tests/test_eval_*.py modules.

(No tests here: pytest collects this module and finds none.)
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["red", "blue", "green", "small", "large", "striped", "dotted", "shiny", "wooden", "old"]
NOUNS = ["cat", "dog", "car", "boat", "tree", "house", "bird", "chair", "lamp", "cup", "fish", "horse"]


def image_bytes(rng: np.random.Generator, size: int = 40, fmt: str = "PNG") -> bytes:
    """A random image with a colour gradient, so that a random-init model sees distinct inputs."""
    base = rng.uniform(0, 255, size=3)
    ramp = np.linspace(0, 1, size)[:, None, None] * rng.uniform(-120, 120, size=3)
    noise = rng.normal(0, 40, size=(size, size, 3))
    pixels = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, rng: np.random.Generator, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    path.write_bytes(image_bytes(rng, size, fmt))
    return path


def _write_shards(split_dir: Path, samples: list[dict], shards: int) -> None:
    import webdataset as wds
    split_dir.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(samples) // shards)
    for s in range(shards):
        with wds.TarWriter(str(split_dir / f"{s}.tar")) as sink:
            for sample in samples[s * per_shard:(s + 1) * per_shard]:
                sink.write(sample)
    (split_dir / "nshards.txt").write_text(f"{shards}\n")


def write_wds_classification(root: Path, n_classes: int = 12, per_class: int = 3, shards: int = 2, seed: int = 0,
                             templates=("a photo of a {c}.", "a blurry photo of the {c}.")) -> Path:
    """CLIP_benchmark's classification layout: ROOT/test/{0..N-1}.tar (+nshards.txt), classnames, templates."""
    rng = np.random.default_rng(seed)
    samples = [{"__key__": f"s{i:07d}", "png": image_bytes(rng), "cls": i % n_classes}
               for i in range(n_classes * per_class)]
    _write_shards(root / "test", samples, shards)
    (root / "classnames.txt").write_text("\n".join(f"{WORDS[i % len(WORDS)]} {NOUNS[i % len(NOUNS)]}"
                                                   for i in range(n_classes)) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return root


def captions_for(rng: random.Random, n: int) -> list[str]:
    return [f"a {rng.choice(WORDS)} {rng.choice(NOUNS)} next to a {rng.choice(WORDS)} {rng.choice(NOUNS)}"
            for _ in range(n)]


def write_wds_retrieval(root: Path, n_images: int = 24, captions: int = 3, shards: int = 2, seed: int = 0) -> Path:
    """CLIP_benchmark's retrieval layout: image + txt (one caption a line), dataset_type.txt = retrieval."""
    rng, text_rng = np.random.default_rng(seed), random.Random(seed)
    samples = [{"__key__": f"s{i:07d}", "jpg": image_bytes(rng, fmt="JPEG"),
                "txt": "\n".join(captions_for(text_rng, captions))} for i in range(n_images)]
    _write_shards(root / "test", samples, shards)
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root


def export_local_dir(model_name: str, out_dir: Path, seed: int = 0) -> str:
    """A random-init (seeded) open_clip model in open_clip's local-dir format; returns its spec."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from cifd_clip.clip_models import register_model_configs
    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": open_clip.get_model_config(model_name),
           "preprocess_cfg": {"mean": list(model.visual.preprocess_cfg["mean"]),
                              "std": list(model.visual.preprocess_cfg["std"])}}
    (out_dir / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "open_clip_model.safetensors"))
    return f"local-dir:{out_dir}"
