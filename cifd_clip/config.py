"""Typed stage configs: dataclass fields become `--dashed-options`, a YAML file
(`--config FILE.yaml`) fills the same fields, and the command line overrides both.

Every stage's config is a dataclass whose fields carry their help text; this module
turns it into an argparse parser, validates YAML against it and saves the resolved
values beside a run's outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from .errors import ConfigError

REQUIRED = "__required__"


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None, aliases: Sequence[str] = (),
           also: Sequence[str] = (), append: bool = False):
    """A config field with a default value. `aliases`: old names still accepted (flag and YAML key), with a
    deprecation note. `also`: other tools' names for the same setting (open_clip_train's, CLIP_benchmark's),
    accepted and listed in --help as such. `append` (list options): a repeated flag adds to the list instead of
    replacing it."""
    meta = {"help": help, "choices": choices, "aliases": tuple(aliases), "also": tuple(also), "append": append}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: list(default) if isinstance(default, list) else dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def redefault(cls, name: str, default: Any):
    """`cls`'s option `name` (its help, choices and other names) with another default, for a stage whose default
    differs from the one the option is declared with; the table that holds that default says why."""
    declared = next(f for f in dataclasses.fields(cls) if f.name == name)
    return option(default, **declared.metadata)


def required(help: str, *, choices: Sequence[Any] | None = None):
    """A config field the user must give (on the command line or in --config)."""
    return dataclasses.field(default=REQUIRED, metadata={"help": help, "choices": choices, "required": True})


def _unwrap(tp):
    """(base type, is_list, is_optional) of an annotation such as Optional[list[int]]."""
    optional = False
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
        origin = typing.get_origin(tp)
    if origin in (list, typing.List):
        return typing.get_args(tp)[0], True, optional
    return tp, False, optional


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, tp.__name__)


def _coerce_scalar(key: str, value: Any, tp, source: str):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"config key '{key}' {source} must be {_type_name(tp)}, got {value!r}")


def coerce(key: str, value: Any, annotation, source: str = ""):
    """Convert a YAML/CLI value to the field's type or raise a ConfigError naming the key."""
    tp, is_list, optional = _unwrap(annotation)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' {source} must be {_type_name(tp)}, got null")
    if is_list:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        flat = []
        for v in value:  # "--rates 1,2 3" and "--rates 1 2 3" both work
            flat.extend([p for p in v.split(",") if p] if isinstance(v, str) else [v])
        return [_coerce_scalar(key, v, tp, source) for v in flat]
    return _coerce_scalar(key, value, tp, source)


def _fields(cls):
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def build_parser(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--config` and one `--dashed-name` option per field of `cls` to `parser`."""
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file with any of the options below (underscores or dashes); "
                             "command-line options override it. Every option also takes its underscore "
                             "spelling (--batch_size for --batch-size), as CLIP_benchmark's and "
                             "open_clip_train's flags are written")
    for f, annotation in _fields(cls):
        tp, is_list, _ = _unwrap(annotation)
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "required" if default == REQUIRED else f"default: {default!r}"
        help_text = meta.get("help", "")
        if "default" not in help_text:  # a help text that explains its own default keeps it
            help_text = f"{help_text} ({shown})"
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if tp is bool and not is_list:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif is_list:  # one value list per option: a repeated option replaces the earlier list, unless `append`
            kwargs["nargs"] = "+"
            kwargs["metavar"] = tp.__name__.upper()
            if meta.get("append"):
                kwargs["action"] = "extend"
        else:
            kwargs["metavar"] = tp.__name__.upper()
        aliases = ["--" + a.replace("_", "-") for a in meta.get("aliases", ())]
        if aliases:
            kwargs["help"] += f" ({', '.join(aliases)}: deprecated name)"
        also = ["--" + a.replace("_", "-") for a in meta.get("also", ())]
        if also:
            kwargs["help"] += f" ({', '.join(also)}: the same option under open_clip_train's or CLIP_benchmark's name)"
        # CLIP_benchmark's and open_clip_train's own spelling of the same flags (--dataset_root, --batch_size)
        names = (f.name, *meta.get("aliases", ()), *meta.get("also", ()))
        underscored = ["--" + name for name in names if "_" in name]
        parser.add_argument(flag, *aliases, *also, *underscored, **kwargs)
    return parser


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values")
    return data


def _alias_table(cls) -> dict:
    return {alias: f.name for f, _ in _fields(cls) for alias in f.metadata.get("aliases", ())}


def _also_table(cls) -> dict:
    return {name: f.name for f, _ in _fields(cls) for name in f.metadata.get("also", ())}


def resolve(cls, cli_values: dict, config_file: str | None = None):
    """Defaults <- YAML file <- command line; type-checked, unknown and missing keys rejected."""
    known = {f.name: ann for f, ann in _fields(cls)}
    aliases, also = _alias_table(cls), _also_table(cls)
    values: dict[str, Any] = {}
    if config_file:
        for raw_key, value in read_yaml(config_file).items():
            key = str(raw_key).replace("-", "_")
            key = also.get(key, key)
            if key in aliases:
                logging.getLogger(__name__).warning("config key '%s' in %s is deprecated: call it '%s'", raw_key,
                                                    config_file, aliases[key])
                key = aliases[key]
            if key not in known:
                raise ConfigError(f"unknown config key '{raw_key}' in {config_file}")
            values[key] = coerce(key, value, known[key], f"in {config_file}")
    for key, value in cli_values.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{key}'")
        values[key] = coerce(key, value, known[key], "on the command line")
    cfg = cls(**values)
    for f, _ in _fields(cls):
        if getattr(cfg, f.name) == REQUIRED:
            raise ConfigError(f"missing required config key '{f.name}' (give --{f.name.replace('_', '-')} or set it in --config)")
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            raise ConfigError(f"config key '{f.name}' must be one of {list(choices)}, got {getattr(cfg, f.name)!r}")
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def from_namespace(cls, ns: argparse.Namespace):
    values = {k: v for k, v in vars(ns).items() if k not in ("config", "command", "_run")}
    return resolve(cls, values, getattr(ns, "config", None))


def parse(cls, argv: Sequence[str] | None = None, prog: str | None = None):
    """Parse a stage config from argv alone (for scripts and tests)."""
    parser = build_parser(cls, argparse.ArgumentParser(prog=prog))
    return from_namespace(cls, parser.parse_args(argv))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again with --config)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path

