"""A recipe: one YAML file for a whole paper setting, its steps in order (embed → train-rdm → students → bench).

    vars:                         # what a user changes; `${name}` anywhere below is replaced by its value
      train_data: /data/cc12m/{00000..01242}.tar
      out: runs/vitl14-vits16     # every output of the recipe lives under it
    smoke:                        # what `cifd-clip launch --smoke-data DIR` replaces (tiny stand-ins, demo data)
      vars: {teacher: tiny-vit-teacher, student: tiny-vit-student}
    steps:
      - name: embed
        stage: embed              # a cifd-clip stage
        processes: all            # all: one process per GPU on every node (torchrun); one: a single process
        options: {teacher: "${teacher}", train_data: "${train_data}", out: "${out}/cache"}
      - ...
    plan: {assistant: ViT-B-16}   # what `cifd-clip plan` compares against (the TAKD-style assistant)

A recipe may start from another (`base: vitl14-vits16.yaml`, relative to its own folder): its vars, smoke
and plan entries replace the base's one by one, and its steps (if it lists any) replace the base's steps.
A step's `config: FILE` (relative to the recipe) is a stage config file whose keys its `options` extend or
replace. A step with `skip_if_exists: PATH` is skipped when that file exists (e.g. a teacher cache that another
recipe already made).

Each step's options are exactly the stage's `--config` keys (`~` removes one inherited through a YAML anchor); they are checked against the stage's options
when the recipe is read, so a typo stops the recipe before anything runs.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import _fields, coerce, read_yaml
from ..errors import ConfigError

PROCESSES = ("all", "one")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# the stages a recipe may run: the ones that run under torchrun, and the single-process ones
STAGE_MODULES = {
    "embed": "cifd_clip.commands.embed", "train-rdm": "cifd_clip.commands.train_rdm",
    "train": "cifd_clip.commands.train", "distill": "cifd_clip.commands.distill",
    "eval": "cifd_clip.commands.eval", "bench": "cifd_clip.commands.bench", "export": "cifd_clip.commands.export",
    "cls-train": "cifd_clip.commands.cls_train", "cls-embed": "cifd_clip.commands.cls_embed",
    "cls-train-rdm": "cifd_clip.commands.cls_train_rdm", "cls-distill": "cifd_clip.commands.cls_distill",
    "cls-eval": "cifd_clip.commands.cls_eval", "cls-export": "cifd_clip.commands.cls_export",
}
SINGLE_PROCESS_STAGES = {"eval", "bench", "export", "cls-eval", "cls-export"}


@dataclass
class Step:
    name: str
    stage: str
    processes: str  # "all" (torchrun on every node) or "one" (one process, on the first node)
    options: dict[str, Any]
    skip_if_exists: str | None = None


@dataclass
class Recipe:
    path: Path
    vars: dict[str, str]
    steps: list[Step]
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.vars["out"])

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise ConfigError(f"recipe {self.path} has no step {name!r} (its steps: {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]


def substitute(value: Any, variables: dict[str, str], where: str) -> Any:
    """Replace `${name}` in strings, inside lists and mappings too; an unknown name is a ConfigError."""
    if isinstance(value, str):
        def one(match):
            if match.group(1) not in variables:
                raise ConfigError(f"{where} uses ${{{match.group(1)}}}, which the recipe's vars do not define")
            return str(variables[match.group(1)])
        return VAR.sub(one, value)
    if isinstance(value, list):
        return [substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables, where) for k, v in value.items()}
    return value


def resolve_vars(raw: dict, where: str) -> dict[str, str]:
    """Vars may name other vars (`cache: ${out}/cache`); resolved in order until nothing changes."""
    values = {str(k): str(v) for k, v in raw.items()}
    for _ in range(len(values) + 1):
        changed = False
        for key, value in values.items():
            new = VAR.sub(lambda m: values.get(m.group(1), m.group(0)), value)
            changed |= new != value
            values[key] = new
        if not changed:
            break
    for key, value in values.items():
        if "/../" in value and "://" not in value:  # `${out}/../shared` reads better as the folder it names
            values[key] = value = os.path.normpath(value)
        unknown = VAR.search(value)
        if unknown:
            raise ConfigError(f"var {key!r} in {where} uses ${{{unknown.group(1)}}}, which is not defined "
                              f"(or the vars refer to each other in a circle)")
    return values


def stage_config(stage: str):
    return importlib.import_module(STAGE_MODULES[stage]).Config


def check_options(stage: str, options: dict, where: str) -> dict:
    """The step's options, type-checked against the stage's own options (unknown keys refused)."""
    known = {f.name: ann for f, ann in _fields(stage_config(stage))}
    checked = {}
    for raw_key, value in options.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            raise ConfigError(f"{where}: `cifd-clip {stage}` has no option {raw_key!r}")
        checked[key] = coerce(key, value, known[key], f"in {where}")
    return checked


def stage_has_option(stage: str, key: str) -> bool:
    return any(f.name == key for f in dataclasses.fields(stage_config(stage)))


TOP_LEVEL_KEYS = {"base", "vars", "steps", "smoke", "plan"}
STEP_KEYS = {"name", "stage", "processes", "config", "options", "skip_if_exists"}


def _merged(base: dict, child: dict) -> dict:
    """The child's entries replace the base's one by one (one level into mappings: vars, smoke's vars...)."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merged(base[key], value) if key == "smoke" else {**base[key], **value}
        else:
            out[key] = value
    return out


def read_recipe_file(path: Path, seen: tuple = ()) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"recipe {path} is its own base")
    data = read_yaml(path)
    unknown = set(data) - TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(f"recipe {path} has unknown top-level keys {sorted(unknown)} "
                          f"(a recipe has {', '.join(sorted(TOP_LEVEL_KEYS))})")
    if "base" in data:
        base_path = path.parent / str(data.pop("base"))
        if not base_path.is_file():
            raise ConfigError(f"recipe {path} starts from {base_path}, which does not exist")
        data = _merged(read_recipe_file(base_path, (*seen, path.resolve())), data)
    return data


