"""User-facing errors of archnet (the PyTorch side).

Every error a user can cause is an ``ArchnetError``, itself a ``simulator.errors.SimulatorError``:
the command line prints its one line and exits with code 2, the same contract as the simulator's.
"""

from simulator.errors import SimulatorError


class ArchnetError(SimulatorError):
    """A user error on the archnet side: printed as one line, exit code 2."""


class ConversionError(ArchnetError):
    """A teacher cannot be converted for a chip: an unknown module, a shape the chip's op set
    cannot express, bit widths the chip does not run, or a student that would fall back."""


class DataError(ArchnetError):
    """A data set is missing, unreadable or malformed (a bad IDX file, a wrong shape, a label
    out of range). The message names the file."""


class TeacherError(ArchnetError):
    """A teacher cannot be built or trained as asked (an unknown architecture, a bad option)."""


class CheckpointError(ArchnetError):
    """A checkpoint is missing, damaged, of another kind, or does not match its metadata."""


class DistillError(ArchnetError):
    """Distillation cannot go on: a NaN loss, a resume that does not match the run it resumes."""


class ReportError(ArchnetError):
    """A report or comparison cannot be made: a run folder missing a file (the message names it
    and the command that writes it), no accuracy data, an unreadable summary or verify record."""
