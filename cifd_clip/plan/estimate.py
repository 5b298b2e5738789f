"""What a recipe will cost, per step, before anything runs: FLOPs counted on the real modules (count.py),
GPU-hours at a stated MFU and GPU type, the cache's size on disk, and the peak memory per GPU at the step's
batch; then the same run done with plain KD (the teacher online every step) and TAKD-style (an assistant
trained with the teacher online, then the student with the assistant online).

Memory per GPU = parameters (4 bytes) + AdamW's two moments (8) for what trains, frozen modules at their
storage width, and the tensors alive at the peak of one step (activations, gradients), counted on the meta
device in fp32 and halved for activations under amp/bf16. The CUDA context and the allocator's slack
(about 1-2 GiB) are not included.

Disk: the embedding cache as the real writer lays it out, the RDM file, and for each student the most checkpoints
it holds at once under its retention options (engine/retention.py: --keep-step-checkpoints,
--delete-previous-checkpoint), each the student's weights and AdamW's two moments in fp32.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Optional

import numpy as np

from ..errors import ConfigError
from ..engine.retention import Retention, peak_checkpoints, save_counts
from ..launch.recipe import Recipe, Step
from . import count as counting

# dense bf16 (fp16 for V100) tensor-core peak per GPU, from the vendors' data sheets
GPUS = {"a100": 312e12, "h100": 989e12, "h200": 989e12, "l40s": 362e12, "v100": 125e12}
GIB = 1024 ** 3
TRAINING_STAGES = ("train", "distill")


@dataclass
class StepCost:
    name: str
    stage: str
    what: str
    samples: float  # samples processed (all epochs, all views)
    flops: float
    gpu_hours: float
    memory_gib: Optional[float]  # peak per GPU
    disk_gib: Optional[float] = None
    note: str = ""
    disk_what: str = ""  # what disk_gib counts (the checkpoints kept, the cache)

    def samples_per_gpu_second(self, peak: float, mfu: float) -> float:
        """How fast one GPU consumes samples at this MFU: what its data loader must deliver."""
        return peak * mfu * self.samples / self.flops if self.flops else 0.0


@dataclass
class Plan:
    recipe: str
    gpu: str
    peak_flops: float
    mfu: float
    gpus: int
    steps: list[StepCost]
    comparison: list[StepCost] = field(default_factory=list)
    out: Optional[str] = None  # where the recipe writes (its `out` var)
    free_gib: Optional[float] = None  # free on that disk now

    @property
    def disk_gib(self) -> float:
        """The most the recipe holds on disk: every step's cache, RDMs and kept checkpoints (a student's own most
        at once, while it writes a checkpoint before deleting an older one)."""
        return sum(s.disk_gib or 0.0 for s in self.steps)

    def total(self, names: Optional[list[str]] = None) -> float:
        return sum(s.flops for s in self.steps if names is None or s.name in names)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k not in ("steps", "comparison")},
                "disk_gib": self.disk_gib,
                "steps": [asdict(s) for s in self.steps], "comparison": [asdict(s) for s in self.comparison]}


@lru_cache(maxsize=None)
def _clip(spec: str):
    return counting.meta_clip(spec)


@lru_cache(maxsize=None)
def _forward(spec: str) -> tuple[counting.WorkCount, counting.WorkCount]:
    return counting.clip_forwards(_clip(spec))


@lru_cache(maxsize=None)
def _train_step(spec: str) -> counting.WorkCount:
    return counting.clip_train_step(_clip(spec))


def _params(spec: str, trainable_only: bool = False) -> int:
    return counting.parameter_count(_clip(spec), trainable_only)


def embed_dim(spec: str) -> int:
    import open_clip
    return int(open_clip.get_model_config(counting.architecture_name(spec))["embed_dim"])


def _rdm_family(options: dict, dim: int):
    from ..core.rdm_config import RDMArchitecture
    from ..core.rdm import RDMFamily
    arch = {k: options[k] for k in RDMArchitecture.__dataclass_fields__ if k in options}
    return RDMFamily.build({"image": dim, "text": dim}, list(options.get("rates", [100.0, 300.0, 1000.0])), **arch)


def cache_bytes_per_sample(image_dim: int, text_dim: int, views: int, dtype: str) -> float:
    """Written with the real cache writer (tar members, npy headers, padding): the growth per sample of two
    shards of different lengths, so that a shard's fixed end-of-archive bytes are left out."""
    from ..data.embedding_cache import SiblingShardWriter

    def shard_bytes(folder: str, n: int) -> int:
        writer = SiblingShardWriter(folder, f"size{n}.tar", dtype)
        for i in range(n):
            writer.write(f"{i:09d}", np.zeros((views, image_dim)), np.zeros(text_dim),
                         np.zeros((views, 5)) if views > 1 else None)
        return writer.commit({})["bytes"]

    with tempfile.TemporaryDirectory() as folder:
        return (shard_bytes(folder, 40) - shard_bytes(folder, 20)) / 20


