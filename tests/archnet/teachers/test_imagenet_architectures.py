"""The ImageNet architectures are the published networks: parameter counts equal to the last
unit to the figures torchvision, timm and Keras/TF report, torchvision's state_dict key names,
1000 logits at 224x224, and an ONNX export that onnx's checker and onnxruntime accept."""

import os
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from archnet.errors import TeacherError
from archnet.teachers.imagenet import (
    ARCHITECTURES,
    FIXED_INPUT_SIZE,
    build_architecture,
    export_onnx,
)

# trainable parameters (batch-norm running statistics are buffers, not counted): torchvision's
# model documentation; DeiT-Tiny as timm reports; MobileNet V1 1.0 and EfficientNet-Lite0 as
# Keras/TF report (Keras's "trainable params"; its total adds the batch-norm moving statistics);
# EfficientNet-EdgeTPU S/M/L as KerasHub's presets (efficientnet_es/em/el, ports of timm's
# models, 1000 classes) list them; timm's model cards round them to 5.4M, 6.9M and 10.6M
PARAMETERS = {
    "mobilenet_v1": 4_231_976,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "efficientnet_lite0": 4_652_008,
    "efficientnet_edgetpu_s": 5_438_392,
    "efficientnet_edgetpu_m": 6_899_496,
    "efficientnet_edgetpu_l": 10_589_712,
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "resnet152": 60_192_808,
    "inception_v1": 6_624_904,  # torchvision's googlenet without its auxiliary classifiers
    "deit_tiny": 5_717_416,
    "vit_b_16": 86_567_656,
}

# a few torchvision state_dict keys with their shapes: the layout (block nesting, where the
# expansion is skipped, where squeeze-excitation sits) and not just the totals matches
TORCHVISION_KEYS = {
    "mobilenet_v2": {"features.1.conv.0.0.weight": (32, 1, 3, 3),
                     "features.1.conv.1.weight": (16, 32, 1, 1),
                     "features.2.conv.0.0.weight": (96, 16, 1, 1),
                     "features.18.0.weight": (1280, 320, 1, 1),
                     "classifier.1.weight": (1000, 1280)},
    "mobilenet_v3_large": {"features.1.block.0.0.weight": (16, 1, 3, 3),
                           "features.4.block.2.fc1.weight": (24, 72, 1, 1),
                           "features.16.0.weight": (960, 160, 1, 1),
                           "classifier.0.weight": (1280, 960)},
    "mobilenet_v3_small": {"features.1.block.1.fc1.weight": (8, 16, 1, 1),
                           "features.12.0.weight": (576, 96, 1, 1),
                           "classifier.3.weight": (1000, 1024)},
    "efficientnet_b0": {"features.1.0.block.1.fc1.weight": (8, 32, 1, 1),
                        "features.2.0.block.2.fc2.weight": (96, 4, 1, 1),
                        "features.8.0.weight": (1280, 320, 1, 1),
                        "classifier.1.weight": (1000, 1280)},
    "inception_v1": {"inception3a.branch3.1.conv.weight": (32, 16, 3, 3),
                     "inception5b.branch4.1.bn.running_var": (128,),
                     "fc.weight": (1000, 1024)},
    "vit_b_16": {"class_token": (1, 1, 768), "encoder.pos_embedding": (1, 197, 768),
                 "encoder.layers.encoder_layer_11.self_attention.in_proj_weight": (2304, 768),
                 "encoder.layers.encoder_layer_0.mlp.3.weight": (768, 3072),
                 "heads.head.weight": (1000, 768)},
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_parameter_count_is_the_published_one(name):
    with torch.device("meta"):
        model = build_architecture(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]
    for key, shape in TORCHVISION_KEYS.get(name, {}).items():
        assert tuple(model.state_dict()[key].shape) == shape, key


def test_every_architecture_has_a_published_count():
    assert set(PARAMETERS) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_forward_gives_logits_at_224_in_eval_mode(name):
    torch.manual_seed(0)
    model = build_architecture(name, num_classes=10)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 10)
    assert torch.isfinite(logits).all()


def test_unknown_name_is_a_one_line_value_error():
    with pytest.raises(ValueError) as info:
        build_architecture("alexnet")
    message = str(info.value)
    assert "'alexnet'" in message and "mobilenet_v2" in message and "\n" not in message
    assert isinstance(info.value, TeacherError)  # and so one line, exit code 2, on the CLI


def test_bad_class_count_is_refused():
    with pytest.raises(TeacherError, match="num_classes"):
        build_architecture("mobilenet_v2", num_classes=0)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "inception_v1", "deit_tiny"])
