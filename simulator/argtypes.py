"""Command-line arguments, checked as given: one line naming the argument, before any work.

A value is refused, never replaced: zero where at least one is needed, a negative count, a
seed beyond what the generators take, a NaN rate. The parser prints one line (``archnet:
error: argument --batch-size: 0 is not at least 1``) instead of argparse's usage block.
"""

from __future__ import annotations

import argparse
import math

SEED_MAX = 2**32 - 1     # numpy's legacy seeding and torch's generators both take it
THREADS_MAX = 1024


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors on one line: ``PROG: error: MESSAGE (see PROG COMMAND --help)``."""

    def error(self, message: str):
        root = self.prog.split()[0]
        hint = f" (see {self.prog} --help)"
        self.exit(2, f"{root}: error: {' '.join(message.split())}{hint}\n")


def int_in(lowest: int, highest: int | None = None):
    """An argparse ``type`` for integers in [lowest, highest]."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{value} is not at least {lowest}")
        if highest is not None and value > highest:
            raise argparse.ArgumentTypeError(f"{value} is more than {highest}")
        return value
    return parse


def float_in(lowest: float, highest: float = math.inf, *, above: bool = False,
             below: bool = False):
    """An argparse ``type`` for finite floats in [lowest, highest]; ``above``/``below`` make
    an end open (a learning rate is above 0)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < lowest or (above and value == lowest):
            raise argparse.ArgumentTypeError(f"{text} is not {'above' if above else 'at least'} "
                                             f"{lowest:g}")
        if value > highest or (below and value == highest):
            raise argparse.ArgumentTypeError(f"{text} is not {'below' if below else 'at most'} "
                                             f"{highest:g}")
        return value
    return parse


seed = int_in(0, SEED_MAX)
threads = int_in(1, THREADS_MAX)
positive_int = int_in(1)
count_or_zero = int_in(0)
positive_float = float_in(0.0, above=True)
fraction = float_in(0.0, 1.0)
