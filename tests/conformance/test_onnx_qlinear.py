"""Conformance: ONNX integer graphs give the same integers on the simulator (onnx-qlinear
arithmetic), on onnxruntime and on onnx.reference.ReferenceEvaluator.

Every value the simulator computes under an ONNX tensor name is compared with onnxruntime's
(all intermediates are made graph outputs) and must be equal, element by element. The reference
evaluator must equal onnxruntime too, except where it requantizes differently; see
``qgraphs.explain_reference_mismatch`` and ``test_reference_evaluator_tie_disagreement``.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

pytest.importorskip("onnxruntime")
# onnx.reference pads integer MaxPool inputs with NaN; NumPy warns when it casts them
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")

from qgraphs import (Case, backends, check_case, make_model, output_scale_for,  # noqa: E402
                     rand_int, rand_scale, zero_point)

import onnx  # noqa: E402

from qgraphs import NP_OF  # noqa: E402
from simulator.ir.ops import OpKind  # noqa: E402
from simulator.onnx_import import import_onnx  # noqa: E402

U8, S8, S32, F32 = np.uint8, np.int8, np.int32, np.float32
ET = {U8: TP.UINT8, S8: TP.INT8, S32: TP.INT32, F32: TP.FLOAT}
BACKENDS = backends()


def _id(v) -> str:
    if isinstance(v, dict):
        return "-".join(f"{k}{'x'.join(map(str, x)) if isinstance(x, tuple) else x}"
                        for k, x in v.items())
    if isinstance(v, type):
        return {U8: "u8", S8: "s8", S32: "s32", F32: "f32"}[v]
    return str(v)


def _seed(*parts) -> int:
    """A reproducible seed from a case's parameters (``hash`` of a str changes per process)."""
    return zlib.crc32(repr(tuple(_id(p) for p in parts)).encode()) % 10_000


def _run(case: Case, tmp_path):
    """Every backend the simulator has (the reference; the numba kernels once they exist)."""
    return check_case(case, tmp_path)


# ------------------------------------------------------------------ geometry

CONV_GEOMETRIES = [
    dict(k=(3, 3), pads=(1, 1, 1, 1)),
    dict(k=(3, 3), strides=(2, 2), pads=(0, 1, 1, 0)),
    dict(k=(1, 1)),
    dict(k=(5, 3), dilations=(2, 1), pads=(2, 1, 2, 1)),
    dict(k=(3, 3), auto_pad="SAME_UPPER", strides=(2, 2)),
    dict(k=(2, 2), auto_pad="SAME_LOWER"),
    dict(k=(3, 2), auto_pad="VALID", strides=(1, 2)),
    dict(k=(3, 3), pads=(1, 1, 1, 1), group=2),
    dict(k=(3, 3), pads=(1, 1, 1, 1), depthwise=True),
]


def _conv_attrs(g: dict) -> dict:
    attrs = {"kernel_shape": list(g["k"])}
    for key in ("strides", "pads", "dilations"):
        if key in g:
            attrs[key] = list(g[key])
    if "auto_pad" in g:
        attrs["auto_pad"] = g["auto_pad"]
    return attrs


def _conv_shapes(rng, g: dict):
    n = int(rng.integers(1, 3))
    if g.get("depthwise"):
        c = int(rng.integers(2, 6))
        return n, c, c, c, (int(rng.integers(5, 10)), int(rng.integers(5, 10)))
    group = g.get("group", 1)
    c = group * int(rng.integers(1, 4))
    m = group * int(rng.integers(1, 4))
    return n, c, m, group, (int(rng.integers(6, 11)), int(rng.integers(6, 11)))


