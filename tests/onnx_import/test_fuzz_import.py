"""Fuzz: truncated, byte-mutated and random files fed to import_onnx.

Every failure must be a ModelImportError (one line, naming the file); an import that succeeds
must give a valid Program. Sizes are bounded (seed models of a few kB, random files up to
4 kB) and each import must finish in seconds, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import onnx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from import_graphs import float_net, integer_chain, shape_arithmetic_net
from simulator.errors import ModelImportError
from simulator.onnx_import import import_onnx

LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
SEEDS = {
    "integer_chain": integer_chain().SerializeToString(),
    "float_net": float_net().SerializeToString(),
    "shape_arithmetic": shape_arithmetic_net().SerializeToString(),
    "alexnet_light": (LIGHT / "light_bvlc_alexnet.onnx").read_bytes(),
}
MODES = [None, True, False]
SECONDS_PER_IMPORT = 10.0

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"import_onnx ran longer than {4 * SECONDS_PER_IMPORT:.0f} s")


def _check(data: bytes, mode) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.onnx"
        path.write_bytes(data)
        start = time.monotonic()
        # a hang fails the example instead of stalling the suite (POSIX main thread only)
        guard = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
        if guard:
            previous = signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(int(4 * SECONDS_PER_IMPORT))
        try:
            program = import_onnx(path, estimate_only=mode)
        except ModelImportError as exc:
            message = str(exc)
            assert "\n" not in message and str(path) in message, message
        else:
            program.validate()
            assert program.nodes or program.outputs
        finally:
            if guard:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)
        assert time.monotonic() - start < SECONDS_PER_IMPORT


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), cut=st.floats(0.0, 1.0), mode=st.sampled_from(MODES))
@example(seed="integer_chain", cut=0.999, mode=None)
@example(seed="float_net", cut=0.5, mode=True)
def test_truncated(seed, cut, mode):
    data = SEEDS[seed]
    _check(data[: int(len(data) * cut)], mode)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)),
       edits=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255),
                                st.sampled_from(["set", "insert", "delete", "xor"])),
                      min_size=1, max_size=8),
       mode=st.sampled_from(MODES))
def test_byte_mutated(seed, edits, mode):
    data = bytearray(SEEDS[seed])
    for where, value, how in edits:
        i = int(where * len(data))
        if how == "set":
            data[i] = value
        elif how == "insert":
            data.insert(i, value)
        elif how == "delete" and len(data) > 1:
            del data[i]
        elif how == "xor":
            data[i] ^= 1 << (value % 8)
    _check(bytes(data), mode)


@FUZZ
@given(data=st.binary(min_size=0, max_size=4096), mode=st.sampled_from(MODES))
@example(data=b"\x08\x07\x12\x00", mode=None)   # ir_version 7, empty producer, no graph
@example(data=b"\x3a\x00", mode=None)           # an empty graph
def test_random_bytes(data, mode):
    _check(data, mode)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), data=st.data())
def test_mutated_fields_of_a_parsed_model(seed, data):
    """Structure-aware mutation: change attribute integers, dims and node wiring of a model
    that still parses, so the checker, shape inference and the translators all see it."""
    model = onnx.ModelProto.FromString(SEEDS[seed])
    graph = model.graph
    nodes = list(graph.node)
    for _ in range(data.draw(st.integers(1, 4))):
        node = nodes[data.draw(st.integers(0, len(nodes) - 1))]
        what = data.draw(st.sampled_from(["attr", "input", "dims", "op"]))
        if what == "attr" and node.attribute:
            attr = node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))]
            if attr.ints:
                attr.ints[data.draw(st.integers(0, len(attr.ints) - 1))] = \
                    data.draw(st.integers(-3, 1 << 20))
            elif attr.type == onnx.AttributeProto.INT:
                attr.i = data.draw(st.integers(-3, 1 << 20))
        elif what == "input" and node.input:
            names = [n for n2 in nodes for n in n2.output] + [t.name for t in graph.initializer]
            node.input[data.draw(st.integers(0, len(node.input) - 1))] = \
                data.draw(st.sampled_from(names + [""]))
        elif what == "dims" and graph.initializer:
            tensor = graph.initializer[data.draw(st.integers(0, len(graph.initializer) - 1))]
            if tensor.dims:
                tensor.dims[data.draw(st.integers(0, len(tensor.dims) - 1))] = \
                    data.draw(st.integers(0, 1 << 12))
        elif what == "op":
            node.op_type = data.draw(st.sampled_from(
                ["Relu", "MaxPool", "Conv", "QLinearConv", "Concat", "Reshape", "Identity",
                 "ConstantOfShape", "Gemm", "NoSuchOp"]))
    _check(model.SerializeToString(), data.draw(st.sampled_from(MODES)))


def test_fuzz_seeds_import():
    for name, data in SEEDS.items():
        _check(data, None)