def load_recipe(path: str | Path, overrides: dict[str, str] | None = None, smoke: bool = False) -> Recipe:
    """Read a recipe; `overrides` replace vars (the command line's --var NAME=VALUE); `smoke` applies the
    recipe's smoke block (its vars replace the recipe's, its options are set on every step that has them)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    data = read_recipe_file(path)
    raw_vars = dict(data.get("vars") or {})
    smoke_block = data.get("smoke") or {}
    if smoke:
        if not smoke_block:
            raise ConfigError(f"recipe {path} has no smoke block, so it cannot run with --smoke-data")
        raw_vars.update(smoke_block.get("vars") or {})
    raw_vars.update(overrides or {})
    if "out" not in raw_vars:
        raise ConfigError(f"recipe {path} needs a var `out` (the folder all its outputs go to)")
    variables = resolve_vars(raw_vars, str(path))
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError(f"recipe {path} needs a list of steps")
    steps, seen = [], set()
    for i, raw in enumerate(raw_steps, 1):
        where = f"step {i} of {path}"
        if not isinstance(raw, dict) or "name" not in raw or "stage" not in raw:
            raise ConfigError(f"{where} needs a name and a stage")
        name, stage = str(raw["name"]), str(raw["stage"])
        where = f"step {name!r} of {path}"
        if set(raw) - STEP_KEYS:
            raise ConfigError(f"{where} has unknown keys {sorted(set(raw) - STEP_KEYS)} (a step has "
                              f"{', '.join(sorted(STEP_KEYS))})")
        if name in seen:
            raise ConfigError(f"{where}: two steps are called {name!r}")
        seen.add(name)
        if stage not in STAGE_MODULES:
            raise ConfigError(f"{where}: stage {stage!r} cannot run in a recipe (it can run: "
                              f"{', '.join(STAGE_MODULES)})")
        processes = str(raw.get("processes", "one" if stage in SINGLE_PROCESS_STAGES else "all"))
        if processes not in PROCESSES:
            raise ConfigError(f"{where}: processes must be 'all' or 'one', got {processes!r}")
        if processes == "all" and stage in SINGLE_PROCESS_STAGES:
            raise ConfigError(f"{where}: `cifd-clip {stage}` runs as one process (processes: one)")
        options = {}
        if raw.get("config"):  # a stage config file (relative to the recipe) under the step's own options
            config_file = path.parent / str(raw["config"])
            if not config_file.is_file():
                raise ConfigError(f"{where} reads {config_file}, which does not exist")
            options.update(read_yaml(config_file))
        options.update(raw.get("options") or {})
        if smoke:
            options.update({k: v for k, v in (smoke_block.get("options") or {}).items()
                            if stage_has_option(stage, str(k).replace("-", "_"))})
            options.update((smoke_block.get("steps") or {}).get(name) or {})
        # `~` (null) removes an option a step inherited through a YAML anchor: the stage's default applies
        options = {k: v for k, v in options.items() if v is not None}
        options = check_options(stage, substitute(options, variables, where), where)
        skip_if = raw.get("skip_if_exists")
        steps.append(Step(name, stage, processes, options,
                          substitute(str(skip_if), variables, where) if skip_if else None))
    plan = substitute(dict(data.get("plan") or {}), variables, f"the plan block of {path}")
    return Recipe(path, variables, steps, plan)
