"""Fixtures of the hostile-input suite: a real (tiny) run folder, and a private copy of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from archnet.cli import main
from hostile_helpers import DIGITS_TEACHER, FAST


@pytest.fixture(scope="session")
def made_run(tmp_path_factory) -> Path:
    """A real run folder: `archnet convert teacher.pt --out run` of the digits teacher (one step
    a period), verified on one chip; paths relative, as a user in that folder types them. Tests
    copy it (``work``) before touching it."""
    base = tmp_path_factory.mktemp("made")
    shutil.copy(DIGITS_TEACHER, base / "teacher.pt")
    old = os.getcwd()
    os.chdir(base)
    try:
        assert main(["convert", "teacher.pt", "--chip", "k210-kpu", "--bits", "4w4a", "--out",
                     "run", *FAST]) == 0
        assert main(["verify", "run/model.program", "--chip", "k210-kpu", "--limit", "16",
                     "--no-progress", "--out", "run/verify_k210-kpu.json"]) == 0
    finally:
        os.chdir(old)
    return base


@pytest.fixture
def work(made_run, tmp_path) -> Path:
    """A private copy of the made run's folder (teacher.pt and run/), the current directory."""
    dest = tmp_path / "work"
    shutil.copytree(made_run, dest)
    old = os.getcwd()
    os.chdir(dest)
    yield dest
    os.chdir(old)
