"""A student that embeds into its teacher's space: a linear map M [D, d] folded into its final projections.

open_clip normalises what `encode_image` / `encode_text` return, so a bias-free linear map of the student's
embedding w changes only its final projection: the exported model computes normalize(M·w), which for a
semi-orthogonal M (orthonormal columns) is exactly M·w/‖w‖. Where M comes from:
- `learned`: the map the run trained to match the teacher's normalised embeddings —
  CIFD's isometric IBM decoder Q (Û = Q·Ŵ/√d, one Q for both towers; noise-free Û = Q·w/‖w‖), or, for
  CLIP-KD with a student as wide as its teacher, the identity (FD compared w itself with the teacher's).
  Decoders and projections with a bias (CIFD's `separate`/`shared` decoders, CLIP-KD's projections) have no
  exact fold: open_clip's text projection has no bias to hold it.
- `procrustes` / `lstsq`: fitted after training on cached (student, teacher) pairs, the baseline anyone could
  build: one orthogonal map (Schönemann's Procrustes) or one least-squares map for both towers, from the
  normalised student embeddings of the cache's images and captions to the teacher's cached ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import UserError

MAPS = ("learned", "procrustes", "lstsq")
FITTED = ("procrustes", "lstsq")
# where open_clip's towers end: (state_dict key, kind); "matrix" is x @ P [width, d], "linear" is W x + b
IMAGE_PROJECTIONS = (("visual.proj", "matrix"), ("visual.attnpool.c_proj", "linear"), ("visual.head.proj", "linear"))
TEXT_PROJECTIONS = (("text_projection", "matrix"), ("text_projection", "linear"), ("text.text_projection", "matrix"),
                    ("text.text_projection", "linear"))
NO_LEARNED_MAP = ("--space teacher with --teacher-map learned needs a run that learned a bias-free map into the "
                  "teacher's space: CIFD with its isometric IBM decoder (--loss cifd, --ibm-decoder isometric, the "
                  "defaults) or CLIP-KD with a student as wide as its teacher")


@dataclass
class TeacherSpaceMap:
    matrix: torch.Tensor  # M [D, d]: teacher-space embedding = M · student embedding
    kind: str  # "ibm-isometric", "identity", "procrustes" or "lstsq"
    teacher: dict = field(default_factory=dict)  # {"spec", "model_name", "fingerprint"}
    fit: dict = field(default_factory=dict)  # fitted maps: {"pairs", "train_data", "cache", "mean_cosine"}

    @property
    def teacher_dim(self) -> int:
        return int(self.matrix.shape[0])


# ---------------------------------------------------------------- the run's own map


def learned_map(ckpt: dict) -> tuple[torch.Tensor, str]:
    """(M, kind) of the map the run trained, or one sentence saying why it has none."""
    config = ckpt.get("config") or {}
    loss = config.get("loss")
    states = ckpt.get("distill_state_dict") or {}
    student_dim = int(ckpt["model_cfg"]["embed_dim"])
    if loss in ("cifd", "cifd_affinity"):
        decoder = config.get("ibm_decoder", "isometric")
        if decoder != "isometric":
            raise UserError(f"{NO_LEARNED_MAP}; this run's IBM decoder is {decoder!r}, whose maps carry a bias; pass "
                            f"--teacher-map procrustes (or lstsq) to fit a map on cached pairs instead")
        return _isometric_q(states, student_dim, config.get("ibm_orthogonal_map", "matrix_exp")), "ibm-isometric"
    if loss == "clipkd":
        if any(k.startswith(("method.proj_image.", "method.proj_text.", "proj_image.", "proj_text.")) for k in states):
            raise UserError(f"{NO_LEARNED_MAP}; this CLIP-KD run's student is narrower than its teacher, and its "
                            f"projections carry a bias; pass --teacher-map procrustes (or lstsq) to fit a map on "
                            f"cached pairs instead")
        return torch.eye(student_dim), "identity"
    what = f"--loss {loss}" if loss else "trained without distillation"
    raise UserError(f"{NO_LEARNED_MAP}; this run ({what}) has none; pass --teacher-map procrustes (or lstsq) "
                    f"to fit one on cached pairs")


def _isometric_q(states: dict, student_dim: int, orthogonal_map: str) -> torch.Tensor:
    from ..core.ibm import IsometricDecoder

    from ..distill.distiller import _migrate

    prefix = "method.decoders.0."
    own = {k[len(prefix):]: v for k, v in _migrate(states).items() if k.startswith(prefix)}
    original = own.get("map.parametrizations.weight.original")
    if original is None:
        raise UserError("the checkpoint's run used the isometric IBM decoder but holds no decoder weights")
    if original.shape[1] != student_dim:
        raise UserError(f"the checkpoint's IBM decoder takes {original.shape[1]}-wide embeddings but its student "
                        f"embeds into {student_dim}")
    decoder = IsometricDecoder(student_dim, int(original.shape[0]), orthogonal_map)
    decoder.load_state_dict(own)
    with torch.no_grad():
        return decoder.weight().detach().float().clone()


# ---------------------------------------------------------------- maps fitted after training


def fit_map(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """M [D, d] taking the rows of `student` [N, d] to those of `teacher` [N, D] (both normalised here):
    `procrustes` the semi-orthogonal M minimising ‖S·Mᵀ − T‖ (Mᵀ = U·Vᵀ for SᵀT = U·Σ·Vᵀ), `lstsq` any M."""
    if kind not in FITTED:
        raise UserError(f"a fitted map is one of {', '.join(FITTED)}, got {kind!r}")
    s = F.normalize(student.double(), dim=-1)
    t = F.normalize(teacher.double(), dim=-1)
    if len(s) < s.shape[1]:
        raise UserError(f"fitting a {s.shape[1]}-wide map needs at least {s.shape[1]} pairs, got {len(s)}: "
                        f"raise --fit-samples")
    if kind == "procrustes":
        u, _, vh = torch.linalg.svd(s.T @ t, full_matrices=False)
        m_t = u @ vh
    else:
        m_t = torch.linalg.lstsq(s, t).solution
    return m_t.T.float().contiguous()


def mean_cosine(matrix: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor) -> float:
    mapped = F.normalize(F.normalize(student.float(), dim=-1) @ matrix.T, dim=-1)
    return float((mapped * F.normalize(teacher.float(), dim=-1)).sum(-1).mean())


def cached_pairs(tower, train_data: str, cache: str, samples: int, batch_size: int = 128,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(student [2N, d], teacher [2N, D]): the student's embeddings of N training samples' images and captions
    (the cached view replayed, then the student's eval transform, as distill feeds it) beside the teacher's
    cached ones, image pairs first."""
    from ..data.loader import make_train_loader
    from ..data.shards import count_samples, expand_urls
    from ..data.embedding_cache import CacheJoin

    available = count_samples(expand_urls(train_data))
    samples = min(int(samples), available) if available else int(samples)
    batch_size = max(1, min(batch_size, samples))
    data = make_train_loader(train_data, preprocess=tower.preprocess_val, tokenizer=tower.tokenizer,
                             batch_size=batch_size, workers=0, seed=seed, num_samples=samples,
                             sample_stages=[CacheJoin(cache, view="first", seed=seed)], persistent_workers=False)
    model = tower.model.eval()
    s_img, s_txt, t_img, t_txt = [], [], [], []
    with torch.no_grad():
        for batch in data.dataloader:
            s_img.append(model.encode_image(batch["image"]).float())
            s_txt.append(model.encode_text(batch["text"]).float())
            t_img.append(torch.as_tensor(batch["t_image_emb"]).float())
            t_txt.append(torch.as_tensor(batch["t_text_emb"]).float())
    if not s_img:
        raise UserError(f"no training samples could be read from {train_data} to fit the map")
    return torch.cat(s_img + s_txt), torch.cat(t_img + t_txt)


