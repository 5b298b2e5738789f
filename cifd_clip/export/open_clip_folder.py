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

from ..file_io import write_atomic, write_text_atomic
from ..output_checks import check_folder_target
from ..errors import UserError
from ..clip_models import read_checkpoint, strip_prefixes

PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
STATE_DICT_FILE = "open_clip_state_dict.pt"
MAP_FILE = "teacher_space_map.pt"  # --space teacher: the map M [D, d] that was folded in, and its teacher
MAP_FORMAT = "cifd_clip.teacher_space_map"
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


SPACES = ("student", "teacher")


def export_student(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                   eval_results: Optional[str | os.PathLike] = None, overwrite: bool = False, *,
                   space: str = "student", teacher_map: str = "learned", teacher_cache: Optional[str] = None,
                   fit_data: Optional[str] = None, fit_samples: int = 4096, license: str = "other") -> Path:
    """Write the export folder for `checkpoint`; returns the folder.

    `space="teacher"`: the towers end in the teacher's width, with the map `teacher_map` (see
    `export.teacher_space`) folded into their final projections."""
    if space not in SPACES:
        raise UserError(f"--space must be one of {', '.join(SPACES)}, got {space!r}")
    ckpt = read_student_checkpoint(checkpoint)
    out = Path(out_dir)
    eval_table = _find_eval_table(checkpoint, eval_results)
    check_folder_target(out, "--out")
    state_dict = {k: v.contiguous() for k, v in strip_prefixes(ckpt["state_dict"]).items()}
    model_cfg, mapping = ckpt["model_cfg"], None
    model_name = str(ckpt.get("model_name") or "student").replace("/", "-")
    if model_name.startswith("local-dir:") or model_name.endswith((".json", ".pt")):
        model_name = "student"
    if space == "teacher":
        from .teacher_space import build_map, fold_into_projections

        mapping = build_map(ckpt, str(checkpoint), teacher_map, cache=teacher_cache, train_data=fit_data,
                            samples=fit_samples)
        state_dict, model_cfg = fold_into_projections(state_dict, model_cfg, mapping.matrix)
        model_name = f"{model_name}-teacher-space"
    prepare_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)

    config = {"model_cfg": model_cfg, "preprocess_cfg": _plain_preprocess(ckpt.get("preprocess_cfg", {}))}
    write_atomic(out / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2)))
    # clone() breaks any storage sharing, which safetensors refuses to write
    write_atomic(out / WEIGHTS_FILE, lambda p: save_file({k: v.clone() for k, v in state_dict.items()}, str(p)))
    write_atomic(out / STATE_DICT_FILE, lambda p: torch.save(state_dict, p))
    write_text_atomic(out / f"{model_name}.json", json.dumps(model_cfg, indent=2))
    files = [CONFIG_FILE, WEIGHTS_FILE, STATE_DICT_FILE, f"{model_name}.json", "README.md"]
    if mapping is not None:
        map_file = {"format": MAP_FORMAT, "format_version": 1, "matrix": mapping.matrix.contiguous(),
                    "kind": mapping.kind, "teacher": mapping.teacher, "fit": mapping.fit}
        write_atomic(out / MAP_FILE, lambda p: torch.save(map_file, p))
        files.append(MAP_FILE)
    write_text_atomic(out / "README.md", model_card(ckpt, checkpoint, model_name, eval_table, model_cfg, mapping,
                                                    license=license))
    write_text_atomic(out / MANIFEST, "\n".join(files) + "\n")
    return out


def read_teacher_space_map(out_dir: str | os.PathLike) -> Optional[dict]:
    """The map a `--space teacher` export folded in ({"matrix", "kind", "teacher", "fit"}), None for another export."""
    from ..file_io import check_format, read_torch_file

    path = Path(out_dir) / MAP_FILE
    if not path.is_file():
        return None
    return check_format(read_torch_file(path, "teacher-space map"), path, "a teacher-space map", MAP_FORMAT, 1)


def _find_eval_table(checkpoint, eval_results) -> Optional[Path]:
    """The markdown results table of `cifd-clip bench` for this checkpoint, when there is one."""
    candidates = []
    if eval_results:
        p = Path(eval_results)
        candidates.append(p / "results.md" if p.is_dir() else p)
    run_dir = Path(checkpoint).resolve().parent.parent
    candidates += [run_dir / "eval" / "results.md", run_dir / "results.md"]
    for p in candidates:
        if p.is_file():
            return p
    if eval_results:
        raise UserError(f"no evaluation results at {eval_results} (expected the results.md of `cifd-clip bench`)")
    return None


