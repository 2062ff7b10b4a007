"""A converted student's integer forward equals the simulator running its exported Program, bit for
bit, on each chip's arithmetic: the logits and every block's output pieces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from archnet.lowering import assert_deployable, convert_resnet
from lowering_helpers import PROFILES, TEACHERS, basic_teacher, digit_images
from simulator.execute import execute
from simulator.profiles import load_profile

BITS = {"ideal": "2w4a", "ethos-u55-128": "4w4a", "k210-kpu": "8w8a"}


def _trained(student, x, steps: int = 2):
    """Initialise activation quantizers (LSQ, first forward), then move every parameter and
    step size off its initial value (signed gradient steps; no optimizer, whose import costs
    seconds) so the exported integers are not special."""
    student.train()
    for _ in range(steps):
        student.zero_grad()
        sum(f.pow(2).mean() for f in student.features(x)).backward()
        with torch.no_grad():
            for p in student.parameters():
                if p.grad is not None:
                    p.sub_(1e-2 * p.grad.sign() * p.abs().clamp_min(1e-3))
    student.zero_grad()
    return student.eval()


def _image_ints(student, x) -> np.ndarray:
    return student.input.integer_forward(x).value.numpy().astype(np.uint8)


def _check_bit_exact(student, profile, x, backends=("reference",)):
    """Logits and every block's output pieces (a Program exporting them all) against ours."""
    program = assert_deployable(student, profile, tuple(x.shape))
    feats_program = student.export(tuple(x.shape), feature_outputs=True)
    assert feats_program.outputs[-1] == program.outputs[0]
    ours = student.integer_features(x, profile)
    per_block = feats_program.metadata["archnet"]["block_outputs"]
    for backend in backends:
        sim = execute(feats_program, profile.arithmetic, {"image": _image_ints(student, x)},
                      backend=backend).outputs
        assert np.array_equal(ours[-1].value.numpy(), sim[program.outputs[0]]), backend
        for block, q, names in zip(student.block_names, ours, per_block, strict=True):
            whole = np.concatenate([sim[n] for n in names], axis=1)
            assert np.array_equal(q.value.numpy(), whole), (backend, block)
            scales = {feats_program.tensors[n].scale for n in names}
            assert scales == {(q.scale,)}, block


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("kind", list(TEACHERS))
def test_integer_forward_equals_simulator(kind, profile):
    chip = load_profile(profile)
    x = digit_images(6, 16)
    student = _trained(convert_resnet(TEACHERS[kind](), chip, BITS[profile], (1, 16, 16)), x)
    backends = ("reference", "kernels") if (kind, profile) == ("basic", "ideal") else ("reference",)
    _check_bit_exact(student, chip, x, backends)


def test_integer_forward_with_global_pool_equals_simulator():
    chip = load_profile("ideal")
    x = digit_images(6, 16)
    student = _trained(convert_resnet(basic_teacher(), chip, "4w4a", (1, 16, 16),
                                      keep_global_pool=True), x)
    _check_bit_exact(student, chip, x)


def test_fake_quant_student_tracks_its_integer_forward():
    """The fake-quant logits and the chip's are close (the gap is measured, never assumed zero:
    it is where bias rounding and requantization multipliers move a value by one step)."""
    chip = load_profile("ideal")
    x = digit_images(8, 16)
    student = _trained(convert_resnet(basic_teacher(), chip, "8w8a", (1, 16, 16)), x)
    with torch.no_grad():
        fake = student(x)
    real = student.integer_forward(x, chip).dequantize().float()
    assert float((fake - real).abs().max()) <= 0.1 * float(fake.abs().max())