# ---------------------------------------------------------------- folding


def _find(state_dict: dict, candidates, tower: str) -> tuple[str, str]:
    for key, kind in candidates:
        if kind == "matrix" and key in state_dict:
            return key, kind
        if kind == "linear" and f"{key}.weight" in state_dict:
            return key, kind
    raise UserError(f"the student's {tower} tower ends in no projection this export can fold a map into "
                    f"(looked for {', '.join(sorted({k for k, _ in candidates}))}); --space teacher supports "
                    f"open_clip's ViT, ModifiedResNet and timm image towers and its own text tower")


def _fold(state_dict: dict, key: str, kind: str, matrix: torch.Tensor) -> None:
    if kind == "matrix":  # x @ P [width, d]  ->  x @ (P @ Mᵀ)
        p = state_dict[key]
        state_dict[key] = (p.double() @ matrix.double().T).to(p.dtype).contiguous()
        return
    w = state_dict[f"{key}.weight"]  # W x + b [d, in]  ->  (M W) x + M b
    state_dict[f"{key}.weight"] = (matrix.double() @ w.double()).to(w.dtype).contiguous()
    if f"{key}.bias" in state_dict:
        b = state_dict[f"{key}.bias"]
        state_dict[f"{key}.bias"] = (matrix.double() @ b.double()).to(b.dtype).contiguous()


