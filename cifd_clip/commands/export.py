"""Export a student checkpoint as an open_clip `local-dir` folder (+ a bare state_dict .pt and a model card).

The folder loads with `open_clip.create_model_and_transforms("local-dir:OUT")` and with
CLIP_benchmark's `--model local-dir:OUT`; nothing but the student is kept, and nothing touches
the network.
"""
from dataclasses import dataclass
from typing import Optional

from ..config import option, required


@dataclass
class Config:
    checkpoint: str = required("a checkpoint written by `cifd-clip train` or `cifd-clip distill`")
    out: str = required("output folder")
    eval_results: Optional[str] = option(None, "results.md (or the folder) of `cifd-clip bench` for the model card; "
                                               "by default the run's eval/results.md when present")
    verify: bool = option(True, "reload the folder through open_clip and check it reproduces the checkpoint")
    overwrite: bool = option(False, "replace an earlier export in --out (its files are removed first)")
    license: str = option("other", "the license the model card's front matter names (a Hugging Face license id; "
                                   "a student inherits its teacher's and its data's terms)")
    space: str = option("student", "the embedding space the exported towers end in: the student's own, or the "
                                   "teacher's (a map folded into the final projections, so that the model's queries "
                                   "search an index the teacher built)", choices=["student", "teacher"])
    teacher_map: str = option("learned", "--space teacher: the map into the teacher's space: the one the run "
                                         "learned (CIFD's isometric IBM decoder), or one fitted now on cached pairs "
                                         "(procrustes: orthogonal; lstsq: least squares)",
                              choices=["learned", "procrustes", "lstsq"])
    teacher_cache: Optional[str] = option(None, "--space teacher: the teacher's embedding cache (names the teacher; "
                                                "fitted maps read its embeddings); default: the run's --cache")
    fit_data: Optional[str] = option(None, "fitted maps: the shards the cache was made from (default: the run's "
                                           "--train-data)")
    fit_samples: int = option(4096, "fitted maps: training samples whose image and caption pairs the map is fitted on")

    def validate(self):
        from ..errors import ConfigError

        if self.space == "student" and (self.teacher_map != "learned" or self.teacher_cache or self.fit_data):
            raise ConfigError("--teacher-map, --teacher-cache and --fit-data choose the map of --space teacher; "
                              "pass --space teacher with them")
        if self.fit_samples < 1:
            raise ConfigError(f"--fit-samples must be at least 1, got {self.fit_samples}")


def run(cfg: Config) -> int:
    from ..export.open_clip_folder import export_student, read_teacher_space_map, verify_export

    out = export_student(cfg.checkpoint, cfg.out, cfg.eval_results, overwrite=cfg.overwrite, space=cfg.space,
                                  teacher_map=cfg.teacher_map, teacher_cache=cfg.teacher_cache, fit_data=cfg.fit_data,
                                  fit_samples=cfg.fit_samples, license=cfg.license)
    message = f"exported {cfg.checkpoint} to {out} (load with open_clip: local-dir:{out})"
    mapping = read_teacher_space_map(out)
    if mapping is not None:
        fit = mapping["fit"]
        message += (f", in the space of teacher {mapping['teacher'].get('spec')} (width {mapping['matrix'].shape[0]}, "
                    f"{mapping['kind']} map" + (f", mean cosine {fit['mean_cosine']:.3f} on {fit['pairs']} fitted "
                                                f"pairs" if fit else "") + ")")
    if cfg.verify:
        diff = verify_export(out, cfg.checkpoint, matrix=None if mapping is None else mapping["matrix"])
        message += f"; open_clip reload matches, max relative difference {diff:.1e}"
    print(message)
    return 0
