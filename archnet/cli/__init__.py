"""The ``archnet`` command: the simulator's commands, teachers, convert, verify, latency-table."""

from __future__ import annotations

import argparse
import sys

from archnet.argv import ARGV
from archnet.cli import bit_allocation, convert, demo, plan, report, teacher, verify
from simulator import cli as simulator_cli
from simulator.argtypes import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="archnet",
        description="Arch-Net toolkit: bit-exact NPU simulation and per-chip cost estimates")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    simulator_cli.add_commands(sub)
    teacher.add_teacher_commands(sub)
    demo.add_commands(sub)
    plan.add_commands(sub)
    convert.add_commands(sub)
    verify.add_commands(sub)
    bit_allocation.add_commands(sub)
    report.add_commands(sub)
    return parser


def main(argv=None) -> int:
    ARGV[:] = list(sys.argv[1:] if argv is None else argv)  # recorded in what the command writes
    return simulator_cli.run(build_parser(), argv, prog="archnet")


if __name__ == "__main__":
    sys.exit(main())
