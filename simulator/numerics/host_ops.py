"""Float ops a host CPU runs when the chip cannot (fallbacks), keyed by ONNX op type.

These are deliberately plain float32 NumPy: a fallback is not bit-exact hardware, it is the
host's float math, and every report marks it. An op type missing here can still be estimated
but not executed.
"""

from __future__ import annotations

import math

import numpy as np

from simulator.errors import UnsupportedOpError


def _softmax(x, axis=-1, **_):
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _layer_norm(x, scale=None, bias=None, axis=-1, epsilon=1e-5, **_):
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(epsilon))
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(x, approximate="none", **_):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / np.sqrt(2.0)))


HOST_OPS = {
    "Softmax": _softmax,
    "LayerNormalization": _layer_norm,
    "Gelu": _gelu,
    "Sigmoid": lambda x, **_: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, **_: np.tanh(x),
    "Relu": lambda x, **_: np.maximum(x, 0),
    "Exp": lambda x, **_: np.exp(x),
    "Erf": lambda x, **_: _erf(x),
    "Identity": lambda x, **_: x,
    "Add": lambda a, b, **_: a + b,
    "Sub": lambda a, b, **_: a - b,
    "Mul": lambda a, b, **_: a * b,
    "Div": lambda a, b, **_: a / b,
    "MatMul": lambda a, b, **_: a @ b,
}


def run_host_op(op_type: str, inputs: list[np.ndarray], attributes: dict, where: str) -> np.ndarray:
    fn = HOST_OPS.get(op_type)
    if fn is None:
        raise UnsupportedOpError(f"{where}: host fallback {op_type!r} has no float implementation "
                                 f"(executable: {', '.join(sorted(HOST_OPS))}); it can only be "
                                 f"estimated")
    args = [np.asarray(v, dtype=np.float32) for v in inputs]
    return np.asarray(fn(*args, **attributes), dtype=np.float32)