def test_export_onnx_is_valid_and_computes_the_model(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    size = FIXED_INPUT_SIZE.get(name, 64)
    torch.manual_seed(0)
    model = build_architecture(name)
    path = export_onnx(model, tmp_path / f"{name}.onnx", input_size=size)
    assert os.listdir(tmp_path) == [f"{name}.onnx"]  # no temporary left beside it
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["logits"]
    image = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = model(image).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"image": image.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_failed_export_leaves_no_file(tmp_path):
    target = tmp_path / "vit.onnx"
    target.write_bytes(b"the previous good file")
    with pytest.raises(TeacherError, match="224x224"):
        export_onnx(build_architecture("deit_tiny"), target, input_size=64)
    assert os.listdir(tmp_path) == ["vit.onnx"]
    assert target.read_bytes() == b"the previous good file"


# ------------------------------------------------------------------ EfficientNet-EdgeTPU

# native input size, blocks per stage (round_repeats of 1, 2, 4, 5, 4, 2), residual adds, and
# MACs there (convs and fc; timm's model cards give 1.8, 3.0 and 8.0 GMACs)
EDGETPU = {"efficientnet_edgetpu_s": (224, [1, 2, 4, 5, 4, 2], 12, 1_788_731_008),
           "efficientnet_edgetpu_m": (240, [2, 3, 5, 6, 5, 3], 17, 3_013_321_088),
           "efficientnet_edgetpu_l": (300, [2, 3, 6, 7, 6, 3], 20, 7_936_082_848)}

# the layout the reference builds: the first block's full 3x3 conv expands the stem's output
# to 4 x the *declared* 24 (x 1.2, rounded, for L) channels; fused stages have no depthwise
# conv, the last three have 1x1 expand, 5x5 depthwise, 1x1 project; the head is 1280 x width
EDGETPU_KEYS = {
    "efficientnet_edgetpu_s": {"features.0.0.weight": (32, 3, 3, 3),
                               "features.1.0.block.0.0.weight": (96, 32, 3, 3),
                               "features.1.0.block.1.0.weight": (24, 96, 1, 1),
                               "features.2.0.block.0.0.weight": (192, 24, 3, 3),
                               "features.3.0.block.0.0.weight": (256, 32, 3, 3),
                               "features.3.3.block.0.0.weight": (384, 48, 3, 3),
                               "features.4.0.block.0.0.weight": (384, 48, 1, 1),
                               "features.4.0.block.1.0.weight": (384, 1, 5, 5),
                               "features.6.1.block.2.0.weight": (192, 1536, 1, 1),
                               "features.7.0.weight": (1280, 192, 1, 1),
                               "classifier.1.weight": (1000, 1280)},
    "efficientnet_edgetpu_m": {"features.1.1.block.0.0.weight": (96, 24, 3, 3),
                               "features.7.0.weight": (1280, 192, 1, 1)},
    "efficientnet_edgetpu_l": {"features.0.0.weight": (40, 3, 3, 3),
                               "features.1.0.block.0.0.weight": (128, 40, 3, 3),
                               "features.1.1.block.0.0.weight": (128, 32, 3, 3),
                               "features.3.0.block.0.0.weight": (320, 40, 3, 3),
                               "features.4.0.block.0.0.weight": (448, 56, 1, 1),
                               "features.5.0.block.2.0.weight": (176, 896, 1, 1),
                               "features.6.2.block.2.0.weight": (232, 1856, 1, 1),
                               "features.7.0.weight": (1536, 232, 1, 1),
                               "classifier.1.weight": (1000, 1536)},
}


@pytest.mark.parametrize("name", list(EDGETPU))
def test_edgetpu_layout_is_the_references(name):
    _, repeats, residuals, _ = EDGETPU[name]
    with torch.device("meta"):
        model = build_architecture(name)
    stages = list(model.features)[1:-1]
    assert [len(stage) for stage in stages] == repeats
    for key, shape in EDGETPU_KEYS[name].items():
        assert tuple(model.state_dict()[key].shape) == shape, key
    assert sum(block.use_res_connect for stage in stages for block in stage) == residuals
    assert not any(block.use_res_connect for block in stages[0])  # "noskip"
    convs = [m for stage in stages[:3] for m in stage.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.groups == 1 for c in convs)  # fused: no depthwise conv
    activations = {type(m) for m in model.modules() if not list(m.children())}
    assert activations & {nn.ReLU6, nn.SiLU, nn.Sigmoid, nn.Hardswish} == set()
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("name", list(EDGETPU))
def test_edgetpu_forward_and_macs_at_native_size(name):
    size, _, _, expected_macs = EDGETPU[name]
    torch.manual_seed(0)
    model = build_architecture(name)
    macs = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs.append(output.numel() * module.in_channels // module.groups * k)
        else:
            macs.append(module.in_features * module.out_features)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(count)
    with torch.no_grad():
        features = model.features(torch.randn(1, 3, size, size))
        logits = model.classifier(torch.flatten(model.avgpool(features), 1))
    assert features.shape[2:] == ((size + 31) // 32,) * 2  # 7, 8 and 10: TF "same" sizes
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()
    assert sum(macs) == expected_macs


def test_edgetpu_s_exports_and_imports_without_fallback(tmp_path):
    from simulator.onnx_import import import_onnx

    torch.manual_seed(0)
    path = export_onnx(build_architecture("efficientnet_edgetpu_s"), tmp_path / "s.onnx",
                       input_size=224)
    program = import_onnx(path)
    ops = Counter(n.op.value for n in program.nodes)
    assert ops["fallback"] == 0, ops
    # 1 stem + 2 x 7 fused + 3 x 11 MBConv + 1 head convs; the ReLUs fuse into them
    assert ops["conv2d"] == 49 and ops["add"] == 12 and ops["fully_connected"] == 1
    assert ops["clamp"] == 0
