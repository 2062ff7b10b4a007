"""Every real network graph the onnx wheel ships (backend/test/data/light) imports for estimation.

The light models hold weights as ConstantOfShape nodes fed by shape initializers: the importer
must treat them as constants (shape only), fold BatchNormalization and per-channel Mul/Add into
the convs that feed them, fuse Relu into MAC and add ops, and keep everything else as fallbacks.
The op counts are pinned; each is also checked against the ONNX graph's own op counts.
"""

from __future__ import annotations

import collections
import json
import os
import tracemalloc
from pathlib import Path

import onnx
import pytest

from simulator.errors import ModelImportError
from simulator.ir.ops import OpKind
from simulator.ir.program import load_program, save_program
from simulator.onnx_import import import_onnx

LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))

# model: (Program op counts, fallback op types, folded BN, folded Mul/Add, fused Relu)
EXPECTED = {
    "bvlc_alexnet": ({"conv2d": 5, "fallback": 2, "fully_connected": 3, "maxpool2d": 3,
                      "reshape": 1, "softmax": 1}, {"LRN": 2}, 0, 0, 7),
    "densenet121": ({"avgpool2d": 3, "clamp": 62, "concat": 58, "conv2d": 121, "fallback": 186,
                     "global_avgpool2d": 1, "maxpool2d": 1},
                    {"Add": 62, "BatchNormalization": 62, "Mul": 62}, 59, 118, 59),
    "inception_v1": ({"avgpool2d": 1, "concat": 9, "conv2d": 57, "fallback": 2,
                      "fully_connected": 1, "maxpool2d": 13, "reshape": 1, "softmax": 1},
                     {"LRN": 2}, 0, 0, 57),
    "inception_v2": ({"avgpool2d": 8, "concat": 10, "conv2d": 69, "fully_connected": 1,
                      "maxpool2d": 5, "reshape": 1, "softmax": 1}, {}, 69, 138, 69),
    "resnet50": ({"add": 16, "avgpool2d": 1, "conv2d": 53, "fully_connected": 1, "maxpool2d": 1,
                  "reshape": 1, "softmax": 1}, {}, 53, 0, 49),
    "shufflenet": ({"add": 13, "avgpool2d": 4, "clamp": 3, "concat": 3, "conv2d": 49,
                    "fully_connected": 1, "maxpool2d": 1, "reshape": 33, "softmax": 1,
                    "transpose": 16}, {}, 49, 0, 30),
    "squeezenet": ({"concat": 8, "conv2d": 26, "global_avgpool2d": 1, "maxpool2d": 3,
                    "softmax": 1}, {}, 0, 0, 26),
    "vgg19": ({"conv2d": 16, "fully_connected": 3, "maxpool2d": 5, "reshape": 1, "softmax": 1},
              {}, 0, 0, 18),
    "zfnet512": ({"conv2d": 5, "fallback": 2, "fully_connected": 3, "maxpool2d": 3,
                  "reshape": 1, "softmax": 1}, {"LRN": 2}, 0, 0, 7),
}


def _onnx_ops(name: str) -> collections.Counter:
    model = onnx.load(LIGHT / f"light_{name}.onnx")
    return collections.Counter(n.op_type for n in model.graph.node)


def test_every_light_model_is_covered():
    assert MODELS, f"no light models under {LIGHT}"
    assert set(MODELS) == set(EXPECTED), "a new light model: add its expected op counts"


