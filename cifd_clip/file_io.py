"""Reading and writing the project's files: atomic writes, and reads that fail as one sentence.

Writes go to a hidden temporary sibling that is flushed to disk, renamed over the target and the folder
synced, so a reader never sees half a file — not after a killed process, and not after a power loss. Reads
of our own file kinds (checkpoints, caches' JSON, RDM and zero-shot files) say which file is wrong and how,
never with a traceback, and never suggest loading a file unsafely.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .errors import UserError

TMP_MARK = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], mode: int = 0o644) -> Path:
    """Call `write(tmp)` on a hidden sibling of `path`, sync it, then rename it over `path` (removed on failure).
    `mode` is the new file's permission bits (readable by everyone, like any file a user makes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise _os_error(e, path) from None
    except Exception:
        # torch and safetensors report a full disk in their own words ("unexpected pos", "I/O error"): look
        if _nearly_full(path.parent):
            raise _os_error(OSError(errno.ENOSPC, "no space left on device"), path) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def _os_error(e: OSError, path: Path) -> UserError:
    if e.errno == errno.ENOSPC:
        return UserError(f"the disk is full: could not write {path}; free some space and run the command again")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {path}: permission denied")
    return UserError(f"could not write {path}: {e.strerror or e}")


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete temporary siblings left by killed writers of this process's kind (not of live processes)."""
    folder = Path(folder)
    removed = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(f"*{TMP_MARK}*"):
        pid = tmp.name.rsplit(TMP_MARK, 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_is_file(path: Path, what: str, missing_hint: str = "") -> None:
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist{missing_hint}")


def read_torch_file(path: str | os.PathLike, what: str, missing_hint: str = "") -> Any:
    """`torch.load(path, weights_only=True)`: only tensors and plain containers are ever loaded."""
    import torch

    path = Path(path)
    _check_is_file(path, what, missing_hint)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive (old torch: a pickle)
        kind = "it is empty" if not head else "it is not a zip archive, as torch.save writes"
        raise UserError(f"could not read {what} {path}: it is not a PyTorch checkpoint ({kind})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        raise UserError(f"could not read {what} {path}: {_why_unreadable(e)}") from None


def _why_unreadable(e: Exception) -> str:
    import pickle

    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "weights_only" in text.lower():
        return ("it holds Python objects besides tensors and plain containers, which are never loaded (a "
                "checkpoint from an untrusted source could run code)")
    if "zip archive" in text or "central directory" in text or isinstance(e, (pickle.UnpicklingError, EOFError)):
        return "it is not a PyTorch checkpoint, or it is truncated"
    first = text.strip().splitlines()[0][:160] if text.strip() else type(e).__name__
    return f"it is a corrupt PyTorch checkpoint ({first})"


def read_json_file(path: str | os.PathLike, what: str, missing_hint: str = "") -> Any:
    path = Path(path)
    _check_is_file(path, what, missing_hint)
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def check_format(payload: Any, path, what: str, fmt: str, version: int, *, version_key: str = "format_version",
                 exact: bool = True, remedy: str = "") -> dict:
    """Refuse a payload that is not `fmt`, or of another version (`exact`) or a newer one (one sentence each).
    `what` names the kind with its article ("an RDM checkpoint")."""
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise UserError(f"{path} is not {what}" + (f" ({remedy})" if remedy else ""))
    found = payload.get(version_key)
    if not isinstance(found, int) or found > version or (exact and found != version):
        raise UserError(f"{path} has format version {found}, this cifd-clip reads version {version}"
                        + (f"; {remedy}" if remedy else ""))
    return payload
