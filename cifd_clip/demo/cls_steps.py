"""The classification demo's steps (`cifd-clip cls-demo`): the paper's CIFAR comparison at CPU size.

data → teacher → teacher assistant → embed → RDMs → five students (no KD, KD, TAKD, DGKD, CIFD), each a
`cifd-clip` command with its settings in recipes_classification/STEP.yaml; the driver only wires paths. The
teacher trains on a larger set (data-teacher/) than the students, whose set (data/) is its first quarter: the
generator draws image i of a split from (seed, split, i), so the smaller set nests in the larger one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .steps import Layout, Step, build_steps as _build_steps

RECIPES = Path(__file__).resolve().parent / "recipes_classification"
STUDENTS = [("student-nokd", "no KD"), ("student-kd", "KD"), ("student-takd", "TAKD"), ("student-dgkd", "DGKD"),
            ("student-cifd", "CIFD (3 RDMs + IBM)")]


@dataclass
class ClsLayout(Layout):
    """The CLIP demo's folders (data, runs, cache, logs, report), with the data read as a CIFAR-100 folder."""

    @property
    def teacher_data(self) -> Path:
        return self.out / "data-teacher"

    def spec(self) -> str:
        """The students' set (also the assistant's and the cache's)."""
        return f"cifar100:{self.data}"

    def teacher_spec(self) -> str:
        return f"cifar100:{self.teacher_data}"


def _run(name: str, *, teacher: str = "", assistants: bool = False, rdm: bool = False, cache: bool = False):
    def paths(layout: ClsLayout) -> list[str]:
        data = layout.teacher_spec() if name == "teacher" else layout.spec()
        args = ["--train-data", data, "--logs", str(layout.runs), "--name", name]
        if cache:
            args += ["--cache", str(layout.cache)]
        if teacher:
            args += ["--teacher", str(layout.checkpoint(teacher))]
        if assistants:
            args += ["--assistants", str(layout.checkpoint("assistant"))]
        if rdm:
            args += ["--rdm", str(layout.rdm / "rdm.pt")]
        return args
    return paths


STEPS = [
    Step("data-teacher", "cls-make-demo-data", "data-teacher.yaml", lambda l: ["--out", str(l.teacher_data)]),
    Step("data", "cls-make-demo-data", "data.yaml", lambda l: ["--out", str(l.data)]),
    Step("teacher", "cls-train", "teacher.yaml", _run("teacher")),
    Step("assistant", "cls-distill", "assistant.yaml", _run("assistant", teacher="teacher")),
    Step("embed", "cls-embed", "embed.yaml", lambda l: ["--teacher", str(l.checkpoint("teacher")), "--train-data",
                                                        l.spec(), "--out", str(l.cache)]),
    Step("rdm", "cls-train-rdm", "rdm.yaml", lambda l: ["--cache", str(l.cache), "--out", str(l.rdm)]),
    Step("student-nokd", "cls-train", "student-nokd.yaml", _run("student-nokd")),
    Step("student-kd", "cls-distill", "student-kd.yaml", _run("student-kd", teacher="teacher")),
    Step("student-takd", "cls-distill", "student-takd.yaml", _run("student-takd", teacher="assistant")),
    Step("student-dgkd", "cls-distill", "student-dgkd.yaml", _run("student-dgkd", teacher="teacher", assistants=True)),
    Step("student-cifd", "cls-distill", "student-cifd.yaml", _run("student-cifd", cache=True, rdm=True)),
]


def build_steps(recipes: Path, scale: str) -> list[Step]:
    return _build_steps(recipes, scale, steps=STEPS)
