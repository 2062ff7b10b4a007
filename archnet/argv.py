"""The arguments of the running ``archnet`` command, recorded in what it writes (a run's
``convert.json`` names the command that made it). ``archnet.cli.main`` sets them."""

from __future__ import annotations

import shlex

ARGV: list[str] = []


def command_line() -> str:
    """The running ``archnet`` command as typed."""
    return "archnet " + " ".join(shlex.quote(a) for a in ARGV)


__all__ = ["ARGV", "command_line"]
