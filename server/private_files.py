"""Files under ``OPTISCOPE_HOME`` are the user's alone: directories 0700, files 0600.

The SQLite database holds every run's config and metrics (and token hashes); ``server.json`` says
where the local server listens. Other local users have no business reading either, whatever the
umask. SQLite creates its ``-wal``/``-shm`` files with the database file's mode, so creating the
database 0600 before SQLite opens it covers those too.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make the leaf 0700 when it belongs to us."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _tighten(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty if missing (0600 from the start, no window) and make it 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    _tighten(path, FILE_MODE)
    return path


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


def tighten_sqlite_files(database: Path) -> None:
    """0600 on an existing database and its ``-wal``/``-shm`` (older versions created them 0644)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = database.with_name(database.name + suffix)
        if candidate.exists():
            _tighten(candidate, FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    try:
        if path.stat().st_uid == os.getuid() and (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)
    except (PermissionError, FileNotFoundError):  # not ours / racing delete: leave it alone
        pass