def qlinear_conv_case(seed: int, xt, wt, per_channel: bool, bias: bool, geometry: dict,
                      yt=None) -> Case:
    rng = np.random.default_rng(seed)
    yt = yt or xt
    n, c, m, group, (h, w) = _conv_shapes(rng, geometry)
    kh, kw = geometry["k"]
    x = rand_int(rng, xt, (n, c, h, w))
    wts = rand_int(rng, wt, (m, c // group, kh, kw))
    pow2 = bool(rng.random() < 0.5)  # half the cases tie-rich: every scale a power of two
    xs = rand_scale(rng, pow2=pow2)
    ws = rand_scale(rng, m if per_channel else None, pow2=pow2)
    inits = {"xs": xs, "xz": zero_point(rng, xt), "w": wts, "ws": ws,
             "wz": zero_point(rng, wt, m if per_channel else 0),
             "ys": output_scale_for(rng, xs, ws, c // group * kh * kw, 70, 70, pow2),
             "yz": zero_point(rng, yt)}
    names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias:
        inits["b"] = rand_int(rng, S32, (m,), -20000, 20000)
        names.append("b")
    attrs = _conv_attrs(geometry)
    attrs["group"] = group
    node = helper.make_node("QLinearConv", names, ["y"], name="qconv", **attrs)
    model = make_model([node], [("x", ET[xt], x.shape)], ["y"], inits)
    return Case(f"qlinearconv_{seed}", model, {"x": x})


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=_id)
@pytest.mark.parametrize("xt,wt", [(U8, S8), (U8, U8), (S8, S8)], ids=["u8s8", "u8u8", "s8s8"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_qlinear_conv(geometry, xt, wt, per_channel, tmp_path):
    seed = _seed(_id(geometry), _id(xt), _id(wt), per_channel)
    case = qlinear_conv_case(seed, xt, wt, per_channel, bias=seed % 2 == 0, geometry=geometry)
    _run(case, tmp_path)


def test_qlinear_conv_per_channel_zero_points_differ(tmp_path):
    """Per-channel weight zero points that differ per channel (int8 x uint8 weights)."""
    for seed, (xt, wt) in enumerate([(U8, S8), (U8, U8), (S8, S8)]):
        case = qlinear_conv_case(100 + seed, xt, wt, True, True, CONV_GEOMETRIES[0])
        _run(case, tmp_path)


@given(seed=st.integers(0, 2**31 - 1), dtypes=st.sampled_from([(U8, S8), (U8, U8), (S8, S8)]),
       per_channel=st.booleans(), bias=st.booleans(),
       geometry=st.sampled_from(CONV_GEOMETRIES))
def test_qlinear_conv_property(seed, dtypes, per_channel, bias, geometry, tmp_path_factory):
    case = qlinear_conv_case(seed, *dtypes, per_channel, bias, geometry)
    _run(case, tmp_path_factory.mktemp("qconv"))


# ------------------------------------------------------------------ matrix products

def qlinear_matmul_case(seed, at, bt, per_column: bool, a_rank: int, const_b: bool) -> Case:
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(1, 17)), int(rng.integers(1, 9))
    lead = (int(rng.integers(1, 4)),) * (a_rank - 2) + (int(rng.integers(1, 6)),)
    a = rand_int(rng, at, (*lead, k))
    b = rand_int(rng, bt, (k, n))
    pow2 = bool(rng.random() < 0.5)
    as_ = rand_scale(rng, pow2=pow2)
    bs = rand_scale(rng, n if per_column else None, pow2=pow2)
    inits = {"as": as_, "az": zero_point(rng, at), "bs": bs,
             "bz": zero_point(rng, bt, n if per_column and const_b else 0),
             "ys": output_scale_for(rng, as_, bs, k, 70, 70, pow2), "yz": zero_point(rng, at)}
    inputs, feeds = [("a", ET[at], a.shape)], {"a": a}
    if const_b:
        inits["b"] = b
    else:
        inputs.append(("b", ET[bt], b.shape))
        feeds["b"] = b
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"],
                            ["y"], name="qmatmul")
    return Case(f"qlinearmatmul_{seed}", make_model([node], inputs, ["y"], inits), feeds)


@pytest.mark.parametrize("at,bt", [(U8, S8), (U8, U8), (S8, S8)], ids=["u8s8", "u8u8", "s8s8"])
@pytest.mark.parametrize("per_column", [False, True], ids=["per_tensor", "per_column"])
@pytest.mark.parametrize("a_rank", [2, 3])
@pytest.mark.parametrize("const_b", [True, False], ids=["const_b", "activation_b"])
def test_qlinear_matmul(at, bt, per_column, a_rank, const_b, tmp_path):
    seed = _seed(_id(at), _id(bt), per_column, a_rank, const_b)
    _run(qlinear_matmul_case(seed, at, bt, per_column, a_rank, const_b), tmp_path)


def conv_integer_case(seed, xt, wt, geometry, with_zero_points: bool) -> Case:
    rng = np.random.default_rng(seed)
    n, c, m, group, (h, w) = _conv_shapes(rng, geometry)
    kh, kw = geometry["k"]
    x = rand_int(rng, xt, (n, c, h, w))
    inits = {"w": rand_int(rng, wt, (m, c // group, kh, kw))}
    names = ["x", "w"]
    if with_zero_points:
        inits["xz"], inits["wz"] = zero_point(rng, xt), zero_point(rng, wt)
        names += ["xz", "wz"]
    attrs = _conv_attrs(geometry)
    attrs["group"] = group
    node = helper.make_node("ConvInteger", names, ["y"], name="convint", **attrs)
    return Case(f"convinteger_{seed}", make_model([node], [("x", ET[xt], x.shape)], ["y"],
                                                  inits), {"x": x})


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES[:5] + CONV_GEOMETRIES[7:], ids=_id)
@pytest.mark.parametrize("xt,wt", [(U8, U8), (U8, S8), (S8, S8), (S8, U8)],
                         ids=["u8u8", "u8s8", "s8s8", "s8u8"])
def test_conv_integer(geometry, xt, wt, tmp_path):
    seed = _seed(_id(geometry), _id(xt), _id(wt))
    _run(conv_integer_case(seed, xt, wt, geometry, with_zero_points=seed % 3 != 0), tmp_path)


def matmul_integer_case(seed, at, bt, a_rank: int, const_b: bool, per_column: bool) -> Case:
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(1, 20)), int(rng.integers(1, 9))
    lead = (int(rng.integers(1, 4)),) * (a_rank - 2) + (int(rng.integers(1, 6)),)
    a = rand_int(rng, at, (*lead, k))
    b = rand_int(rng, bt, (k, n))
    inits = {"az": zero_point(rng, at), "bz": zero_point(rng, bt, n if per_column else 0)}
    inputs, feeds = [("a", ET[at], a.shape)], {"a": a}
    if const_b:
        inits["b"] = b
    else:
        inputs.append(("b", ET[bt], b.shape))
        feeds["b"] = b
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"], name="mmint")
    return Case(f"matmulinteger_{seed}", make_model([node], inputs, ["y"], inits), feeds)


@pytest.mark.parametrize("at,bt", [(U8, U8), (U8, S8), (S8, S8), (S8, U8)],
                         ids=["u8u8", "u8s8", "s8s8", "s8u8"])
@pytest.mark.parametrize("a_rank,const_b,per_column",
                         [(2, True, False), (2, True, True), (3, True, True), (2, False, False),
                          (3, False, False)],
                         ids=["2d_const", "2d_const_pc", "3d_const_pc", "2d_act", "3d_act"])
def test_matmul_integer(at, bt, a_rank, const_b, per_column, tmp_path):
    seed = _seed(_id(at), _id(bt), a_rank, const_b, per_column)
    _run(matmul_integer_case(seed, at, bt, a_rank, const_b, per_column), tmp_path)


# ------------------------------------------------------------------ quantize / dequantize

def _tie_rich_floats(rng, scale, shape, zp_range):
    """Floats on exact half-steps of ``scale`` (ties), random ones, and out-of-range ones."""
    k = rng.integers(-300, 300, size=shape)
    x = (k + 0.5) * np.float64(scale)
    rand = rng.uniform(-300, 300, size=shape) * np.float64(scale)
    pick = rng.random(shape)
    return np.where(pick < 0.4, x, rand).astype(np.float32)


@pytest.mark.parametrize("yt", [U8, S8], ids=_id)
@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("pow2_scale", [True, False], ids=["pow2_scale", "any_scale"])
def test_quantize_linear(yt, opset, pow2_scale, tmp_path):
    rng = np.random.default_rng(opset + 7 * pow2_scale + (yt is S8))
    scale = np.float32(2.0 ** -5) if pow2_scale else rand_scale(rng)
    x = _tie_rich_floats(rng, scale, (2, 3, 5, 4), None)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")
    model = make_model([node], [("x", TP.FLOAT, x.shape)], ["y"],
                       {"s": scale, "z": zero_point(rng, yt)}, opset=opset)
    _run(Case(f"quantize_{opset}", model, {"x": x}), tmp_path)


@pytest.mark.parametrize("xt", [U8, S8, S32], ids=_id)
@pytest.mark.parametrize("per_axis", [False, True], ids=["per_tensor", "per_axis"])
def test_dequantize_linear(xt, per_axis, tmp_path):
    rng = np.random.default_rng(3 + per_axis)
    x = rand_int(rng, xt, (2, 4, 3, 3), -(1 << 20) if xt is S32 else None,
                 (1 << 20) if xt is S32 else None)
    scale = rand_scale(rng, 4) if per_axis else rand_scale(rng)
    zp = np.zeros(4 if per_axis else (), xt) if xt is S32 else zero_point(rng, xt, 4 * per_axis)
    node = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], name="dq", axis=1)
    model = make_model([node], [("x", ET[xt], x.shape)], ["y"], {"s": scale, "z": zp})
    _run(Case("dequantize", model, {"x": x}), tmp_path)


# ------------------------------------------------------------------ layout ops on integers

POOLS = [
    dict(k=(2, 2), strides=(2, 2)),
    dict(k=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1)),
    dict(k=(3, 3), strides=(2, 2), pads=(0, 1, 1, 0)),
    dict(k=(3, 2), strides=(2, 1), ceil_mode=1),
    dict(k=(3, 3), strides=(2, 2), auto_pad="SAME_UPPER"),
    dict(k=(2, 3), strides=(1, 2), auto_pad="SAME_LOWER"),
]


