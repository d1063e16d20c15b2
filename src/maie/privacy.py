"""Files stay private to the service user: one umask for the whole process tree, and a check of the data dir.

Recordings, transcripts (in the AOF), the API key and the Redis password all live under the data dir.
``maie`` sets the umask 077 before it creates anything, so every file it or its children (workers,
redis-server) create is 0600 and every directory 0700, whatever call created it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
SCAN_LIMIT = 10_000
"""Entries looked at by :func:`wide_modes`, so a start-up check stays quick on a data dir of many tasks."""


def make_private() -> None:
    """Set the umask for this process and every process it starts (inherited across fork/exec)."""
    os.umask(PRIVATE_UMASK)


def ensure_data_dir(data_dir: Path) -> Path:
    """Create the data dir 0700 (an existing one is left as the operator made it; see :func:`wide_modes`)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return data_dir


def wide_modes(data_dir: Path, limit: int = SCAN_LIMIT) -> list[str]:
    """What under ``data_dir`` group or others can use: the dir itself, then entries with group/other bits.

    Empty when everything is private. Symlinks are not followed; at most ``limit`` entries are examined.
    """
    try:
        mode = data_dir.stat().st_mode
    except FileNotFoundError:
        return []
    problems: list[str] = []
    if mode & 0o077:
        problems.append(f"{data_dir} is mode {stat.S_IMODE(mode):04o} (group/other bits set; want 0700)")
    wide: list[str] = []
    seen = 0
    stack = [data_dir]
    while stack and seen < limit:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                continue  # a socket's own mode is set by redis (700); links point elsewhere
            if st.st_mode & 0o077:
                wide.append(f"{Path(entry.path).relative_to(data_dir)} ({stat.S_IMODE(st.st_mode):04o})")
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
    if wide:
        shown = ", ".join(wide[:5]) + (" ..." if len(wide) > 5 else "")
        problems.append(f"{len(wide)} entr{'y' if len(wide) == 1 else 'ies'} under it open to group/other: {shown}")
    return problems


def wide_modes_warning(data_dir: Path) -> str | None:
    """One warning line for start-up and ``maie doctor``, or None when the data dir is private."""
    problems = wide_modes(data_dir)
    if not problems:
        return None
    return (
        "data dir is not private: "
        + "; ".join(problems)
        + f". Fix with: chmod -R go-rwx {data_dir} (recordings and transcripts live there)"
    )