def _activation_factor(precision: str) -> float:
    return 1.0 if precision == "fp32" else 0.5


def _precision(options: dict, device_is_gpu: bool = True) -> str:
    p = str(options.get("precision", "auto"))
    return ("amp_bf16" if device_is_gpu else "fp32") if p == "auto" else p


class Planner:
    def __init__(self, recipe: Recipe, *, gpu: str, mfu: float, gpus: int, peak_flops: Optional[float] = None):
        if gpu not in GPUS and peak_flops is None:
            raise ConfigError(f"--gpu must be one of {', '.join(GPUS)} (or give --peak-tflops), got {gpu!r}")
        if not 0 < mfu <= 1:
            raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")
        self.recipe, self.gpu, self.mfu, self.gpus = recipe, gpu, mfu, gpus
        self.peak = peak_flops if peak_flops is not None else GPUS[gpu]
        self.dataset_samples = float(recipe.plan["dataset_samples"]) if recipe.plan.get("dataset_samples") else None
        self.teacher: Optional[str] = None
        self.views = 1
        self.rdm_options: dict = {}  # the train-rdm step's, for the students that read its RDMs

    def gpu_hours(self, flops: float) -> float:
        return flops / (self.peak * self.mfu) / 3600

    def _samples(self, options: dict, what: str) -> float:
        n = options.get("train_num_samples") or self.dataset_samples
        if not n:
            raise ConfigError(f"{what}: the plan needs the number of samples; set train_num_samples in the step or "
                              f"dataset_samples in the recipe's plan block")
        return float(n)

    def _training_memory(self, spec: str, batch: int, precision: str, frozen_params: float = 0.0,
                         frozen_live: float = 0.0) -> float:
        step = _train_step(spec)
        live = step.fixed_bytes + batch * step.live_bytes * _activation_factor(precision)
        return (_params(spec) * 12 + live + frozen_params + frozen_live) / GIB

    def embed(self, step: Step) -> StepCost:
        o = step.options
        self.teacher, self.views = str(o["teacher"]), int(o.get("augmentations", 1))
        samples = float(self.dataset_samples or 0)
        if not samples:
            raise ConfigError(f"step {step.name}: set dataset_samples (the samples in the shards) in the recipe's "
                              f"plan block")
        image, text = _forward(self.teacher)
        flops = samples * (self.views * image.flops + text.flops)
        batch = int(o.get("batch_size", 64))
        precision = _precision(o)
        weight_bytes = 2 if precision == "amp_bf16" else 4
        memory = (_params(self.teacher) * weight_bytes + batch * max(self.views * image.live_bytes, text.live_bytes)
                  * _activation_factor(precision)) / GIB
        dim = embed_dim(self.teacher)
        disk = samples * cache_bytes_per_sample(dim, dim, self.views, str(o.get("dtype", "float16"))) / GIB
        return StepCost(step.name, step.stage, f"{self.teacher} forward, {self.views} view(s)", samples * self.views,
                        flops, self.gpu_hours(flops), memory, disk, disk_what="the embedding cache")

    def rdm(self, step: Step) -> StepCost:
        o = step.options
        dim = embed_dim(self._need_teacher(step))
        family = _rdm_family(o, dim)
        work = counting.rdm_family_work(family, {"image": dim, "text": dim}, train=True)
        samples = float(self.dataset_samples or 0) * self.views * int(o.get("epochs", 10))
        flops = samples * work.flops
        memory = (counting.parameter_count(family) * 16 + work.peak_bytes(int(o.get("batch_size", 256)))) / GIB
        disk = counting.parameter_count(family) * 4 / GIB
        return StepCost(step.name, step.stage, f"{len(family.rates('image'))} RDMs per modality", samples, flops,
                        self.gpu_hours(flops), memory, disk, disk_what="the RDM file")

    def _need_teacher(self, step: Step) -> str:
        if self.teacher is None:
            teacher = step.options.get("teacher")
            if not teacher:
                raise ConfigError(f"step {step.name}: the plan needs the teacher; the recipe has no embed step before it")
            self.teacher = str(teacher)
        return self.teacher

    def training(self, step: Step) -> StepCost:
        o = step.options
        spec, epochs, batch = str(o["model"]), int(o.get("epochs", 1)), int(o.get("batch_size", 64))
        samples = self._samples(o, f"step {step.name}") * epochs
        per_sample = _train_step(spec).flops
        frozen_params = frozen_live = 0.0
        what = f"{spec} training"
        if step.stage == "distill":
            loss = o.get("loss", "cifd")
            if o.get("teacher_online"):
                teacher = str(o["teacher"])
                image, text = _forward(teacher)
                per_sample += image.flops + text.flops
                frozen_params += _params(teacher) * 2
                frozen_live += batch * max(image.live_bytes, text.live_bytes) * 0.5
                what += f" + {teacher} online"
            else:
                what += f", {loss} from the cache"
            if o.get("rdm"):
                dim = embed_dim(self._need_teacher(step))
                family = _rdm_family(self.rdm_options, dim)
                per_sample += counting.rdm_family_work(family, {"image": dim, "text": dim}, train=False).flops
                frozen_params += counting.parameter_count(family) * 4
        flops = samples * per_sample
        memory = self._training_memory(spec, batch, _precision(o), frozen_params, frozen_live)
        disk, kept = self.checkpoint_disk(step)
        return StepCost(step.name, step.stage, what, samples, flops, self.gpu_hours(flops), memory, disk,
                        disk_what=kept)

    def checkpoint_disk(self, step: Step) -> tuple[float, str]:
        """GiB of the checkpoints a training step holds at once under its retention options, and what they are."""
        o = step.options
        per_epoch = self._samples(o, f"step {step.name}")
        global_batch = int(o.get("batch_size", 64)) * self.gpus * int(o.get("accum_freq", 1))
        steps_per_epoch = max(1, int(per_epoch) // global_batch)
        total = steps_per_epoch * int(o.get("epochs", 1))
        end = min(total, int(o["stop_after_steps"])) if o.get("stop_after_steps") else total
        retention = Retention(int(o.get("keep_step_checkpoints", 2)), bool(o.get("delete_previous_checkpoint", False)),
                              bool(o.get("save_most_recent", True)))
        epochs, steps = save_counts(0, end, total, steps_per_epoch, int(o.get("save_every_steps", 0) or 0),
                                    int(o.get("save_every_epochs", o.get("save_frequency", 1))))
        count = peak_checkpoints(epochs, steps, retention)
        per_checkpoint = _params(str(o["model"])) * 12
        return count * per_checkpoint / GIB, (f"{count} of its {epochs + steps} checkpoints at once "
                                              f"({_gib(per_checkpoint / GIB)} each), keeping {retention.describe()}")

    def plan(self) -> Plan:
        costs = []
        for step in self.recipe.steps:
            if step.stage == "embed":
                costs.append(self.embed(step))
            elif step.stage == "train-rdm":
                self.rdm_options = step.options
                costs.append(self.rdm(step))
            elif step.stage in TRAINING_STAGES:
                costs.append(self.training(step))
            elif step.stage.startswith("cls-"):
                costs.append(StepCost(step.name, step.stage, "classification", 0, 0.0, 0.0, None,
                                      note="not sized here: cls-train and cls-distill --dry-run print a run's cost"))
            else:
                costs.append(StepCost(step.name, step.stage, "evaluation / export", 0, 0.0, 0.0, None,
                                      note="not counted: minutes"))
        plan = Plan(str(self.recipe.path), self.gpu, self.peak, self.mfu, self.gpus, costs, self.comparison(costs))
        if self.recipe.vars.get("out"):
            from ..output_checks import free_bytes
            plan.out = str(self.recipe.vars["out"])
            plan.free_gib = free_bytes(plan.out)[1] / GIB
        return plan

    def comparison(self, costs: list[StepCost]) -> list[StepCost]:
        """The CIFD student's whole pipeline against plain KD and a TAKD-style run of the same student."""
        cifd = next((s for s in self.recipe.steps if s.stage == "distill" and s.options.get("loss", "cifd") == "cifd"
                     and s.options.get("rdm")), None)
        if cifd is None or self.teacher is None:
            return []
        o = cifd.options
        spec, samples, batch = str(o["model"]), self._samples(o, "the CIFD step") * int(o.get("epochs", 1)), \
            int(o.get("batch_size", 64))
        precision = _precision(o)
        pipeline = [c for c in costs if c.stage in ("embed", "train-rdm") or c.name == cifd.name]
        rows = [StepCost("CIFD", "pipeline", " + ".join(c.name for c in pipeline), samples,
                         sum(c.flops for c in pipeline), sum(c.gpu_hours for c in pipeline),
                         max(c.memory_gib or 0 for c in pipeline))]

        def online(student: str, teacher: str, label: str) -> StepCost:
            image, text = _forward(teacher)
            flops = samples * (_train_step(student).flops + image.flops + text.flops)
            memory = self._training_memory(student, batch, precision, _params(teacher) * 2,
                                           batch * max(image.live_bytes, text.live_bytes) * 0.5)
            return StepCost(label, "distill", f"{student} training + {teacher} online", samples, flops,
                            self.gpu_hours(flops), memory)

        rows.append(online(spec, self.teacher, "plain KD"))
        assistant = self.recipe.plan.get("assistant")
        if assistant:
            ta, student = online(str(assistant), self.teacher, "TAKD: assistant"), online(spec, str(assistant),
                                                                                          "TAKD: student")
            rows.append(StepCost("TAKD-style", "pipeline", f"{ta.what}, then {student.what}", samples,
                                 ta.flops + student.flops, ta.gpu_hours + student.gpu_hours,
                                 max(ta.memory_gib, student.memory_gib)))
        return rows


def _gib(x: float) -> str:
    return f"{x:.1f} GiB" if x >= 0.1 else f"{x * 1024:.1f} MiB" if x * 1024 >= 0.1 else f"{x * 1024 ** 2:.0f} kiB"


def format_plan(plan: Plan) -> str:
    def num(x: float) -> str:
        return "-" if not x else f"{x:.2e}"

    def rate(r: float) -> str:
        return "-" if not r else f"{r:,.0f}"

    def hours(h: float) -> str:
        return "-" if not h else (f"{h:.1f}" if h >= 1 else f"{h:.2f}")

    lines = [f"plan for {plan.recipe}: {plan.gpu} at {plan.peak_flops / 1e12:.0f} TFLOP/s peak, MFU "
             f"{plan.mfu:.0%}, {plan.gpus} GPU(s)", "",
             "| step | stage | work | samples | FLOPs | GPU-hours | wall hours | samples/s/GPU | memory/GPU (GiB) | "
             "disk (GiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in plan.steps:
        lines.append(f"| {s.name} | {s.stage} | {s.what}{' (' + s.note + ')' if s.note else ''} | {num(s.samples)} | "
                     f"{num(s.flops)} | {hours(s.gpu_hours)} | {hours(s.gpu_hours / plan.gpus)} | "
                     f"{rate(s.samples_per_gpu_second(plan.peak_flops, plan.mfu))} | "
                     f"{'-' if s.memory_gib is None else f'{s.memory_gib:.1f}'} | "
                     f"{'-' if s.disk_gib is None else f'{s.disk_gib:.1f}'} |")
    total = plan.total()
    lines.append(f"| total | | | | {num(total)} | {hours(sum(s.gpu_hours for s in plan.steps))} | "
                 f"{hours(sum(s.gpu_hours for s in plan.steps) / plan.gpus)} | | | |")
    if plan.disk_gib:
        lines += ["", f"Disk: {plan.disk_gib:.1f} GiB at most"
                  + (f" under {plan.out}, where {plan.free_gib:.1f} GiB are free now: "
                     + ("it fits" if plan.disk_gib * 1.1 <= plan.free_gib else "it does NOT fit (set "
                        "delete_previous_checkpoint or a lower keep_step_checkpoints in the students' options, or "
                        "write elsewhere)") if plan.out is not None else "")]
        for s in plan.steps:
            if s.disk_gib:
                lines.append(f"- {s.name}: {_gib(s.disk_gib)}, {s.disk_what}")
    if plan.comparison:
        base = next(c for c in plan.comparison if c.name == "plain KD")
        lines += ["", "The CIFD student against the same student distilled other ways (same data, epochs, batch):", "",
                  "| run | work | FLOPs | GPU-hours | × plain KD | memory/GPU (GiB) |", "|---|---|---|---|---|---|"]
        for c in plan.comparison:
            lines.append(f"| {c.name} | {c.what} | {num(c.flops)} | {hours(c.gpu_hours)} | "
                         f"{c.flops / base.flops:.2f} | {c.memory_gib:.1f} |")
    lines += ["", "FLOPs: matmuls, convolutions and attention counted on the real modules (meta device), forward and "
              "backward; samples/s/GPU: how fast one GPU consumes samples at this MFU, which its data loader must "
              "deliver (benchmarks/bench_data.py measures ours); memory: weights, AdamW state and the tensors alive "
              "at one step's peak (activations halved under bf16), without the CUDA context (~1-2 GiB)."]
    return "\n".join(lines)