@pytest.mark.parametrize("pool", POOLS, ids=_id)
@pytest.mark.parametrize("xt", [U8, S8], ids=_id)
def test_maxpool(pool, xt, tmp_path):
    rng = np.random.default_rng(_seed(pool))
    x = rand_int(rng, xt, (2, 3, 7, 8))
    attrs = {"kernel_shape": list(pool["k"]), "strides": list(pool["strides"])}
    for key in ("pads", "auto_pad", "ceil_mode"):
        if key in pool:
            attrs[key] = list(pool[key]) if key == "pads" else pool[key]
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", **attrs)
    _run(Case("maxpool", make_model([node], [("x", ET[xt], x.shape)], ["y"], {}), {"x": x}),
         tmp_path)


@pytest.mark.parametrize("xt", [U8, S8], ids=_id)
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_concat(xt, axis, tmp_path):
    rng = np.random.default_rng(axis + 5)
    a, b = rand_int(rng, xt, (2, 3, 4, 5)), rand_int(rng, xt, (2, 3, 4, 5))
    const = rand_int(rng, xt, (2, 3, 4, 5))
    node = helper.make_node("Concat", ["a", "b", "c"], ["y"], name="cat", axis=axis)
    model = make_model([node], [("a", ET[xt], a.shape), ("b", ET[xt], b.shape)], ["y"],
                       {"c": const})
    _run(Case("concat", model, {"a": a, "b": b}), tmp_path)


