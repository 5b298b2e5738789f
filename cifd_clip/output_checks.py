"""Where stages write, checked before the expensive work starts: the path's kind, writability, free space,
results that would be replaced, and a lock so that two runs never write the same place at once."""
from __future__ import annotations

import atexit
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from .errors import UserError

LOCK_FILE = ".cifd-clip.lock"
_held_locks: dict = {}  # folder -> open file: a lock lives as long as the process (the OS drops it on any exit)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder_target(path: str | os.PathLike, option: str) -> Path:
    """A folder the stage will create or write into: refuse a file in its place, or an unwritable parent."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file; give a folder")
    existing = _nearest_existing(path)
    if existing.is_file():
        raise UserError(f"{option} {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path} is not writable (no write permission in {existing})")
    return path


def check_file_target(path: str | os.PathLike, option: str) -> Path:
    """A file the stage will write: refuse a folder in its place, or an unwritable folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name")
    check_folder_target(path.parent if str(path.parent) else Path("."), f"the folder of {option}")
    return path


def refuse_to_replace(paths: Iterable[Path], option: str, overwrite: bool, what: str) -> None:
    """Results that exist are kept unless the user asked for --overwrite."""
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{option} {existing[0].parent if len(existing) > 1 else existing[0]} already holds {what} "
                        f"({existing[0].name}); pass --overwrite to replace it, or choose another place")


def check_free_space(folder: str | os.PathLike, needed_bytes: float, what: str, margin: float = 1.1,
                     hint: str = "") -> None:
    """`needed_bytes` (with a 10% margin) fit on the disk of `folder`; `hint` ends the sentence when they do not."""
    folder = _nearest_existing(Path(folder))
    free = shutil.disk_usage(folder).free
    if needed_bytes * margin > free:
        raise UserError(f"not enough disk space in {folder} for {what}: about {_size(needed_bytes)} needed, "
                        f"{_size(free)} free{'; ' + hint if hint else ''}")


def free_bytes(path: str | os.PathLike) -> tuple[Path, int]:
    """The nearest existing folder of `path` and the free bytes on its disk."""
    folder = _nearest_existing(Path(path))
    return folder, shutil.disk_usage(folder).free


def size_text(n: float) -> str:
    return _size(n)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def hold_run_lock(folder: str | os.PathLike, what: str) -> None:
    """Take an exclusive lock on `folder` for the rest of this process (released on any exit, kill -9
    included: the operating system drops it). A second run writing the same folder is refused."""
    import fcntl

    folder = Path(folder).absolute()
    if str(folder) in _held_locks:
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{what} {folder} is in use by another cifd-clip run ({holder}); wait for it to finish or "
                        f"write elsewhere") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    if not _held_locks:
        atexit.register(release_all_locks)
    _held_locks[str(folder)] = (handle, created)


def release_run_lock(folder: str | os.PathLike) -> None:
    """Drop the lock and its file; a folder made only to hold the lock (the run failed first) goes too, with the
    log file that run began in it."""
    folder = Path(folder).absolute()
    held: Optional[tuple] = _held_locks.pop(str(folder), None)
    if held is None:
        return
    handle, created = held
    (folder / LOCK_FILE).unlink(missing_ok=True)
    handle.close()
    if created:
        left = list(folder.iterdir())
        if left and all(_is_run_log(p) for p in left):  # the log of a run that failed before it wrote anything
            for p in left:
                p.unlink(missing_ok=True)
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass


def _is_run_log(path: Path) -> bool:
    """out.log, out-RANK.log, FILE_out.log (runlog.py's names)."""
    name = path.name
    return path.is_file() and name.endswith(".log") and (name.startswith("out") or "_out" in name)


def release_all_locks() -> None:
    for folder in list(_held_locks):
        release_run_lock(folder)
