"""The demo's steps: each is one `cifd-clip STAGE --config recipes/demo/STEP.yaml` plus the paths.

Hyperparameters live in the recipe files; this module only wires one step's outputs to the next
step's inputs, so every printed command can be copied and run by hand.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from ..errors import UserError

# Shipped inside the package (a checkout also shows them as recipes/demo/ and eval/suites/), so that the demo
# runs from an installed wheel as well as from the source tree.
DEFAULT_RECIPES = Path(__file__).resolve().parent / "recipes"
DEMO_SUITE = Path(__file__).resolve().parents[1] / "evaluation" / "suites" / "demo.yaml"
TEACHER_SPACE_SUITE = DEMO_SUITE.with_name("demo-teacher-space.yaml")
SCALES = ("full", "small")
# The students see the first quarter of the teacher's training samples (docs/studies/gap-testbeds.md: the regime
# of a pretrained teacher distilled on a smaller set, where a teacher is worth distilling from).
STUDENT_SHARE = 4

# The compared models: (run name, column label), in table order.
MODELS = [("teacher", "teacher"), ("student-nokd", "student, no KD"),
          ("student-kd", "student, KD (open_clip)"), ("student-cifd", "student, CIFD")]
# The students exported into the teacher's space: (run, map, row label), in table order. CIFD's own map is its
# IBM decoder; the post-hoc Procrustes map is the baseline every student gets.
TEACHER_SPACE = [("student-cifd", "learned", "student, CIFD (its IBM map Q)"),
                 ("student-cifd", "procrustes", "student, CIFD + Procrustes"),
                 ("student-nokd", "procrustes", "student, no KD + Procrustes"),
                 ("student-kd", "procrustes", "student, KD (open_clip) + Procrustes")]


@dataclass
class Layout:
    """Where every step writes, under the demo's --out folder."""
    out: Path

    @property
    def data(self) -> Path: return self.out / "data"
    @property
    def cache(self) -> Path: return self.out / "cache"
    @property
    def runs(self) -> Path: return self.out / "runs"
    @property
    def rdm(self) -> Path: return self.runs / "rdm"
    @property
    def bench(self) -> Path: return self.out / "bench"
    @property
    def export(self) -> Path: return self.out / "export" / "student-cifd"
    @property
    def bench_teacher_space(self) -> Path: return self.out / "bench-teacher-space"
    @property
    def logs(self) -> Path: return self.out / "logs"

    def teacher_space_export(self, run: str, how: str) -> Path:
        return self.out / "export" / f"{run}-teacher-space-{how}"
    @property
    def report(self) -> Path: return self.out / "report"

    def checkpoint(self, run: str) -> Path:
        return self.runs / run / "checkpoints" / "epoch_latest.pt"

    def _info(self) -> dict:
        info_file = self.data / "demo_info.json"
        if not info_file.is_file():
            raise UserError(f"{info_file} is missing: the data step did not finish")
        return json.loads(info_file.read_text())

    def train_data(self) -> str:
        """Every training shard: the teacher's set."""
        return str(self.data / self._info()["train_data"])

    def student_train_data(self) -> str:
        """The first 1/STUDENT_SHARE of the training shards (whole shards, at least one): the students' set,
        nested in the teacher's, as when a pretrained teacher is distilled on a smaller set."""
        shards = max(1, self._info()["splits"]["train"]["shards"] // STUDENT_SHARE)
        return str(self.data / "train" / f"{{00000..{shards - 1:05d}}}.tar")


@dataclass
class Step:
    name: str
    stage: str
    recipe: str  # file name in the recipes folder
    paths: Callable[[Layout], list[str]]  # path options, computed when the step starts
    overrides: dict = field(default_factory=dict)  # from the scale file

    def argv(self, layout: Layout, recipes: Path) -> list[str]:
        return [self.stage, "--config", str(recipes / self.recipe), *to_flags(self.overrides), *self.paths(layout)]


def to_flags(values: dict) -> list[str]:
    """{"train_samples": 1200, "ibm": False} -> ["--train-samples", "1200", "--no-ibm"]."""
    flags = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def _training(run: str, *, cache: bool = False, rdm: bool = False) -> Callable[[Layout], list[str]]:
    def paths(layout: Layout) -> list[str]:
        data = layout.train_data() if run == "teacher" else layout.student_train_data()
        args = ["--train-data", data, "--logs", str(layout.runs), "--name", run,
                "--eval-dataset-root", str(layout.data)]
        if cache:
            args += ["--cache", str(layout.cache)]
        if rdm:
            args += ["--rdm", str(layout.rdm / "rdm.pt")]
        return args
    return paths


def _teacher_space_export(run: str, how: str) -> Callable[[Layout], list[str]]:
    def paths(layout: Layout) -> list[str]:
        args = ["--checkpoint", str(layout.checkpoint(run)), "--out", str(layout.teacher_space_export(run, how))]
        if how != "learned":  # the fit reads the teacher's cached embeddings of the training shards
            args += ["--teacher-cache", str(layout.cache), "--fit-data", layout.student_train_data()]
        return args
    return paths


STEPS = [
    Step("data", "make-demo-data", "data.yaml", lambda l: ["--out", str(l.data)]),
    Step("teacher", "train", "teacher.yaml", _training("teacher")),
    Step("embed", "embed", "embed.yaml", lambda l: ["--teacher", str(l.checkpoint("teacher")),
                                                    "--train-data", l.student_train_data(), "--out", str(l.cache),
                                                    "--zeroshot-root", str(l.data / "zeroshot")]),
    Step("rdm", "train-rdm", "rdm.yaml", lambda l: ["--cache", str(l.cache), "--out", str(l.rdm)]),
    Step("student-cifd", "distill", "student-cifd.yaml", _training("student-cifd", cache=True, rdm=True)),
    Step("student-nokd", "train", "student-nokd.yaml", _training("student-nokd")),
    Step("student-kd", "distill", "student-kd.yaml", _training("student-kd", cache=True)),
    Step("bench", "bench", "bench.yaml", lambda l: [
        "--suite", str(DEMO_SUITE), "--output-dir", str(l.bench), "--dataset-root-base", str(l.data),
        "--model", *(str(l.checkpoint(run)) for run, _ in MODELS)]),
    Step("export", "export", "export.yaml", lambda l: [
        "--checkpoint", str(l.checkpoint("student-cifd")), "--out", str(l.export), "--eval-results", str(l.bench)]),
    *(Step(f"teacher-space-{run.removeprefix('student-')}-{how}", "export",
           "export-teacher-space.yaml" if how == "learned" else "export-procrustes.yaml",
           _teacher_space_export(run, how)) for run, how, _ in TEACHER_SPACE),
    Step("bench-teacher-space", "bench", "bench-teacher-space.yaml", lambda l: [
        "--suite", str(TEACHER_SPACE_SUITE), "--output-dir", str(l.bench_teacher_space), "--dataset-root-base",
        str(l.data), "--gallery-model", str(l.checkpoint("teacher")),
        "--model", *(f"local-dir:{l.teacher_space_export(run, how)}" for run, how, _ in TEACHER_SPACE)]),
]


def resolve_recipes(recipes: str | None) -> Path:
    folder = Path(recipes) if recipes else DEFAULT_RECIPES
    missing = [s.recipe for s in STEPS if not (folder / s.recipe).is_file()]
    if missing:
        raise UserError(f"recipe folder {folder} lacks {', '.join(missing)}; pass --recipes DIR with one YAML per "
                        f"demo step (see recipes/demo/)")
    if not DEMO_SUITE.is_file() or not TEACHER_SPACE_SUITE.is_file():
        raise UserError(f"the demo suite {DEMO_SUITE} is missing: this cifd_clip install is incomplete; reinstall it")
    return folder


def build_steps(recipes: Path, scale: str, steps: list[Step] = None) -> list[Step]:
    """The steps with the scale's overrides (RECIPES/scale-SCALE.yaml, if present) applied."""
    steps = STEPS if steps is None else steps
    if scale not in SCALES:
        raise UserError(f"--scale must be one of {', '.join(SCALES)}, got {scale}")
    overrides = {}
    scale_file = recipes / f"scale-{scale}.yaml"
    if scale_file.is_file():
        overrides = yaml.safe_load(scale_file.read_text()) or {}
        unknown = set(overrides) - {s.name for s in steps}
        if unknown:
            raise UserError(f"{scale_file} names unknown steps: {', '.join(sorted(unknown))} "
                            f"(steps: {', '.join(s.name for s in steps)})")
    elif scale != "full":
        raise UserError(f"--scale {scale} needs {scale_file}")
    return [Step(s.name, s.stage, s.recipe, s.paths, dict(overrides.get(s.name) or {})) for s in steps]