@pytest.mark.parametrize("name", MODELS)
def test_light_model_imports_with_plausible_op_counts(name):
    program = import_onnx(LIGHT / f"light_{name}.onnx")
    assert not program.executable and program.metadata["estimate_only"] is True
    ops = collections.Counter(n.op.value for n in program.nodes)
    fallbacks = collections.Counter(n.attrs["op_type"] for n in program.nodes
                                    if n.op is OpKind.FALLBACK)
    meta = program.metadata
    counts, fallback_types, bn, affine, relu = EXPECTED[name]
    assert dict(ops) == counts
    assert dict(fallbacks) == fallback_types
    assert len(meta.get("folded_batchnorm", [])) == bn
    assert len(meta.get("folded_affine", [])) == affine
    assert len(meta.get("fused_activations", [])) == relu

    # the same story told by the ONNX graph itself
    onnx_ops = _onnx_ops(name)
    assert ops["conv2d"] == onnx_ops["Conv"]
    assert ops["maxpool2d"] == onnx_ops["MaxPool"]
    assert ops["fully_connected"] == onnx_ops["Gemm"]
    assert ops["concat"] == onnx_ops["Concat"]
    assert ops["avgpool2d"] == onnx_ops["AveragePool"]
    assert ops["global_avgpool2d"] == onnx_ops["GlobalAveragePool"]
    assert ops["add"] == onnx_ops["Sum"]
    assert bn + fallbacks["BatchNormalization"] == onnx_ops["BatchNormalization"]
    assert relu + ops["clamp"] == onnx_ops["Relu"]
    assert ops["softmax"] + fallbacks["Softmax"] == onnx_ops["Softmax"]
    assert "ConstantOfShape" not in fallbacks  # weights are constants, not host work

    # weights are shapes only, and every conv has its weights and the right channel counts
    assert all(t.data is None for t in program.tensors.values())
    for node in program.nodes:
        if node.op is OpKind.CONV2D:
            x, w = (program.tensors[i] for i in node.inputs[:2])
            assert x.shape[1] == w.shape[1] * node.attrs["groups"]
    # a FALLBACK node keeps its ONNX attributes as JSON
    json.dumps([n.attrs for n in program.nodes])


def test_resnet50_has_53_convs_with_folded_batchnorm():
    program = import_onnx(LIGHT / "light_resnet50.onnx")
    convs = [n for n in program.nodes if n.op is OpKind.CONV2D]
    assert len(convs) == 53
    assert all(len(n.inputs) == 3 for n in convs)  # BN gave every conv a bias
    first = program.tensors[convs[0].outputs[0]]
    assert first.shape == (1, 64, 112, 112)
    assert program.tensors[program.outputs[0]].shape == (1, 1000)
    assert program.inputs == ["gpu_0/data_0"]


@pytest.mark.parametrize("name,input_name,shape,first_conv,output",
                         [("squeezenet", "data_0", (1, 3, 299, 299), (1, 64, 149, 149),
                           (1, 1000, 1, 1)),
                          ("densenet121", "data_0", (2, 3, 299, 299), (2, 64, 150, 150),
                           (2, 1000, 1, 1))])
def test_input_shapes_override_reinfers_every_shape(name, input_name, shape, first_conv,
                                                    output):
    program = import_onnx(LIGHT / f"light_{name}.onnx", input_shapes={input_name: shape})
    assert program.tensors[input_name].shape == shape
    conv = next(n for n in program.nodes if n.op is OpKind.CONV2D)
    assert program.tensors[conv.outputs[0]].shape == first_conv
    assert program.tensors[program.outputs[0]].shape == output


def test_resnet50_at_299_fails_on_its_fixed_reshape():
    """light_resnet50 pools with a fixed 7x7 AveragePool and reshapes to [1, 2048]: at 299x299
    the pool gives 4x4, so the graph itself is invalid there; the error names the node."""
    with pytest.raises(ModelImportError) as err:
        import_onnx(LIGHT / "light_resnet50.onnx", input_shapes={"gpu_0/data_0": (1, 3, 299, 299)})
    message = str(err.value)
    assert "\n" not in message and "light_resnet50.onnx" in message
    assert "(Reshape)" in message and "(1, 2048, 4, 4)" in message


def test_import_keeps_memory_small_and_round_trips(tmp_path):
    tracemalloc.start()
    program = import_onnx(LIGHT / "light_vgg19.onnx")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    weights = sum(t.numel for t in program.tensors.values()
                  if t.name not in program.inputs and program.producer(t.name) is None) * 4
    assert weights > 500e6            # VGG-19's 143 M parameters ...
    assert peak < 50e6                # ... are never materialised
    path = save_program(program, tmp_path / "vgg19.program")
    again = load_program(path)
    assert [n.op for n in again.nodes] == [n.op for n in program.nodes]
    assert again.metadata == json.loads(json.dumps(program.metadata))
