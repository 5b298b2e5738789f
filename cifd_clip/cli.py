"""The `cifd-clip` entry point: one subcommand per pipeline stage.

Each stage lives in `cifd_clip/commands/<stage>.py` and exposes `Config` (a dataclass,
see config.py), `run(cfg)` and a module docstring used as its help. Command modules keep
their top-level imports light so that `--help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from . import config as config_lib
from . import runlog
from .errors import UserError
from .output_checks import release_all_locks

# (subcommand, module) in pipeline order; a stage is listed only once it is built.
STAGES = [
    # ("stage-name", "cifd_clip.commands.stage_module"),
    ("make-demo-data", "cifd_clip.commands.make_demo_data"),
    ("make-shards", "cifd_clip.commands.make_shards"),
    ("embed", "cifd_clip.commands.embed"),
    ("train-rdm", "cifd_clip.commands.train_rdm"),
    ("train", "cifd_clip.commands.train"),
    ("distill", "cifd_clip.commands.distill"),
    ("eval", "cifd_clip.commands.eval"), ("bench", "cifd_clip.commands.bench"),
    ("export", "cifd_clip.commands.export"),
    ("demo", "cifd_clip.commands.demo"),
    # paper-scale runs: a recipe's cost, then its steps under torchrun
    ("plan", "cifd_clip.commands.plan"),
    ("launch", "cifd_clip.commands.launch"),
    # the classification path
    ("cls-make-demo-data", "cifd_clip.commands.cls_make_demo_data"),
    ("cls-train", "cifd_clip.commands.cls_train"),
    ("cls-embed", "cifd_clip.commands.cls_embed"),
    ("cls-train-rdm", "cifd_clip.commands.cls_train_rdm"),
    ("cls-distill", "cifd_clip.commands.cls_distill"),
    ("cls-eval", "cifd_clip.commands.cls_eval"),
    ("cls-export", "cifd_clip.commands.cls_export"),
    ("cls-demo", "cifd_clip.commands.cls_demo"),
]


def _load_stage(module_name: str):
    module = importlib.import_module(module_name)
    doc = (module.__doc__ or "").strip()
    return module, doc.splitlines()[0] if doc else "", doc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifd-clip",
        description="CIFD distillation for open_clip models: embed a teacher once, train rate-distortion "
                    "modules on its embeddings, distill a small student, evaluate and export it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="STAGE")
    sub.required = True
    for name, module_name in STAGES:
        module, summary, doc = _load_stage(module_name)
        stage_parser = sub.add_parser(name, help=summary, description=doc,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        config_lib.build_parser(module.Config, stage_parser)
        stage_parser.set_defaults(_run=(module, name))
    return parser


def main(argv=None) -> int:
    runlog.setup_console()
    parser = build_parser()
    args = parser.parse_args(argv)
    module, name = args._run
    try:
        cfg = config_lib.from_namespace(module.Config, args)
        result = module.run(cfg)
    except UserError as e:
        print(f"cifd-clip {name}: error: {e}", file=sys.stderr)
        runlog.record_failure(name, e)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"cifd-clip {name}: interrupted", file=sys.stderr)
        runlog.record_failure(name, e)
        return 130
    except (OSError, RuntimeError) as e:
        if not disk_full(e):
            runlog.record_failure(name, e)
            raise
        print(f"cifd-clip {name}: error: the disk is full ({one_line(e)}); free some space and run the command "
              f"again (a training run continues with --resume latest, embed resumes by itself)", file=sys.stderr)
        return 1
    except BaseException as e:
        runlog.record_failure(name, e)
        raise
    finally:
        runlog.close_run_logs()
        release_all_locks()
    return int(result) if isinstance(result, int) else 0


def disk_full(error: BaseException) -> bool:
    """ENOSPC, also as torch's and safetensors' writers report it (a RuntimeError naming a failed write)."""
    import errno
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    text = str(error).lower()
    return "no space left" in text or ("pytorchstreamwriter" in text and "write" in text) or "file write failed" in text


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def entry() -> None:
    """The `cifd-clip` command and `python -m cifd_clip`: main(), then the process's end (see end_process)."""
    from .engine.distributed import end_process

    try:
        code = main()
    except SystemExit as e:  # argparse's usage errors (it has printed them) and --help
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    end_process(code)


if __name__ == "__main__":
    entry()