def model_card(ckpt: dict, checkpoint, model_name: str, eval_table: Optional[Path], model_cfg: Optional[dict] = None,
               mapping=None, license: str = "other") -> str:
    """Hugging Face front matter, then what the student is, how to load it, its results and its training config,
    with every path relative to the folder that holds the run (`model_card.common_base`)."""
    from .model_card import checkpoint_metrics, common_base, find_eval_json, front_matter, portable

    base = common_base(checkpoint, ckpt.get("config") or {})
    run_cfg = portable(ckpt.get("config") or {}, base)
    model_cfg = model_cfg or ckpt["model_cfg"]
    teacher = run_cfg.get("teacher") or run_cfg.get("cache") or "none (trained without distillation)"
    name = ckpt.get("name") or model_name
    results = checkpoint_metrics(find_eval_json(eval_table), checkpoint)
    eval_text = eval_table.read_text() if eval_table is not None else None
    if eval_text and base:
        eval_text = eval_text.replace(base + "/", "")
    lines = [
        front_matter(name, license, results).rstrip("\n"),
        f"# {name}",
        "",
        "An open_clip student exported by cifd_clip"
        + (" (CIFD distillation)." if run_cfg.get("rdm") or run_cfg.get("cache") else "."),
        "",
        f"- Architecture: `{model_name}` (embedding width {model_cfg.get('embed_dim')})",
        f"- Teacher / embedding cache: `{teacher}`",
        f"- Training data: `{run_cfg.get('train_data', 'unknown')}`",
        f"- Epochs completed: {ckpt.get('epoch', '?')}, optimizer steps: {ckpt.get('step', '?')}",
        f"- Source checkpoint: `{Path(checkpoint).name}`",
        *(teacher_space_section(mapping, ckpt["model_cfg"].get("embed_dim"), base) if mapping is not None else []),
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
        eval_text.strip() if eval_text else "No evaluation results were found for this checkpoint.",
    ]
    if run_cfg:
        lines += ["", "## Training configuration", "```yaml", yaml.safe_dump(run_cfg, sort_keys=False).strip(), "```"]
    return "\n".join(lines) + "\n"


def teacher_space_section(mapping, student_dim, base: Optional[str] = None) -> list[str]:
    from .model_card import portable

    teacher = portable(mapping.teacher, base)
    how = {"ibm-isometric": "the isometric IBM decoder Q the distillation trained (semi-orthogonal, both towers)",
           "identity": "none needed: the run distilled the student's own embeddings into the teacher's (CLIP-KD, "
                       "equal widths)",
           "procrustes": "an orthogonal map fitted after training (Procrustes) on cached student/teacher pairs",
           "lstsq": "a least-squares linear map fitted after training on cached student/teacher pairs"}[mapping.kind]
    lines = ["", "## Embedding space: the teacher's",
             f"This model embeds images and captions into the space of the teacher `{teacher.get('spec')}` "
             f"(`{teacher.get('model_name')}`, weights fingerprint `{teacher.get('fingerprint')}`), width "
             f"{mapping.teacher_dim}: its embeddings can be searched against an index that teacher built. "
             f"The map from the student's own {student_dim}-wide space is folded into both towers' final "
             f"projections ({MAP_FILE} holds it): {how}."]
    if mapping.fit:
        lines.append(f"Fitted on {mapping.fit['pairs']} image and caption pairs; mean cosine to the teacher's "
                     f"embeddings there {mapping.fit['mean_cosine']:.3f}.")
    lines.append("Check it on your own data with `cifd-clip eval --task cross_model_retrieval --gallery-model "
                 "TEACHER` (docs/evaluation.md).")
    return lines


def verify_export(out_dir: str | os.PathLike, checkpoint: str | os.PathLike, atol: float = 1e-5,
                  matrix: Optional[torch.Tensor] = None) -> float:
    """Load the folder through open_clip and compare embeddings with the checkpoint's weights (mapped by
    `matrix` [D, d] for a teacher-space export); the largest difference, relative to the embeddings' size."""
    import open_clip

    from ..clip_models import load_model

    exported, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out_dir}")
    reference = load_model(str(checkpoint)).model
    exported.eval()
    reference.eval()
    size = exported.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, *size, generator=generator)
    tokens = open_clip.get_tokenizer(f"local-dir:{out_dir}")(["a photo of a red circle", "two blue squares"])
    def expected(embedding):
        return embedding if matrix is None else embedding @ matrix.to(embedding.dtype).T

    with torch.no_grad():
        pairs = [(exported.encode_image(images), expected(reference.encode_image(images))),
                 (exported.encode_text(tokens), expected(reference.encode_text(tokens)))]
        diff = max(((got - want).abs().max() / want.abs().max().clamp_min(1.0)).item() for got, want in pairs)
    if matrix is not None:
        # a folded map reassociates a product, (x·P)·Mᵀ against x·(P·Mᵀ): float32 rounding grows with M's norm (a
        # least-squares map's lstsq fold differed by 1.06e-5 on one machine); a wrong fold differs by O(1)
        atol = max(atol, 1e-4 * max(1.0, float(torch.linalg.matrix_norm(matrix.float(), ord=2))))
    if diff > atol:
        raise UserError(f"the export in {out_dir} does not reproduce the checkpoint (max abs difference {diff:.2e})")
    return diff
