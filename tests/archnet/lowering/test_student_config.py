"""The student is rebuilt from its JSON config + state_dict; calibration and the transfer table."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from archnet.errors import ArchnetError, ConversionError
from archnet.lowering import calibrate_batchnorm, convert_resnet, plan_resnet
from archnet.lowering.transfer import apply_transfers
from archnet.student import build_student
from lowering_helpers import basic_teacher, bottleneck_teacher, digit_images, relative_error
from simulator.profiles import load_profile


def test_config_and_state_dict_rebuild_the_student():
    chip = load_profile("ideal")
    x = digit_images(6, 16)
    student = convert_resnet(bottleneck_teacher(), chip, "4w4a", (1, 16, 16))
    with torch.no_grad():
        student(x)   # activation quantizers initialised: their steps are state too
    again = build_student(json.loads(json.dumps(student.config)))
    again.load_state_dict(student.state_dict())
    again.eval()
    with torch.no_grad():
        assert torch.equal(again(x), student(x))
        assert torch.equal(again(x, quantize=False), student(x, quantize=False))
    assert torch.equal(again.integer_forward(x, chip).value, student.integer_forward(x, chip).value)
    a, b = again.export(), student.export()
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    assert all(np.array_equal(a.tensors[k].data, b.tensors[k].data)
               for k in a.tensors if a.tensors[k].data is not None)
    assert again.block_taps == student.block_taps
    text = student.describe()
    assert all(name in text for name in student.block_names) and "total" in text


def test_quantizer_sharing_survives_the_rebuild():
    student = build_student(convert_resnet(basic_teacher(), "ideal", "4w4a", (1, 16, 16)).config)
    conv2 = student.blocks[1].layers["conv2"]   # layer1.0: identity shortcut
    assert conv2.output_quant is student.quantizers["stem_out"]
    assert student.blocks[0].layers["conv"].output_quant is conv2.output_quant
    assert conv2.output_quant.qtype.signed  # the residual concat's grid holds signed values


def test_bad_configs_are_refused_with_the_place_named():
    config = convert_resnet(basic_teacher(), "ideal", "4w4a", (1, 16, 16)).config
    bad = copy.deepcopy(config)
    merge_cat = next(s for s in bad["blocks"][2]["steps"] if s["kind"] == "concat")
    conv1 = next(s for s in bad["blocks"][2]["steps"] if s["name"] == "conv1")
    merge_cat["inputs"][0] = conv1["name"]   # conv1 writes an unsigned grid of its own
    with pytest.raises(ArchnetError, match=r"block 'layer2.0' step .*concat operands must share"):
        build_student(bad)
    bad = copy.deepcopy(config)
    bad["blocks"][1]["steps"][0]["in_channels"] = 7
    with pytest.raises(ArchnetError, match=r"block 'layer1.0' step 'conv1'.*7 input channels"):
        build_student(bad)
    bad = copy.deepcopy(config)
    bad["quantizers"]["stem_out"]["signed"] = False
    with pytest.raises(ArchnetError, match="must be signed"):
        build_student(bad)


def test_calibrate_batchnorm_keeps_the_function_and_sets_statistics():
    teacher = basic_teacher(stem_pool=False)
    student = convert_resnet(teacher, "ideal", "8w8a", (1, 16, 16))
    x = digit_images(32, 16)
    with torch.no_grad():
        before = student(x, quantize=False)
    done = calibrate_batchnorm(student, x)
    assert [student.blocks[i].name for i, _ in done] == ["layer1.0", "layer2.0", "layer3.0"]
    with torch.no_grad():
        assert relative_error(student(x, quantize=False), before) < 1e-5
        assert relative_error(student(x, quantize=False), teacher(x)) < 1e-5
        merge = student.blocks[1].layers["merge"]
        inp = student.blocks[1].trace(student.blocks[0](x, quantize=False), quantize=False)["merge_in"]
        z = torch.nn.functional.conv2d(inp, merge.weight, merge.bias, padding=1)
        assert torch.allclose(merge.bn.running_mean, z.mean(dim=(0, 2, 3)), atol=1e-5)
        assert torch.allclose(merge.bn.running_var, z.var(dim=(0, 2, 3), unbiased=False), rtol=1e-4)
    calibrate_batchnorm(student, x, preserve_function=False)
    with torch.no_grad():
        merge = student.blocks[1].layers["merge"]
        inp = student.blocks[1].trace(student.blocks[0](x, quantize=False), quantize=False)["merge_in"]
        w, b = merge.folded()
        y = torch.nn.functional.conv2d(inp, w, b, padding=1)
    assert float(y.mean(dim=(0, 2, 3)).abs().max()) < 1e-4
    var = z.var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False), var / (var + merge.bn.eps), rtol=1e-4)


def test_weight_steps_start_on_the_structural_grid():
    """Identity-sum and shift kernels are exact on the weight grid even at 2 bits, and a 1x1
    kernel in a 3x3 centre gets the step of its real weights, not one shrunk by 8 zero taps."""
    teacher = bottleneck_teacher()
    student = convert_resnet(teacher, "ideal", "2w4a", (1, 16, 16))
    merge = student.blocks[1].layers["merge"]
    w, _ = merge.folded()
    assert torch.equal(merge.weight_quant(w), w)   # 0/1 taps land on the grid
    shift = student.blocks[0].layers["shift1"]
    w, _ = shift.folded()
    assert torch.equal(shift.weight_quant(w), w)
    conv1 = student.blocks[1].layers["conv1"]      # a teacher 1x1 conv
    w, _ = conv1.folded()
    centre = w[:, :, 1, 1].abs()
    qmax = conv1.weight_quant.qmax
    lsq_nonzero = 2 * centre.mean(dim=1) / math.sqrt(qmax)
    assert torch.allclose(conv1.weight_quant.step(),
                          torch.minimum(lsq_nonzero, centre.max(dim=1).values / qmax))
    assert bool((conv1.weight_quant.step() > 2 * w.abs().mean(dim=(1, 2, 3)) / math.sqrt(qmax)).all())


def test_transfer_table_must_be_complete_and_exact():
    teacher = bottleneck_teacher()
    plan = plan_resnet(teacher, "ideal", "8w8a", (1, 16, 16))
    state = teacher.state_dict()
    student = build_student(plan.config)
    apply_transfers(state, student, plan.table)
    with pytest.raises(ConversionError, match="unwritten.*blocks.1.layers.conv1.weight"):
        apply_transfers(state, build_student(plan.config),
                        [r for r in plan.table if r.target != "blocks.1.layers.conv1.weight"])
    with pytest.raises(ConversionError, match="twice"):
        apply_transfers(state, build_student(plan.config), plan.table + plan.table[:1])
    wrong = [r if r.target != "blocks.1.layers.conv1.weight" else
             type(r)(r.target, r.rule, "layer1.0.conv2.weight", r.args) for r in plan.table]
    with pytest.raises(ConversionError, match="shape"):
        apply_transfers(state, build_student(plan.config), wrong)
