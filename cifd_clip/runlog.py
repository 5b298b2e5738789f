"""Log lines for a person: on stderr, and in `out.log` in the run folder (open_clip_train's name).

The main process (rank 0) writes `<run folder>/out.log`; with --log-every-rank every other process writes
`out-RANK.log` beside it (open_clip_train's `out-{rank}.log`). A resumed run appends. In a multi-process run every
line, on stderr and in the files, carries the host and the rank (`[node1 rank 3/8]`), so that lines torchrun
interleaves can be told apart. The file holds what stderr shows, the progress lines a terminal's live bar replaces
(off a terminal they are on stderr too) and the one-sentence error a failed run ends with.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Optional

LOG_FILE = "out.log"
FORMAT = "%(asctime)s {stamp}%(levelname)s %(message)s"
FILE_ONLY = {"file_only": True}  # logging `extra=`: a line for the log file, not for stderr

_files: list[logging.Handler] = []


def stamp(rank: int, world_size: int) -> str:
    """`[host rank R/N] ` in a multi-process run, else nothing."""
    return f"[{socket.gethostname().split('.')[0]} rank {rank}/{world_size}] " if world_size > 1 else ""


def _env_rank() -> tuple[int, int]:
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1


class _NotFileOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def setup_console(level: int = logging.INFO) -> None:
    """stderr logging for the `cifd-clip` command (what logging.basicConfig does, with the rank stamp of a torchrun
    process and without the lines meant for the log file only). Nothing changes where logging is set up already."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT.format(stamp=stamp(*_env_rank())), datefmt="%H:%M:%S"))
    handler.addFilter(_NotFileOnly())
    root.addHandler(handler)
    root.setLevel(level)


class _RunLogHandler(logging.FileHandler):
    """A log file that goes quiet when it cannot be written (a full disk): the run's own error handling speaks
    then, not a "Logging error" traceback per line."""

    def handleError(self, record: logging.LogRecord) -> None:
        self.setLevel(logging.CRITICAL + 1)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last lines could not be flushed (a full disk)
            pass


def open_run_log(run_dir: str | os.PathLike, rank: int = 0, world_size: int = 1, every_rank: bool = False,
                 name: str = LOG_FILE) -> Optional[Path]:
    """Start writing this process's lines to the run folder's log file (rank 0: `name`, out.log; another rank:
    out-RANK.log with `every_rank`, else none). A log file opened before (an earlier run in this process) is
    closed first."""
    close_run_logs()
    if rank != 0 and not every_rank:
        return None
    stem = name[:-4] if name.endswith(".log") else name
    path = Path(run_dir) / (name if rank == 0 else f"{stem}-{rank}.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _RunLogHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT.format(stamp=stamp(rank, world_size)),
                                           datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    _files.append(handler)
    logging.getLogger("cifd_clip").info("logging to %s (pid %d)", path, os.getpid())
    return path


def record_failure(stage: str, error: BaseException) -> None:
    """The sentence (or traceback) a failed run ends with, into its log file; stderr has it from the CLI."""
    if not _files:
        return
    log = logging.getLogger("cifd_clip")
    from .errors import UserError
    # only text reaches the record: a handler that keeps records (pytest's) must not keep the error's frames alive
    if isinstance(error, UserError):
        log.error("cifd-clip %s: error: %s", stage, str(error), extra=FILE_ONLY)
    elif isinstance(error, KeyboardInterrupt):
        log.error("cifd-clip %s: interrupted", stage, extra=FILE_ONLY)
    else:
        import traceback
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
        log.error("cifd-clip %s: failed\n%s", stage, text, extra=FILE_ONLY)


def close_run_logs() -> None:
    root = logging.getLogger()
    while _files:
        handler = _files.pop()
        root.removeHandler(handler)
        handler.close()
