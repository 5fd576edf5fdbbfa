"""Atomic file writes: a temporary file in the target's directory, then a rename.

A reader (or a crash) sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePath
from typing import Callable, IO


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(target: Path, write: Callable[[IO], None], binary: bool = True) -> None:
    target = Path(target)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": "\n"})) as fh:
            write(fh)
        os.chmod(tmp, _umask_mode())  # mkstemp makes files 0600; give them the usual mode
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def display_path(path: str, root: Path | None = None) -> str:
    """A path as written into generated headers and messages: relative to ``root`` (default: the
    current directory) and '/'-separated when possible, so the text does not depend on where it ran."""
    p = Path(path)
    try:
        p = p.resolve().relative_to((root or Path.cwd()).resolve())
    except ValueError:
        pass
    return PurePath(p).as_posix()
