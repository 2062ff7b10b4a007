"""The README's two set-up commands are what CI runs and what a new user types."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_readme_opens_with_two_commands():
    blocks = _bash_blocks()
    assert len(blocks) >= 2
    run_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert "pip install -e ." in run_cmd and "archnet" in run_cmd
    assert "pytest" in test_cmd


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = _bash_blocks()[1].strip()
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_torch_is_pinned_to_the_cpu_build():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in text
