"""Files and directories the service keeps to itself: 0600 and 0700 whatever the umask.

The state DB holds the audit bodies and the token hashes, the spool holds flows, the
logs name addresses and rules: none of it is for other local users.  The mode is given
at creation (os.open / os.mkdir), so no window exists where the file is readable, and
tightened on files an older version left wider.  A file created by root (``sudo
flowenricher token create``) in a directory the service owns is given to the
directory's owner, so the service can still write it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o600
DIR_MODE = 0o700

__all__ = ["DIR_MODE", "FILE_MODE", "open_private", "private_dir", "private_file"]


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` and its missing parents as 0700 (an existing directory is left as the
    operator made it: it may be shared with a group on purpose)."""
    target = Path(path)
    missing = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            os.mkdir(directory, DIR_MODE)
            _give_to_parent_owner(directory)
    return target


def private_file(path: str | os.PathLike[str]) -> Path:
    """Make sure `path` exists as a 0600 file (creating its directory as 0700): done before
    SQLite opens a database, since SQLite gives its -wal, -shm and -journal files the mode
    of the database file."""
    open_private(path, "ab", make_parent=True).close()
    return Path(path)


def open_private(path: str | os.PathLike[str], mode: str = "a", *, make_parent: bool = False,
                 **kwargs: Any) -> IO[Any]:
    """`open(path, mode)` for writing ("w", "a", "x", with "b" or not), the file created
    0600 and an existing one of ours tightened to 0600; its directory is created (0700)
    only with `make_parent`, so a missing log directory stays an error the caller counts."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    if "a" in mode:
        flags |= os.O_APPEND
    elif "x" in mode:
        flags |= os.O_EXCL
    elif "w" in mode:
        flags |= os.O_TRUNC
    else:
        raise ValueError(f"open_private: mode {mode!r} does not write")
    target = Path(path)
    if make_parent:
        private_dir(target.parent)
    created = not target.exists()
    fd = os.open(target, flags, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 & ~FILE_MODE:
            with contextlib.suppress(PermissionError):  # not ours: its owner decides
                os.fchmod(fd, FILE_MODE)
        if created:
            _give_to_parent_owner(target, fd)
        return open(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def _give_to_parent_owner(path: Path, fd: int | None = None) -> None:
    """Root creating a file in the service's directory hands it to the service."""
    if os.geteuid() != 0:
        return
    parent = path.parent.stat()
    if parent.st_uid != 0:
        if fd is not None:
            os.fchown(fd, parent.st_uid, parent.st_gid)
        else:
            os.chown(path, parent.st_uid, parent.st_gid)


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Replace `path` with `text` in one rename; durable on return.

    The file gets `mode`, else the mode of the file it replaces, else 0600: a config may
    hold passwords, so the temporary file is never readable by more than the owner
    before it has its final mode.
    """
    if mode is None:
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
