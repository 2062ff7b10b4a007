"""archnet: convert networks to Arch-Nets a chip runs, verified on the integer simulator.

The PyTorch side (quantizers, students, distillation, export) lives here; torch is imported
only by the modules that need it, so the command line starts fast.
"""
__version__ = "0.1.0"


def convert(model, example_inputs, unlabeled, **kw):
    """Convert any ``torch.nn.Module`` for a chip (``archnet.api.convert``)."""
    from archnet.api import convert as _convert
    return _convert(model, example_inputs, unlabeled, **kw)
