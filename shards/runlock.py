"""One run per output folder: an exclusive lock held for the whole run, and per-run temp names.

Every stage that writes an output folder (`longcap shards`, `recaption`, `build`, `train`) calls
`lock_output(folder)` first. The lock is `fcntl.flock` on `folder/.longcap.lock`, which records
the holder's pid, host, start time, run and command line; a second run on the same folder gets
`OutputLocked` at once (the CLIs exit 2 with its message, naming the holder's pid). The kernel
drops the lock when the holder exits, however it dies, so a killed run never leaves a stale
lock. Within one process the lock is re-entrant (a build holds its output and the recaption
stage locks it again).

flock is advisory and local: it serialises runs on one machine, or on a shared filesystem that
supports flock (NFSv4, Lustre with flock); see docs/FORMAT.md.

On an object store (`s3://...`) there is no flock. There the lock is an object,
`PREFIX/.longcap.lock`, holding the same holder record plus this run's token: a run that finds
one held by another refuses (OutputLocked, naming the holder), writes its own otherwise, reads it
back to check that it won, and deletes it when done. A lock object left by a killed run is
taken over when its holder was on this host and its pid is gone; one from another host must be
deleted by hand (the message says which object). The check-then-write has a window of one
round trip, so two runs started within it on different hosts could both proceed: the lock
object guards against the common mistake (a second run on a busy prefix), not against a race.

Temp files carry the run's token (`<name>.<pid>-<hex>.tmp`), so a run removes only its own, and
the temps of a run whose process is gone (`remove_stale_temps`), never a live run's.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import time
import uuid
from pathlib import Path

LOCK_NAME = ".longcap.lock"
# pid and a random part: unique per process, also across hosts sharing a folder.
RUN_TOKEN = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
_TEMP = re.compile(r"\.(\d+)-([0-9a-f]{8})\.tmp$")


class OutputLocked(ValueError):
    """Another run holds this output folder. A ValueError so that every CLI reports it as a usage
    error (exit 2), like a bad config."""


class _Held:
    def __init__(self, fd: int):
        self.fd, self.count = fd, 1


_held: dict[str, _Held] = {}


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "a run whose pid is not recorded yet"
    return (
        f"pid {info['pid']} on {info.get('host', '?')}, {info.get('run', 'a run')} started "
        f"{info.get('started', '?')}: {info.get('argv', '?')}"
    )


def _holder_info(what: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": what,
        "argv": " ".join(sys.argv)[:500],
        "token": RUN_TOKEN,
    }


def _lock_object(root, what: str):
    """The lock of an output prefix on an object store (see the module docstring)."""
    path = root / LOCK_NAME
    key = str(path)
    if key in _held:
        _held[key].count += 1
        return path
    if path.exists():
        try:
            info = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        same_host = info.get("host") == socket.gethostname()
        dead = same_host and isinstance(info.get("pid"), int) and not _alive(info["pid"])
        if info.get("token") != RUN_TOKEN and not dead:
            raise OutputLocked(
                f"{root}: in use by another run ({_holder(path)}); {what} would corrupt it. Wait "
                f"for that run to end or stop it, or use another output prefix; if that run is "
                f"gone (killed on another host), delete {path} and run again"
            )
    path.write_text(json.dumps(_holder_info(what)))
    try:
        won = json.loads(path.read_text()).get("token") == RUN_TOKEN
    except (OSError, ValueError):
        won = False
    if not won:
        raise OutputLocked(
            f"{root}: another run took the lock at the same time ({_holder(path)}); "
            "wait for it to end, or use another output prefix"
        )
    _held[key] = _Held(-1)
    return path


def lock_output(folder, what: str):
    """Take the exclusive lock of an output folder (created if absent) for the rest of this run
    (until `unlock_output` or the process exits); returns the lock file. Raises OutputLocked
    naming the holder when another process holds it. An object-store prefix (s3://...) gets a
    lock object instead of flock (module docstring)."""
    from shards import storage

    if storage.is_uri(folder):
        return _lock_object(storage.as_path(folder), what)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    key = str(path.resolve())
    if key in _held:
        _held[key].count += 1
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputLocked(
            f"{root}: in use by another run ({_holder(path)}); {what} would corrupt it. Wait "
            "for that run to end or stop it, or use another output folder"
        ) from None
    info = _holder_info(what)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    _held[key] = _Held(fd)
    return path


def unlock_output(folder) -> None:
    """Release one `lock_output` of this process; the lock goes at the last release."""
    from shards import storage

    remote = storage.is_uri(folder)
    if remote:
        lock = storage.as_path(folder) / LOCK_NAME
        key = str(lock)
    else:
        key = str((Path(folder) / LOCK_NAME).resolve())
    held = _held.get(key)
    if held is None:
        return
    held.count -= 1
    if held.count == 0:
        del _held[key]
        if remote:
            lock.unlink(missing_ok=True)  # the lock object goes with the run
        else:
            os.close(held.fd)  # closing the descriptor releases the flock


def temp_path(final: str | os.PathLike) -> Path:
    """This run's temporary name for a file that becomes `final` by rename."""
    p = Path(final)
    return p.with_name(f"{p.name}.{RUN_TOKEN}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temps in `folder` left by runs whose process is gone (a killed run); keep this
    run's and any live process's. Returns what was removed."""
    from shards import storage

    if storage.is_uri(folder):
        return []  # nothing is written under a temp name there (files are staged locally)
    removed = []
    for p in Path(folder).glob("*.tmp"):
        m = _TEMP.search(p.name)
        if m is None or f"{m[1]}-{m[2]}" == RUN_TOKEN or _alive(int(m[1])):
            continue  # not ours to judge, ours, or a live run's
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
