"""``archnet demo``: the command line of ``archnet.jobs.demo``."""

from __future__ import annotations

import argparse

from archnet.bits import SUPPORTED_BITS
from simulator.argtypes import seed, threads


def cmd_demo(args) -> int:
    from archnet.jobs.demo import run_demo
    result = run_demo(args.out, bits=args.bits, threads=args.threads, progress=args.progress,
                      seed=args.seed, log=lambda line: print(line, flush=True))
    return 0 if all(c["bit_exact"] for c in result["chips"]) else 1


def add_commands(sub) -> None:
    d = sub.add_parser(
        "demo", help="the whole loop on digits in a few minutes: train a teacher, convert at 4w4a "
                     "with the simulator in the loop, verify on four chips, write a report",
        description="Needs no download: scikit-learn's digits and a teacher the demo trains. "
                    "Writes OUT/teacher.pt, OUT/run/ (student, Program, verify JSON, report/) "
                    "and OUT/demo.json.")
    d.add_argument("--out", default="archnet-demo", metavar="DIR", help="default ./archnet-demo")
    d.add_argument("--bits", default="4w4a", choices=SUPPORTED_BITS,
                   help="2w4a, 4w4a (default) or 8w8a")
    d.add_argument("--threads", type=threads, default=1,
                   help="torch threads (default 1: fastest on small, shared CPUs)")
    d.add_argument("--seed", type=seed, default=0)
    d.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only on a terminal)")
    d.set_defaults(func=cmd_demo)
