"""User-facing errors of the simulator.

Every error a user can cause (a bad file, a bad profile, a bad input, an op the chip or the
simulator cannot run) is a ``SimulatorError`` whose message is one line naming the thing at
fault. The command line prints that line and exits with code 2; anything else is a bug.
"""


class SimulatorError(Exception):
    """A user error: printed as one line, exit code 2."""


class ProgramError(SimulatorError):
    """A Program file or in-memory Program is malformed or inconsistent."""


class ProfileError(SimulatorError):
    """A chip profile is malformed, incomplete or impossible."""


class InputError(SimulatorError):
    """An input tensor has the wrong shape, dtype or range."""


class UnsupportedOpError(SimulatorError):
    """The simulator cannot execute an op (for example a float conv of an estimate-only graph)."""


class ModelImportError(SimulatorError):
    """An ONNX file cannot be read or translated."""


class ExportError(SimulatorError):
    """A Program cannot be written in the requested interchange form (an op or a number the form
    cannot express); nothing is written."""


class OutputError(SimulatorError):
    """An output cannot be written where asked: a read-only or full folder, a name that is a
    folder, or a path that would replace or remove one of the command's own inputs."""
