"""Directories a program makes on its way (a shadow dir, a mount point), and taking them back.

A run that fails at start-up leaves the host as it found it: it removes the directories it made
itself, innermost first, and only while they are empty; a directory that existed before it ran,
or that someone else has put something in since, is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def missing(path: str | os.PathLike[str]) -> list[Path]:
    """The directories of `path` (itself included) that do not exist yet, outermost first."""
    absent: list[Path] = []
    current = Path(os.path.abspath(path))
    while not current.exists() and not current.is_symlink() and current != current.parent:
        absent.append(current)
        current = current.parent
    return absent[::-1]


def undo(made: Sequence[Path]) -> None:
    """Remove the directories of `made` (as `missing` listed them before this run made them),
    innermost first, each only if it is empty; stop at the first one that is not."""
    for directory in reversed(made):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError:
            return
