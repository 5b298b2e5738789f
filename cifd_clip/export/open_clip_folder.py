"""Turn a student training checkpoint into files open_clip and CLIP_benchmark load unchanged.

Writes, with no network access (open_clip's own hub helpers need one):
  OUT/open_clip_config.json       {"model_cfg": ..., "preprocess_cfg": ...}  (open_clip `local-dir:` format)
  OUT/open_clip_model.safetensors the student's weights only
  OUT/open_clip_state_dict.pt     the same weights as a bare state_dict, for pretrained=FILE
  OUT/<model_name>.json           the model config, for open_clip.add_model_config when NAME isn't built in
  OUT/README.md                   a model card
IBMs, projections, RDMs, optimizer and scheduler states stay behind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
import yaml
from safetensors.torch import save_file

from ..files import write_atomic, write_text_atomic
from ..outputs import check_folder_target
from ..errors import UserError
from ..towers import read_checkpoint, strip_prefixes

PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
STATE_DICT_FILE = "open_clip_state_dict.pt"
MANIFEST = ".cifd-clip-export"  # the files an export wrote, so that --overwrite removes exactly those


def read_student_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by `cifd-clip train|distill`, or one sentence saying why it isn't one."""
    ckpt = read_checkpoint(path)
    for key in ("model_cfg", "state_dict"):
        if key not in ckpt:
            raise UserError(f"{path} is not a cifd_clip student checkpoint (it has no '{key}'); "
                            f"export takes the checkpoints that `cifd-clip train` and `cifd-clip distill` write")
    cfg = ckpt["model_cfg"]
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise UserError(f"{path} has no usable open_clip model config")
    return ckpt


def _plain_preprocess(preprocess_cfg: dict) -> dict:
    out = {}
    for key in PREPROCESS_KEYS:
        if key in preprocess_cfg and preprocess_cfg[key] is not None:
            value = preprocess_cfg[key]
            out[key] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def prepare_out(out: Path, overwrite: bool) -> None:
    """A new or empty folder; or, with `overwrite`, one whose earlier export's files (named in its manifest) are
    removed first, so that none of them lingers beside the new ones. Files the export did not write are kept."""
    check_folder_target(out, "--out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"--out {out} is not empty; pass --overwrite to replace an earlier export there, or choose "
                        f"a new folder")
    manifest = out / MANIFEST
    if manifest.is_file():
        for name in manifest.read_text().split():
            (out / name).unlink(missing_ok=True)


def export_student(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                   eval_results: Optional[str | os.PathLike] = None, overwrite: bool = False) -> Path:
    """Write the export folder for `checkpoint`; returns the folder."""
    ckpt = read_student_checkpoint(checkpoint)
    out = Path(out_dir)
    eval_table = _find_eval_table(checkpoint, eval_results)
    prepare_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.contiguous() for k, v in strip_prefixes(ckpt["state_dict"]).items()}
    model_name = str(ckpt.get("model_name") or "student").replace("/", "-")
    if model_name.startswith("local-dir:") or model_name.endswith((".json", ".pt")):
        model_name = "student"

    config = {"model_cfg": ckpt["model_cfg"], "preprocess_cfg": _plain_preprocess(ckpt.get("preprocess_cfg", {}))}
    write_atomic(out / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2)))
    # clone() breaks any storage sharing, which safetensors refuses to write
    write_atomic(out / WEIGHTS_FILE, lambda p: save_file({k: v.clone() for k, v in state_dict.items()}, str(p)))
    write_atomic(out / STATE_DICT_FILE, lambda p: torch.save(state_dict, p))
    write_text_atomic(out / f"{model_name}.json", json.dumps(ckpt["model_cfg"], indent=2))
    write_text_atomic(out / "README.md", model_card(ckpt, checkpoint, model_name, eval_table))
    files = [CONFIG_FILE, WEIGHTS_FILE, STATE_DICT_FILE, f"{model_name}.json", "README.md"]
    write_text_atomic(out / MANIFEST, "\n".join(files) + "\n")
    return out


def _find_eval_table(checkpoint, eval_results) -> Optional[str]:
    """The markdown results table of `cifd-clip bench` for this checkpoint, when there is one."""
    candidates = []
    if eval_results:
        p = Path(eval_results)
        candidates.append(p / "results.md" if p.is_dir() else p)
    run_dir = Path(checkpoint).resolve().parent.parent
    candidates += [run_dir / "eval" / "results.md", run_dir / "results.md"]
    for p in candidates:
        if p.is_file():
            return p.read_text()
    if eval_results:
        raise UserError(f"no evaluation results at {eval_results} (expected the results.md of `cifd-clip bench`)")
    return None


def model_card(ckpt: dict, checkpoint, model_name: str, eval_table: Optional[str]) -> str:
    run_cfg = ckpt.get("config") or {}
    teacher = run_cfg.get("teacher") or run_cfg.get("cache") or "none (trained without distillation)"
    lines = [
        f"# {ckpt.get('name') or model_name}",
        "",
        "An open_clip student exported by cifd_clip"
        + (" (CIFD distillation)." if run_cfg.get("rdm") or run_cfg.get("cache") else "."),
        "",
        f"- Architecture: `{model_name}` (embedding width {ckpt['model_cfg'].get('embed_dim')})",
        f"- Teacher / embedding cache: `{teacher}`",
        f"- Training data: `{run_cfg.get('train_data', 'unknown')}`",
        f"- Epochs completed: {ckpt.get('epoch', '?')}, optimizer steps: {ckpt.get('step', '?')}",
        f"- Source checkpoint: `{Path(checkpoint).name}`",
        "",
        "## Loading",
        "```python",
        "import open_clip",
        "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:PATH_TO_THIS_FOLDER')",
        "tokenizer = open_clip.get_tokenizer('local-dir:PATH_TO_THIS_FOLDER')",
        "```",
        f"or `open_clip.add_model_config('{model_name}.json')` then "
        f"`create_model_and_transforms('{model_name}', pretrained='{STATE_DICT_FILE}')`.",
        "CLIP_benchmark: `clip_benchmark eval --model local-dir:PATH_TO_THIS_FOLDER ...`.",
        "",
        "## Evaluation",
        eval_table.strip() if eval_table else "No evaluation results were found for this checkpoint.",
    ]
    if run_cfg:
        lines += ["", "## Training configuration", "```yaml", yaml.safe_dump(run_cfg, sort_keys=False).strip(), "```"]
    return "\n".join(lines) + "\n"


def verify_export(out_dir: str | os.PathLike, checkpoint: str | os.PathLike, atol: float = 1e-5) -> float:
    """Load the folder through open_clip and compare embeddings with the checkpoint's weights."""
    import open_clip

    from ..towers import load_model

    exported, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out_dir}")
    reference = load_model(str(checkpoint)).model
    exported.eval()
    reference.eval()
    size = exported.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, *size, generator=generator)
    tokens = open_clip.get_tokenizer(f"local-dir:{out_dir}")(["a photo of a red circle", "two blue squares"])
    with torch.no_grad():
        diff = max((exported.encode_image(images) - reference.encode_image(images)).abs().max().item(),
                   (exported.encode_text(tokens) - reference.encode_text(tokens)).abs().max().item())
    if diff > atol:
        raise UserError(f"the export in {out_dir} does not reproduce the checkpoint (max abs difference {diff:.2e})")
    return diff
