"""The ``archnet`` command: the simulator's commands, teachers, convert, verify, latency-table."""

from __future__ import annotations

import argparse
import sys

from archnet import bit_allocation_cli, convert_cli, demo_cli, plan_cli, report_cli, verify_cli
from archnet.argv import ARGV
from archnet.teachers import cli as teachers_cli
from simulator import cli as simulator_cli
from simulator.argtypes import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="archnet",
        description="Arch-Net toolkit: bit-exact NPU simulation and per-chip cost estimates")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    simulator_cli.add_commands(sub)
    teachers_cli.add_teacher_commands(sub)
    demo_cli.add_commands(sub)
    plan_cli.add_commands(sub)
    convert_cli.add_commands(sub)
    verify_cli.add_commands(sub)
    bit_allocation_cli.add_commands(sub)
    report_cli.add_commands(sub)
    return parser


def main(argv=None) -> int:
    ARGV[:] = list(sys.argv[1:] if argv is None else argv)  # recorded in what the command writes
    return simulator_cli.run(build_parser(), argv, prog="archnet")


if __name__ == "__main__":
    sys.exit(main())
