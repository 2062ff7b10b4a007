"""Helpers of the hostile-input suite: the command run in-process as a user runs it, and
snapshots that prove no pre-existing file changed."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from archnet.cli import main

ROOT = Path(__file__).resolve().parents[2]
DIGITS_TEACHER = ROOT / "reports" / "teachers" / "digits_resnet8.pt"
FAST = ["--steps-per-period", "1", "--batch-size", "8", "--max-images", "32",
        "--calibration-images", "32", "--threads", "1", "--no-progress"]
def archnet(capsys, *argv) -> tuple[int, str, str]:
    """``archnet ARGV`` in this process: (exit code, stdout, stderr). An exception escaping
    ``main`` (a traceback for the user) fails the test; so does argparse exiting otherwise
    than with code 2."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: usage errors and --help
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *names) -> str:
    """The single ``archnet: error:`` line of ``err``, which names each of ``names``."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("archnet: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def snapshot(*roots) -> dict[str, str]:
    """Every file under ``roots`` (or the file itself) by path: its SHA-256."""
    found = {}
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            found[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def write_tiny_bert(folder) -> str:
    """The text tests' tiny random BERT folder (tests/archnet/text/conftest.py)."""
    spec = importlib.util.spec_from_file_location(
        "text_conftest", ROOT / "tests" / "archnet" / "text" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tiny_bert(folder)
