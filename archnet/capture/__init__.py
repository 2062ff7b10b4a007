"""Stage 1 of conversion: the teacher's graph, captured and normalised.

``capture(model, example_inputs)`` traces any ``torch.nn.Module`` (``torch.export``) into a
``TeacherGraph`` of operator families and applies the normalising passes. ``load_model(spec)``
turns what a user names on the command line (a zoo checkpoint, a ``torch.export.save`` file, or
``file.py:factory``) into a model and its example inputs.
"""

from archnet.capture.export import export_graph
from archnet.capture.graph import OPS, TeacherGraph, TeacherNode
from archnet.capture.passes import PASSES, normalise


def capture(model, example_inputs) -> TeacherGraph:
    """``model`` on ``example_inputs`` as a normalised ``TeacherGraph``."""
    return normalise(export_graph(model, example_inputs))


__all__ = ["OPS", "PASSES", "TeacherGraph", "TeacherNode", "capture", "export_graph", "normalise"]
