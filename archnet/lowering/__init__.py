"""Lowering passes: a teacher in, an Arch-Net student made only of a chip's ops out.

- ``resnet``: torchvision-style ResNets (7x7 stem, 1x1 convs, residual adds, global pooling)
- ``plan``: writing student configs within a chip's channel limits (channel split)
- ``transfer``: teacher -> student parameters as explicit tables
- ``prepare``: a lowered student made ready to distil (calibration and fits, in order)
- ``calibrate``: initial weight steps, batch-norm statistics of new layers, smoothing of
  narrowed inputs
- ``graph``: any captured graph's conversion plan (``archnet.rules``) to student blocks and steps
- ``widths``: activation widths per grid (8-bit streams and attention under 4-bit MACs)
- ``fits``: least-squares starts from the teacher's values (LayerNorm affines, embedding
  sums, carried residual scales)
- ``check``: ``assert_deployable``, the gate: no node of the exported student falls back
"""

from archnet.lowering.calibrate import (calibrate_activations, calibrate_batchnorm,
                                      init_weight_quantizers)
from archnet.lowering.check import assert_deployable
from archnet.lowering.resnet import convert_resnet, parse_bits, plan_resnet

__all__ = ["assert_deployable", "calibrate_activations", "calibrate_batchnorm", "convert_resnet", "init_weight_quantizers",
           "parse_bits", "plan_resnet"]
