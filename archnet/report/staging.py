"""Writing a whole folder so that a failure leaves nothing half-written.

``staged_folder(final)`` yields an empty temporary folder beside ``final``; when the block ends
without an exception the temporary folder is renamed to ``final`` (an earlier ``final`` is moved
aside first and deleted after, so it stays intact until the new one is complete); on any
exception the temporary folder is removed and ``final`` is untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from archnet.runs import check_report_output
from simulator.errors import OutputError
from simulator.fileio import current_umask, prepare_folder, temp_prefix


def check_target(final: Path, inputs=()) -> None:
    """A report folder replaces ``final`` whole: it must be new, empty or a report, and hold
    none of the ``inputs`` (the run folders reported)."""
    check_report_output(final, inputs)


@contextlib.contextmanager
def staged_folder(final: str | os.PathLike, inputs=()):
    final = Path(final)
    check_target(final, inputs)
    prepare_folder(final.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=".tmp",
                                    dir=final.parent))
    except OSError as exc:
        raise OutputError(f"{final}: cannot write the folder ({exc.strerror})") from None
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=".old",
                                        dir=final.parent))
            os.rmdir(old)
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if old is not None:
                os.rename(old, final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


__all__ = ["check_target", "staged_folder", "write_text"]
