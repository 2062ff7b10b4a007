"""Layers wider than a chip's channel limits are split and stay equivalent: output channels into
parallel convs on one quantizer, input channels into partial convs summed by concat + conv."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from archnet.errors import ConversionError
from archnet.lowering import assert_deployable, convert_resnet
from lowering_helpers import TEACHERS, digit_images, relative_error, tiny_profile
from simulator.execute import execute

EXACT = 1e-5


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_split_network_is_the_teacher_and_fits_8_channels(kind, tmp_path):
    chip = tiny_profile(tmp_path, channels=8)
    teacher = TEACHERS[kind](stem_pool=False)
    student = convert_resnet(teacher, chip, "4w4a", (1, 16, 16))
    unsplit = convert_resnet(teacher, "ideal", "4w4a", (1, 16, 16))
    with pytest.raises(ConversionError, match="max_input_channels 8"):
        assert_deployable(unsplit, chip)
    program = assert_deployable(student, chip, (2, 1, 16, 16))
    convs = [n for n in program.nodes if n.op.value == "conv2d"]
    assert len(convs) > 2 * sum(n.op.value == "conv2d" for n in unsplit.export().nodes)
    for n in convs:
        w = program.tensors[n.inputs[1]].shape
        assert w[0] <= 8 and w[1] <= 8, n.name
    roles = {s.get("role") for b in student.blocks for s in b.spec["steps"]}
    assert {"partial", "sum", "merge"} <= roles
    x = digit_images(8, 16)
    with torch.no_grad():
        assert relative_error(student(x, quantize=False), teacher(x)) < EXACT
        for a, b in zip(student.features(x, quantize=False), unsplit.features(x, quantize=False),
                        strict=True):
            assert relative_error(a, b) < EXACT


def test_split_network_integer_forward_equals_simulator(tmp_path):
    chip = tiny_profile(tmp_path, channels=8)
    student = convert_resnet(TEACHERS["basic"](), chip, "4w4a", (1, 16, 16))
    x = digit_images(4, 16)
    with torch.no_grad():
        student(x)  # initialise activation quantizers
    program = assert_deployable(student, chip, tuple(x.shape))
    image = student.input.integer_forward(x).value.numpy().astype(np.uint8)
    sim = execute(program, chip.arithmetic, {"image": image}, backend="reference").outputs
    assert np.array_equal(student.integer_forward(x, chip).value.numpy(), sim[program.outputs[0]])


def test_fully_connected_split_over_inputs_and_outputs(tmp_path):
    """fc limits of 16 inputs and 4 outputs: the 32-feature head becomes partial fcs over input
    groups summed by concat + fc, in output chunks joined by a concat; still exact."""
    chip = tiny_profile(tmp_path, channels=64, fc_in=16, fc_out=4)
    teacher = TEACHERS["bottleneck"](stem_pool=False)
    student = convert_resnet(teacher, chip, "8w8a", (1, 16, 16))
    program = assert_deployable(student, chip)
    fcs = [n for n in program.nodes if n.op.value == "fully_connected"]
    assert len(fcs) > 3
    for n in fcs:
        w = program.tensors[n.inputs[1]].shape
        assert w[0] <= 4 and w[1] <= 16, n.name
    x = digit_images(8, 16)
    with torch.no_grad():
        assert relative_error(student(x, quantize=False), teacher(x)) < EXACT


def test_residual_merge_splits_per_piece(tmp_path):
    """Where main + shortcut exceed the input limit, piece j of the main branch is merged with
    piece j of the shortcut (block-diagonal concat conv), each merge reading 2 x 4 channels."""
    chip = tiny_profile(tmp_path, channels=8)
    student = convert_resnet(TEACHERS["basic"](stem_pool=False), chip, "4w4a", (1, 16, 16))
    merges = [s for s in student.blocks[2].spec["steps"] if s.get("role") == "merge"]
    assert len(merges) == 4 and all(s["in_channels"] == 8 and s["out_channels"] == 4 for s in merges)
