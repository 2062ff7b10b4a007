"""The networks users deploy, exported as users export them, placed and priced as chips run them.

MobileNetV2 (ReLU6 = Clip), MobileNetV3-small (hard-swish, squeeze-and-excitation with
hard-sigmoid gates), EfficientNet-B0 (SiLU as Sigmoid and Mul, sigmoid gates) and ResNet-18, built
in code as torchvision defines them (``archnet.teachers.imagenet``, random weights), exported
with ``torch.onnx.export`` at opset 17, imported for estimation. Activations must be fused clamps
or activation-unit functions, pooling the pooling ops, gates the elementwise mul, and each chip
must keep on its NPU exactly what its profile says it runs.
"""

from __future__ import annotations

from collections import Counter

import pytest

torch = pytest.importorskip("torch")

from archnet.teachers.imagenet import build_architecture, export_onnx  # noqa: E402
from simulator.constraints import place  # noqa: E402
from simulator.cost import estimate  # noqa: E402
from simulator.ir import OpKind  # noqa: E402
from simulator.onnx_import import import_onnx  # noqa: E402
from simulator.profiles import load_profile  # noqa: E402

NETWORKS = ("mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "resnet18")


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("architectures")
    torch.manual_seed(0)
    out = {}
    for name in NETWORKS:
        path = folder / f"{name}.onnx"
        export_onnx(build_architecture(name), path, input_size=224)
        out[name] = import_onnx(path)
    return out


def _ops(program) -> Counter:
    return Counter(n.op.value if n.op is not OpKind.LOOKUP_TABLE else
                   f"lookup_table:{n.attrs['function']}" for n in program.nodes)


def _host(program, chip: str) -> list:
    return [p for p in place(program, load_profile(chip)) if p.on_host and not p.boundary]


@pytest.mark.parametrize("name", NETWORKS)
def test_every_op_maps_and_every_clamp_is_fused(programs, name):
    program = programs[name]
    ops = _ops(program)
    assert ops["fallback"] == 0, [n.attrs["op_type"] for n in program.nodes
                                  if n.op is OpKind.FALLBACK]
    # ReLU and ReLU6 after a conv are the conv's requantize clamp, never nodes of their own
    assert ops["clamp"] == 0
    fused = program.metadata.get("fused_activations", [])
    assert all(f["op_type"] in ("Relu", "Clip") for f in fused)


def test_mobilenet_v2_relu6_fused_and_pooled(programs):
    program = programs["mobilenet_v2"]
    fused = Counter(f["op_type"] for f in program.metadata["fused_activations"])
    # every conv but the 17 projection convs and the classifier is followed by ReLU6
    convs = sum(n.op is OpKind.CONV2D for n in program.nodes)
    assert fused["Clip"] == convs - 17 and convs == 52
    assert _ops(program)["global_avgpool2d"] == 1


def test_mobilenet_v3_small_hardswish_and_gates(programs):
    ops = _ops(programs["mobilenet_v3_small"])
    # torchvision's v3-small: 9 SE blocks, each a pool, two 1x1 convs, a hard-sigmoid and a mul
    assert ops["mul"] == 9 and ops["lookup_table:hardsigmoid"] == 9
    assert ops["global_avgpool2d"] == 9 + 1
    assert ops["lookup_table:hardswish"] == 19


def test_efficientnet_b0_silu_is_one_function(programs):
    program = programs["efficientnet_b0"]
    ops = _ops(program)
    assert ops["mul"] == 16 and ops["lookup_table:sigmoid"] == 16   # the SE gates
    # SiLU after the stem, the head and each block's expansion and depthwise conv and SE reduce
    assert ops["lookup_table:silu"] == 1 + 1 + 15 + 16 + 16
    spelled = {tuple(f["ops"]) for f in program.metadata["activation_functions"]
               if f["function"] == "silu"}
    assert spelled == {("Sigmoid", "Mul")}


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("chip", ["ethos-u55-128", "rk3588-npu-core"])
def test_chips_with_these_ops_run_all_of_it(programs, name, chip):
    assert _host(programs[name], chip) == []


def test_edgetpu_runs_what_it_composes(programs):
    """The Edge TPU has no hard-swish or SiLU table, but composes them from Logistic, Mul and a
    requantize-and-clamp (as TFLite writes them), so all four stay on the TPU."""
    for name in NETWORKS:
        assert _host(programs[name], "edgetpu") == [], name
    est = estimate(programs["mobilenet_v3_small"], load_profile("edgetpu"))
    tables = [o for o in est.ops if o.type == "lookup_table"]
    assert tables and all(o.fused_into for o in tables)


def test_k210_names_what_it_lacks(programs):
    """The KPU has no activation unit, elementwise mul or global pooling: each such node is a
    host fallback whose reason names the profile field."""
    reasons = {r for p in _host(programs["mobilenet_v3_small"], "k210-kpu") for r in p.reasons}
    assert "lookup_table not supported (ops.lookup_table.supported = false)" in reasons
    assert "mul not supported (ops.mul.supported = false)" in reasons
    assert any("global_avgpool2d" in r for r in reasons)
    assert _host(programs["resnet18"], "k210-kpu")  # the 7x7 stem, the adds


def test_activations_cost_no_host_round_trips(programs):
    """The issue's symptom: each ReLU6 was a host round trip. Now a MobileNetV2 on the Edge
    TPU is all NPU time, and fused activations cost nothing of their own."""
    est = estimate(programs["mobilenet_v2"], load_profile("edgetpu"))
    assert not any(o.on_host for o in est.ops)
    assert est.total_latency_ms < 5.0