@pytest.mark.parametrize("xt", [S8, S32], ids=_id)
def test_relu_raw_integers(xt, tmp_path):
    """ONNX Relu on integers is max(x, 0) of the stored values (uint8 is not allowed)."""
    rng = np.random.default_rng(11)
    x = rand_int(rng, xt, (3, 17), -1000 if xt is S32 else None, 1000 if xt is S32 else None)
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    _run(Case("relu", make_model([node], [("x", ET[xt], x.shape)], ["y"], {}), {"x": x}),
         tmp_path)


def test_reshape_flatten_transpose(tmp_path):
    rng = np.random.default_rng(2)
    x = rand_int(rng, S8, (2, 3, 4, 5))
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"], axis=-1),
             helper.make_node("Unsqueeze", ["f", "ax"], ["u"]),
             helper.make_node("Squeeze", ["u", "ax"], ["s"])]
    model = make_model(nodes, [("x", TP.INT8, x.shape)], ["s"],
                       {"shape": np.array([0, -1, 5], np.int64), "ax": np.array([0], np.int64)})
    _run(Case("layout", model, {"x": x}), tmp_path)


# ------------------------------------------------------------------ chains

def _q_params(rng, dtype):
    return rand_scale(rng, lo=-7, hi=-4), zero_point(rng, dtype)


