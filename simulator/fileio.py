"""Writing files so that a crash or kill never leaves a half-written one where a good one was.

Every write goes to a temporary name beside its target, is fsynced, then renamed over it. The
temporary name carries the writer's host and process id (``.NAME.HOST-PID.XXXXXXXX.tmp``), so
the next write into the same folder can tell the leftovers of a writer that died (killed, power
lost) from those of one still writing, and removes the former. A folder that cannot be written
(read-only, full, a name that is a folder) is an ``OutputError`` naming the file, never a
traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from simulator.errors import OutputError

# leftovers from another machine (a folder shared over the network) are removed only when this
# old: their writer cannot be asked whether it still runs
FOREIGN_STALE_SECONDS = 24 * 3600
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?:tmp|old)$")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:64] or "host"


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporary names for a target called ``name``."""
    return f".{name}.{_host()}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary of an interrupted write (its writer is gone)."""
    m = _TEMP.match(path.name)
    if not m:
        return False
    if m["host"] == _host():
        return not _pid_alive(int(m["pid"]))
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except OSError:
        return False
    return age > FOREIGN_STALE_SECONDS


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that interrupted writes left in ``folder``."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for p in entries:
        if not is_stale_temporary(p, now):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:  # another process cleaned it first, or it is not ours to remove
            pass
    return removed


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def prepare_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` (and parents) and sweep its stale temporaries; one-line errors."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{folder}: cannot be the {what}: it exists and is not a folder") from None
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the {what} ({_why(exc)})") from None
    remove_stale_temporaries(folder)
    return folder


def probe_writable(folder: str | os.PathLike, flag: str = "") -> None:
    """Fail now, before any work, when nothing can be created in ``folder`` (or, while it does
    not exist yet, in its nearest existing ancestor): a read-only or full folder, a file."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    name = f"{flag} {folder}" if flag else str(folder)
    if not p.is_dir():
        raise OutputError(f"{name}: {p} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix("probe"), suffix=".tmp", dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"{name}: cannot write in {p} ({_why(exc)})") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary name beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    prepare_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({_why(exc)})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise OutputError(f"{path}: cannot write ({_why(exc)})") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
