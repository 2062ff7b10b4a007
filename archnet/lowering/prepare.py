"""A freshly lowered student made ready to distil: every start that is set from data, in the
order each needs the last. One function, so the conversion job and bit allocation (which
measures candidate students before choosing) prepare a student the same way.

0. ``calibrate_token_norms``: the per-token LayerNorms' grids and fits (a fitted form has no
   float output before, and everything below reads the float path);
1. ``calibrate_batchnorm``: the new batch-norms' statistics (float path);
2. with the captured teacher graph (the chip-driven converter's students): ``fit_layer_norms``
   and ``fit_carried_residuals`` from the teacher's values, then ``smooth_narrowed_inputs``
   (they move weights and the values later grids hold);
3. ``calibrate_activations``: every learned activation step from the values as they now are.
"""

from __future__ import annotations

from archnet.lowering.calibrate import (calibrate_activations, calibrate_batchnorm,
                                        calibrate_token_norms, smooth_narrowed_inputs)
from archnet.lowering.fits import fit_carried_residuals, fit_layer_norms


def prepare_student(student, data, idx, graph=None, seed: int = 0):
    """Calibrate ``student`` on the inputs ``idx`` of ``data`` (``archnet.distill.inputs``:
    images or tokens); ``graph``: the captured teacher graph whose values the fits read (None
    for the hand-written ResNet lowering, which has nothing to fit). Returns the student."""
    x, side = data.student(idx)
    calibrate_token_norms(student, x, side=side)
    calibrate_batchnorm(student, x, side=side)
    if graph is not None:
        fit_layer_norms(student, graph, data.teacher(idx), data.token_mask(idx))
        fit_carried_residuals(student, graph, data.teacher(idx))
        smooth_narrowed_inputs(student, x, side=side)
    calibrate_activations(student, x, seed=seed, side=side)
    return student
