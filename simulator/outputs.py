"""What a command may write: never one of its own inputs, never a folder it did not make.

Every command names its inputs and outputs here before it does any work, so a slip of the
keyboard (``--csv`` naming the teacher, ``--out`` naming the run folder or its parent) is a
one-line ``OutputError`` and nothing is lost. Paths are compared after resolving symbolic links
and ``..``; an existing file reached under two names (a hard link) counts as the same file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from simulator.errors import OutputError
from simulator.fileio import is_stale_temporary, probe_writable


def resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _same(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    if resolved(a) == resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(inner: str | os.PathLike, outer: str | os.PathLike) -> bool:
    """``inner`` is ``outer`` or lies below it."""
    i, o = resolved(inner), resolved(outer)
    return i == o or o in i.parents


def _given(paths: Iterable) -> list:
    return [p for p in paths if p is not None and str(p) != ""]


def check_file_outputs(outputs: Mapping[str, str | os.PathLike | None],
                       inputs: Iterable[str | os.PathLike | None] = (),
                       suffixes: Mapping[str, tuple[str, ...]] | None = None) -> None:
    """Refuse file outputs (flag -> path) that are folders, that name an input, that end in
    another suffix than ``suffixes[flag]``, that name one file twice, or whose folder cannot be
    written."""
    inputs = _given(inputs)
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        p = Path(path)
        wanted = (suffixes or {}).get(flag)
        if wanted and p.suffix.lower() not in wanted:
            raise OutputError(f"{flag} {path}: must end in {' or '.join(wanted)}")
        if p.is_dir():
            raise OutputError(f"{flag} {path}: is a folder; give a file name")
        for source in inputs:
            if _same(p, source):
                raise OutputError(f"{flag} {path}: is this command's input {source}; writing it "
                                  f"would destroy it, choose another name")
        key = resolved(p)
        if key in seen:
            raise OutputError(f"{seen[key]} and {flag} both name {path}; give each its own file")
        seen[key] = flag
        probe_writable(p.parent, flag)


def check_folder_output(flag: str, folder: str | os.PathLike,
                        inputs: Iterable[str | os.PathLike | None] = (), *,
                        reusable: Callable[[Path], bool], kind: str,
                        writes: Iterable[str] | None = None) -> None:
    """Refuse an output folder that exists as a file, that holds anything but what this command
    writes (it may be new, empty, or ``reusable``: a ``kind`` this command made before), or
    whose writing would touch an input. ``writes``: the names the command puts inside the
    folder, which must not be or hold an input; None: the command replaces the whole folder, so
    no input may lie in it."""
    folder = Path(folder)
    for source in _given(inputs):
        if writes is None and _inside(source, folder):
            raise OutputError(f"{flag} {folder}: holds this command's input {source}; replacing "
                              f"it would delete that, choose another folder")
        for name in writes or ():
            if _inside(source, folder / name):
                raise OutputError(f"{flag} {folder}: writing {folder / name} would replace this "
                                  f"command's input {source}; choose another folder")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder}: exists and is not a folder")
    if folder.is_dir() and not is_empty_folder(folder) and not reusable(folder):
        raise OutputError(f"{flag} {folder}: holds other files and is not a {kind}; archnet "
                          f"writes only into a new or empty folder or a {kind} it made")
    # a replaced folder is written beside itself, a folder written into is written inside
    probe_writable(folder if writes is not None else folder.parent, flag)


def is_empty_folder(folder: Path) -> bool:
    """No entries but the leftovers of interrupted writes."""
    try:
        return all(is_stale_temporary(p) for p in folder.iterdir())
    except OSError:
        return False
