"""Stored integers for every kernel under every contract that matters: one moved bit fails."""

from pathlib import Path

import numpy as np
import pytest

from simulator import golden
from simulator.execute import backend_module
from simulator.ir.ops import OpKind

HERE = Path(__file__).parent
FILES = sorted(HERE.glob("*.npz"))


def test_golden_files_exist_for_every_declared_case():
    declared = {c.name for c in golden.cases()}
    stored = {p.stem for p in FILES}
    assert declared == stored, "run `archnet regress --regenerate` and review the diff"


def test_cases_cover_every_integer_op():
    covered = {c.op for c in golden.cases()}
    integer_ops = set(OpKind) - {OpKind.QUANTIZE, OpKind.DEQUANTIZE, OpKind.FALLBACK,
                                 OpKind.RESHAPE, OpKind.FLATTEN, OpKind.TRANSPOSE}
    assert {k.value for k in integer_ops} <= covered


@pytest.mark.parametrize("backend", ["kernels", "reference"])
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden_exact(path, backend):
    result = golden.check_file(path, backend)
    assert result.ok, result.first


def test_goldens_are_not_degenerate():
    """A golden whose output is one saturated value would not catch much."""
    for path in FILES:
        with np.load(path) as z:
            final = [z[k] for k in z.files if k.startswith("out:")][-1]
        assert len(np.unique(final)) >= (2 if "u2" in path.stem else 3), path.stem


@pytest.mark.parametrize("op, case", [("requantize", "requantize_s32_u8_pc_tflite_m32"),
                                      ("conv2d", "conv3x3_u8xs8_pc_acc16_sat_per_mac_hwc"),
                                      ("maxpool2d", "maxpool2x2_s8"),
                                      ("softmax", "softmax_s8_half_up_m16")])
def test_one_bit_change_in_a_kernel_fails(monkeypatch, op, case):
    kernels = backend_module("kernels")

    def perturb(original):
        def perturbed(*args, **kwargs):
            out = original(*args, **kwargs)
            values, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
            values = np.array(values, copy=True)
            values.flat[values.size // 2] ^= 1
            return (values, *rest) if rest is not None else values
        return perturbed

    # a conv read only by a requantize runs as one kernel with it
    for name in (op, "conv2d_requantize") if op == "conv2d" else (op,):
        monkeypatch.setattr(kernels, name, perturb(getattr(kernels, name)))
    result = golden.check_file(HERE / f"{case}.npz", "kernels")
    assert not result.ok and result.mismatches >= 1