def fold_into_projections(state_dict: dict, model_cfg: dict, matrix: torch.Tensor) -> tuple[dict, dict]:
    """The student's weights and config with M [D, d] folded into both towers' final projections."""
    d = int(model_cfg["embed_dim"])
    if matrix.dim() != 2 or matrix.shape[1] != d:
        raise UserError(f"the map into the teacher's space takes {matrix.shape[-1]}-wide embeddings but the student "
                        f"embeds into {d}")
    out = dict(state_dict)
    for candidates, tower in ((IMAGE_PROJECTIONS, "image"), (TEXT_PROJECTIONS, "text")):
        key, kind = _find(out, candidates, tower)
        _fold(out, key, kind, matrix)
    return out, {**model_cfg, "embed_dim": int(matrix.shape[0])}


# ---------------------------------------------------------------- which teacher


def teacher_identity(ckpt: dict, cache: Optional[str]) -> dict:
    """{"spec", "model_name", "fingerprint"} of the teacher whose space this is: from the embedding cache's
    cache.json (the run's own, or `cache`), else from the run's online teacher."""
    from ..data.embedding_cache import read_cache_meta

    config = ckpt.get("config") or {}
    cache = cache or config.get("cache")
    if cache:
        meta = read_cache_meta(cache)
        teacher = meta.get("teacher") or {}
        return {"spec": teacher.get("spec"), "model_name": teacher.get("model_name"),
                "fingerprint": meta.get("teacher_fingerprint"), "cache": str(cache)}
    if config.get("teacher"):
        from ..clip_models import load_model, weights_fingerprint

        tower = load_model(config["teacher"], config.get("teacher_pretrained"))
        return {"spec": config["teacher"], "model_name": tower.model_name,
                "fingerprint": weights_fingerprint(tower.model)}
    raise UserError("this run names no teacher (no embedding cache, no online teacher): pass --teacher-cache CACHE, "
                    "the embedding cache of the teacher whose space the student should embed into")


def build_map(ckpt: dict, checkpoint: str, kind: str, *, cache: Optional[str] = None,
              train_data: Optional[str] = None, samples: int = 4096, batch_size: int = 128) -> TeacherSpaceMap:
    """The map `kind` for the student of `ckpt` (module docstring), with the teacher it leads to."""
    if kind not in MAPS:
        raise UserError(f"--teacher-map must be one of {', '.join(MAPS)}, got {kind!r}")
    if kind == "learned":
        matrix, how = learned_map(ckpt)
        return TeacherSpaceMap(matrix, how, teacher_identity(ckpt, cache))
    teacher = teacher_identity(ckpt, cache)
    cache = cache or (ckpt.get("config") or {}).get("cache")
    train_data = train_data or (ckpt.get("config") or {}).get("train_data")
    if not cache or not train_data:
        raise UserError(f"--teacher-map {kind} fits the map on the teacher's cached embeddings of training samples: "
                        f"pass --teacher-cache CACHE and --fit-data SHARDS (the shards that cache was made from)")
    from ..clip_models import load_model

    tower = load_model(str(checkpoint))
    student, target = cached_pairs(tower, train_data, cache, samples, batch_size)
    matrix = fit_map(student, target, kind)
    fit = {"pairs": len(student), "train_data": str(train_data), "cache": str(cache),
           "mean_cosine": mean_cosine(matrix, student, target)}
    return TeacherSpaceMap(matrix, kind, teacher, fit)