def chain_case(seed: int, at, wt, per_channel: bool, opset: int = 21) -> Case:
    """QuantizeLinear -> QLinearConv -> MaxPool -> QLinearConv -> DequantizeLinear."""
    rng = np.random.default_rng(seed)
    c0, c1, c2 = 3, int(rng.integers(2, 6)), int(rng.integers(2, 6))
    x = rng.normal(0, 1.5, size=(1, c0, 12, 10)).astype(np.float32)
    s0, z0 = _q_params(rng, at)
    w1 = rand_int(rng, wt, (c1, c0, 3, 3))
    w2 = rand_int(rng, wt, (c2, c1, 3, 3))
    pow2 = seed % 2 == 0
    ws1 = rand_scale(rng, c1 if per_channel else None, pow2=pow2)
    ws2 = rand_scale(rng, c2 if per_channel else None, pow2=pow2)
    s1 = output_scale_for(rng, s0, ws1, c0 * 9, 40, 70, pow2)
    s2 = output_scale_for(rng, s1, ws2, c1 * 9, 40, 70, pow2)
    z1, z2 = zero_point(rng, at), zero_point(rng, at)
    inits = {"s0": s0, "z0": z0, "w1": w1, "ws1": ws1,
             "wz1": zero_point(rng, wt, c1 if per_channel else 0), "s1": s1, "z1": z1,
             "w2": w2, "ws2": ws2, "wz2": zero_point(rng, wt, c2 if per_channel else 0),
             "s2": s2, "z2": z2, "b1": rand_int(rng, S32, (c1,), -3000, 3000)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s0", "z0"], ["xq"], name="quant"),
        helper.make_node("QLinearConv", ["xq", "s0", "z0", "w1", "ws1", "wz1", "s1", "z1", "b1"],
                         ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("QLinearConv", ["p1", "s1", "z1", "w2", "ws2", "wz2", "s2", "z2"],
                         ["c2"], name="conv2", pads=[0, 1, 1, 0], strides=[1, 2]),
        helper.make_node("DequantizeLinear", ["c2", "s2", "z2"], ["y"], name="dequant"),
    ]
    model = make_model(nodes, [("x", TP.FLOAT, x.shape)], ["y"], inits, opset=opset)
    return Case(f"chain_{seed}", model, {"x": x})


@pytest.mark.parametrize("at,wt", [(U8, S8), (S8, S8), (U8, U8)], ids=["u8s8", "s8s8", "u8u8"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("opset", [13, 21])
def test_chain_quantize_conv_pool_conv_dequantize(at, wt, per_channel, opset, tmp_path):
    seed = _seed(_id(at), _id(wt), per_channel, opset)
    outcome = _run(chain_case(seed, at, wt, per_channel, opset), tmp_path)
    # xq, c1, p1, c2 and y, each equal to onnxruntime's, on every backend
    assert outcome.compared == 5 * len(outcome.backends) and outcome.backends == BACKENDS


def branchy_case(seed: int) -> Case:
    """Q -> QLinearConv(s8) -> {Relu, MaxPool} -> Concat -> Flatten -> QLinearMatMul -> DQ."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.0, size=(2, 2, 6, 6)).astype(np.float32)
    s0, z0 = _q_params(rng, S8)
    ws = rand_scale(rng, 4)
    s1 = output_scale_for(rng, s0, ws, 18, 40, 70)
    z1 = zero_point(rng, S8)
    k = 8 * 6 * 6
    bs = rand_scale(rng, 5)
    s2 = output_scale_for(rng, s1, bs, k, 40, 70)
    z2 = zero_point(rng, S8)
    inits = {"s0": s0, "z0": z0, "w": rand_int(rng, S8, (4, 2, 3, 3)), "ws": ws,
             "wz": np.zeros(4, np.int8), "s1": s1, "z1": z1,
             "b": rand_int(rng, S8, (k, 5)), "bs": bs, "bz": np.zeros(5, np.int8),
             "s2": s2, "z2": z2}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s0", "z0"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "s0", "z0", "w", "ws", "wz", "s1", "z1"], ["c"],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["r", "p"], ["cat"], axis=1),
        helper.make_node("Flatten", ["cat"], ["flat"]),
        helper.make_node("QLinearMatMul", ["flat", "s1", "z1", "b", "bs", "bz", "s2", "z2"],
                         ["mm"]),
        helper.make_node("DequantizeLinear", ["mm", "s2", "z2"], ["y"]),
    ]
    model = make_model(nodes, [("x", TP.FLOAT, x.shape)], ["y"], inits)
    return Case(f"branchy_{seed}", model, {"x": x})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chain_with_relu_concat_matmul(seed, tmp_path):
    _run(branchy_case(seed), tmp_path)


# ------------------------------------------------------------------ reference evaluator ties

def _find_float32_ties(rng, count: int):
    """(multiplier, accumulator) pairs where float32(acc) * multiplier, rounded to float32, is
    an exact .5 although the exact product is not (onnxruntime and onnx.reference round them to
    neighbouring integers), with the result inside int8."""
    pairs = []
    while len(pairs) < count:
        m = np.float32(rng.uniform(2 ** -11, 2 ** -9))
        acc = np.arange(-(1 << 17), 1 << 17, dtype=np.int64)
        p32 = np.rint(acc.astype(np.float32) * m)
        p64 = np.rint(acc.astype(np.float64) * np.float64(m))
        hits = np.nonzero((p32 != p64) & (np.abs(p64) < 100))[0]
        pairs += [(float(m), int(acc[i])) for i in hits[:2]]
    return pairs[:count]


def _bias_only_conv(multipliers, accumulators, y_zero_point: int) -> Case:
    """A 1x1 QLinearConv whose input equals its zero point, so that the accumulator of output
    channel c is bias[c] and its requantization multiplier is w_scale[c] (x_scale = y_scale = 1)."""
    m = len(multipliers)
    x = np.full((1, 1, 2, 2), 3, np.int8)
    inits = {"xs": np.float32(1), "xz": np.int8(3), "w": np.ones((m, 1, 1, 1), np.int8),
             "ws": np.asarray(multipliers, np.float32), "wz": np.zeros(m, np.int8),
             "ys": np.float32(1), "yz": np.int8(y_zero_point),
             "b": np.asarray(accumulators, np.int32)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                            ["y"], name="tie_conv")
    return Case("ties", make_model([node], [("x", TP.INT8, x.shape)], ["y"], inits), {"x": x})


def test_reference_evaluator_float64_product_disagreement(tmp_path):
    """Documented: onnx.reference requantizes QLinearConv in float64, onnxruntime in float32.

    Multipliers and accumulators are chosen so that the float32 product is an exact .5 the
    exact product is not. onnxruntime rounds the float32 product (MlasRequantizeOutput), and so
    does the simulator; onnx.reference promotes int32 x float32 to float64 and rounds the exact
    product. check_case requires simulator == onnxruntime everywhere and accepts reference !=
    onnxruntime only where ``explain_reference_mismatch`` reproduces both values.
    """
    pairs = _find_float32_ties(np.random.default_rng(0), 6)
    case = _bias_only_conv([p[0] for p in pairs], [p[1] for p in pairs], 0)
    outcome = _run(case, tmp_path)
    assert outcome.reference_mismatches == len(pairs) * 4, outcome.messages
    assert all("float32 product" in m for m in outcome.messages)


def test_reference_evaluator_zero_point_tie_disagreement(tmp_path):
    """Documented: onnx.reference adds the output zero point before rounding half to even.

    ONNX defines requantization as round(x * scale) + zero_point (QuantizeLinear), and
    onnxruntime does that; onnx.reference's QLinearConv/QLinearMatMul round (x * scale + zp).
    On an exact tie with an odd zero point the two differ by one: 14.5 -> 14 (+ 39 = 53) for
    onnxruntime and the simulator, 53.5 -> 54 for onnx.reference. Even zero points agree.
    """
    multipliers = [2.0 ** -9, 2.0 ** -7, 0.5, 0.25]
    accumulators = [7424, -5312, 3, -6]   # products 14.5, -41.5, 1.5, -1.5: exact ties
    odd = _run(_bias_only_conv(multipliers, accumulators, 39), tmp_path)
    assert odd.reference_mismatches == len(multipliers) * 4, odd.messages
    assert all("zero point added before rounding" in m for m in odd.messages)
    even = _run(_bias_only_conv(multipliers, accumulators, 40), tmp_path)
    assert even.reference_mismatches == 0


def test_onnx_qlinear_profile_matches_onnxruntime_semantics():
    """The onnx-qlinear profile (when present) carries the arithmetic these tests establish."""
    from qgraphs import ONNX_QLINEAR_SPEC, onnx_qlinear_arithmetic
    from simulator.execute import arithmetic_of

    arith = arithmetic_of(onnx_qlinear_arithmetic())
    assert arith.requant.mode is ONNX_QLINEAR_SPEC.requant.mode
    assert arith.requant.rounding is ONNX_QLINEAR_SPEC.requant.rounding
    assert arith.accumulator.bits == 32
    assert arith.accumulator.overflow is ONNX_QLINEAR_SPEC.accumulator.overflow


@pytest.mark.parametrize("xt", [U8, S8], ids=_id)
def test_clip_raw_integers(xt, tmp_path):
    """ONNX Clip on integers clamps the stored values to the given bounds (ReLU6 of a
    quantized graph): a clamp node with those bounds."""
    rng = np.random.default_rng(12)
    x = rand_int(rng, xt, (2, 3, 5))
    lo, hi = (np.array(v, NP_OF[ET[xt]]) for v in ((20, 200) if xt is U8 else (-7, 90)))
    node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")
    model = make_model([node], [("x", ET[xt], x.shape)], ["y"], {"lo": lo, "hi": hi})
    _run(Case("clip", model, {"x": x}), tmp_path)


@pytest.mark.parametrize("geometry", [dict(k=(3, 3)), dict(k=(3, 3), strides=(2, 2),
                                                            pads=(0, 1, 0, 0))], ids=_id)
def test_pad_folds_into_qlinear_conv(geometry, tmp_path):
    """A Pad by the input zero point before a QLinearConv (how exporters write asymmetric
    'same' padding) is the conv's own padding: no node of its own, equal to onnxruntime."""
    case = qlinear_conv_case(_seed("pad", geometry), U8, S8, True, True, geometry)
    model, x = case.model, case.inputs["x"]
    conv = model.graph.node[0]
    conv.input[0] = "x_padded"
    xz = next(t for t in model.graph.initializer if t.name == "xz")
    pad = helper.make_node("Pad", ["x", "pads", "xz"], ["x_padded"], name="pad", mode="constant")
    pads = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    inits["pads"] = pads
    padded = make_model([pad, conv], [("x", ET[U8], x.shape)], ["y"], inits)
    assert numpy_helper.to_array(xz).shape == ()
    assert _run(Case("pad_qconv", padded, {"x": x}), tmp_path).compared > 0
    path = tmp_path / "padded.onnx"
    onnx.save(padded, path)
    program = import_onnx(path)
    assert [n.op.value for n in program.nodes] == ["conv2d", "requantize"]
    assert program.metadata["removed_nodes"][0]["op_type"] == "Pad"


def _contrib_model(nodes, inputs, outputs: dict, inits: dict) -> onnx.ModelProto:
    """A graph of onnxruntime's com.microsoft ops (shape inference does not know them, so the
    outputs' types and shapes are given)."""
    graph = helper.make_graph(
        nodes, "case", [helper.make_tensor_value_info(n, et, list(s)) for n, et, s in inputs],
        [helper.make_tensor_value_info(n, et, list(s)) for n, (et, s) in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op", ["QLinearSigmoid", "QLinearLeakyRelu"])
@pytest.mark.parametrize("xt", [U8, S8], ids=_id)
@pytest.mark.parametrize("seed", range(4))
def test_qlinear_activation_is_a_table(op, xt, seed, tmp_path):
    """onnxruntime's 8-bit sigmoid and leaky ReLU: a 256-entry lookup table naming its function,
    equal to onnxruntime on every input value."""
    rng = np.random.default_rng(_seed(op, xt, seed))
    x = np.arange(np.iinfo(xt).min, np.iinfo(xt).max + 1).astype(xt).reshape(1, 4, 8, 8)
    inits = {"xs": rand_scale(rng, lo=-7, hi=-2), "xz": zero_point(rng, xt),
             "ys": rand_scale(rng, lo=-9, hi=-3), "yz": zero_point(rng, xt)}
    attrs = {"alpha": float(rng.uniform(0.01, 0.3))} if op == "QLinearLeakyRelu" else {}
    node = helper.make_node(op, ["x", "xs", "xz", "ys", "yz"], ["y"], name="act",
                            domain="com.microsoft", **attrs)
    model = _contrib_model([node], [("x", ET[xt], x.shape)], {"y": (ET[xt], x.shape)}, inits)
    path = tmp_path / "act.onnx"
    onnx.save(model, path)
    program = import_onnx(path)
    (table,) = [n for n in program.nodes if n.op is OpKind.LOOKUP_TABLE]
    assert table.attrs["function"] == ("sigmoid" if op == "QLinearSigmoid" else "leaky_relu")
    _compare_with_onnxruntime(path, program, {"x": x})


@pytest.mark.parametrize("seed", range(4))
def test_qlinear_mul_gate(seed, tmp_path):
    """A squeeze-and-excitation gate as onnxruntime's quantizer writes it: QLinearMul of a
    feature map by a per-channel gate, equal to onnxruntime."""
    rng = np.random.default_rng(_seed("mul", seed))
    a = rand_int(rng, U8, (1, 8, 5, 5))
    g = rand_int(rng, U8, (1, 8, 1, 1))
    inits = {"as": rand_scale(rng, lo=-6, hi=-3), "az": zero_point(rng, U8),
             "gs": np.float32(1 / 256), "gz": np.uint8(0),
             "ys": rand_scale(rng, lo=-7, hi=-4), "yz": zero_point(rng, U8)}
    node = helper.make_node("QLinearMul", ["a", "as", "az", "g", "gs", "gz", "ys", "yz"], ["y"],
                            name="gate", domain="com.microsoft")
    model = _contrib_model([node], [("a", ET[U8], a.shape), ("g", ET[U8], g.shape)],
                           {"y": (ET[U8], a.shape)}, inits)
    path = tmp_path / "mul.onnx"
    onnx.save(model, path)
    program = import_onnx(path)
    assert [n.op for n in program.nodes] == [OpKind.MUL]
    _compare_with_onnxruntime(path, program, {"a": a, "g": g})


def _compare_with_onnxruntime(path, program, inputs):
    from qgraphs import onnx_qlinear_arithmetic
    from simulator.execute import execute
    from simulator.onnx_import.peers import run_onnxruntime

    ort = run_onnxruntime(path, inputs)
    for backend in BACKENDS:
        sim = execute(program, onnx_qlinear_arithmetic(), inputs, backend=backend).outputs
        for name, want in ort.items():
            got = np.asarray(sim[name])
            bad = np.argwhere(got != want)
            assert bad.size == 0, (backend, name, tuple(bad[0]), got[tuple(bad[0])],
                                   want[tuple(bad[0])])
