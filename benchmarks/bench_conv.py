"""How fast the simulator runs one real layer, beside onnxruntime, and that it is exact.

The layer: a 3x3 convolution, 64 -> 64 channels on 56x56 (pad 1), u8 activations x s8 weights
(ResNet-18's first stage). It is built once as a simulator Program (conv2d then requantize, via
``ProgramBuilder``) and once as an ONNX ``QLinearConv`` model (intra_op_num_threads = all
cores). Timed in the same process, in alternating blocks so that all sides see the same
(possibly shared) machine; medians over the repeats, best times printed beside them:

* the simulator kernels for the layer, ``kernels.conv2d`` then ``kernels.requantize`` (what
  QLinearConv does: MACs and requantization) with a 32-bit accumulator saturating at the end,
  against ORT; for information also conv2d alone and the whole Program through
  ``simulator.execute`` (which adds its input checks and int64 copies);
* the same kernels with a 16-bit accumulator saturating after every MAC (order-dependent);
* the NumPy reference, once, on a slice of the layer (for scale; it must agree too);
* bit-exactness: the simulator under ORT's own arithmetic (32-bit wrap, float32 scale
  x_scale * w_scale / y_scale in float32, ties to even) must reproduce ORT's output bit for bit;
* a fresh process: time from spawn to the first simulated result (after a warm-up process has
  populated the numba cache), and that process's peak RSS.

    python benchmarks/bench_conv.py [--repeats 20] [--check]

``--check`` exits 1 if a target is missed: kernels >= 0.2x ORT, 16-bit per-MAC >= 5 GMAC/s,
first result < 2 s, peak RSS < 1 GiB, bit-exact against ORT, reference agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.contract import (AccumulatorSpec, ArithmeticSpec, Overflow,  # noqa: E402
                                RequantMode, RequantSpec, RoundingMode, SaturationPoint)
from simulator.execute import execute  # noqa: E402
from simulator.ir import Program, ProgramBuilder  # noqa: E402
from simulator.numerics import fixed_point as fp  # noqa: E402
from simulator.numerics import kernels  # noqa: E402

N, C_IN, C_OUT, H, W, K = 1, 64, 64, 56, 56, 3
MACS = N * C_OUT * C_IN * K * K * H * W
X_SCALE, X_ZP, W_SCALE, Y_ZP = 0.02, 128, 0.004, 128

ACC32_SAT_FINAL = ArithmeticSpec(
    AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL),
    RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE, 32))
ACC16_SAT_PER_MAC = ArithmeticSpec(
    AccumulatorSpec(16, Overflow.SATURATE, SaturationPoint.PER_MAC),
    RequantSpec(RequantMode.MULTIPLIER_SHIFT, RoundingMode.TFLITE, 32))
ORT_ARITHMETIC = ArithmeticSpec(  # what onnxruntime's QLinearConv computes
    AccumulatorSpec(32, Overflow.WRAP, SaturationPoint.FINAL),
    RequantSpec(RequantMode.FLOAT_SCALE, RoundingMode.HALF_EVEN, 32))

TARGET_RATIO = 0.2
TARGET_PER_MAC_GMACS = 5.0
TARGET_FIRST_RESULT_S = 2.0
TARGET_PEAK_RSS_MB = 1024.0


def layer_data(seed: int = 0, c_out: int = C_OUT, h: int = H, w: int = W):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (N, C_IN, h, w), dtype=np.uint8)
    wts = rng.integers(-127, 128, (c_out, C_IN, K, K), dtype=np.int8)
    bias = rng.integers(-2000, 2000, c_out).astype(np.int32)
    return x, wts, bias


def output_scale() -> float:
    """An output scale that spreads this layer's outputs over u8 (fixed, not data-fitted)."""
    acc_std = 128 / np.sqrt(3) * 127 / np.sqrt(3) * np.sqrt(C_IN * K * K)
    return float(np.float32(X_SCALE * W_SCALE * 4 * acc_std / 255))


def real_multiplier(y_scale: float) -> float:
    """As onnxruntime computes it: float32 x_scale * w_scale / y_scale."""
    return float(np.float32(X_SCALE) * np.float32(W_SCALE) / np.float32(y_scale))


def build_program(wts, bias, y_scale: float, h: int = H, w: int = W) -> Program:
    b = ProgramBuilder("bench_conv3x3", metadata={"source": "benchmarks/bench_conv.py"})
    x = b.input("x", (N, C_IN, h, w), "u8", scale=X_SCALE, zero_point=X_ZP)
    wt = b.constant("w", wts, "s8", scale=W_SCALE)
    bt = b.constant("b", bias, "s32", scale=X_SCALE * W_SCALE)
    acc = b.node("conv2d", [x, wt, bt], "acc", strides=[1, 1], pads=[1, 1, 1, 1],
                 scale=X_SCALE * W_SCALE)
    y = b.node("requantize", [acc], "y", dtype="u8", scale=y_scale, zero_point=Y_ZP,
               real_multiplier=[real_multiplier(y_scale)])
    b.output(y)
    return b.build()


def ort_session(wts, bias, y_scale: float, threads: int):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(X_ZP, np.uint8), "x_zp"),
             numpy_helper.from_array(wts, "w"),
             numpy_helper.from_array(np.array(W_SCALE, np.float32), "w_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(Y_ZP, np.uint8), "y_zp"),
             numpy_helper.from_array(bias, "b")]
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp",
                                            "y_scale", "y_zp", "b"], ["y"],
                            kernel_shape=[K, K], pads=[1, 1, 1, 1], strides=[1, 1])
    graph = helper.make_graph(
        [node], "bench_conv3x3", [helper.make_tensor_value_info("x", TensorProto.UINT8,
                                                                [N, C_IN, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [N, C_OUT, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def median_gmacs(times: list[float], macs: int = MACS) -> float:
    return macs / float(np.median(times)) / 1e9


def run_child() -> None:
    """Fresh-process mode: simulate once, report time to first result and peak RSS (JSON)."""
    t0 = float(os.environ.get("BENCH_SPAWN_TIME", "nan"))
    x, wts, bias = layer_data()
    program = build_program(wts, bias, output_scale())
    first = execute(program, ACC32_SAT_FINAL, {"x": x}, backend="kernels", trace=False)
    first_at = time.time()
    for arith in (ACC16_SAT_PER_MAC, ORT_ARITHMETIC, ACC32_SAT_FINAL):
        execute(program, arith, {"x": x}, backend="kernels", trace=False)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"first_result_s": first_at - t0, "peak_rss_mb": rss_mb,
                      "checksum": int(first.outputs["y"].sum())}))


def fresh_process() -> dict:
    env = dict(os.environ)
    env["BENCH_SPAWN_TIME"] = repr(time.time())
    proc = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_child()
        return 0

    x, wts, bias = layer_data()
    y_scale = output_scale()
    program = build_program(wts, bias, y_scale)
    session = ort_session(wts, bias, y_scale, args.threads)
    feed = {"x": x}

    def sim(arith):
        return execute(program, arith, feed, backend="kernels", trace=False).outputs["y"]

    # The kernels as the executor calls them for this Program: conv2d, then requantize with
    # the scale prepared once for the chip (simulator.execute._run_requantize does the same).
    x64, w64, b64 = x.astype(np.int64), wts.astype(np.int64), bias.astype(np.int64)

    def layer(arith, conv_only=False):
        acc, _ = kernels.conv2d(x64, w64, b64, X_ZP, 0, (1, 1), (1, 1, 1, 1), (1, 1), 1,
                                arith.accumulator)
        if conv_only:
            return acc
        prepared = fp.prepare_scale([real_multiplier(y_scale)], arith.requant)
        return kernels.requantize(acc, 0, prepared, 1, Y_ZP, 0, 255)

    # warm-up: compiles (or loads from the numba cache) every kernel used below
    for arith in (ACC32_SAT_FINAL, ACC16_SAT_PER_MAC, ORT_ARITHMETIC):
        sim(arith)
        layer(arith)
    y_ort = session.run(None, feed)[0]

    # bit-exactness against onnxruntime, under onnxruntime's arithmetic, through the executor
    y_sim = sim(ORT_ARITHMETIC)
    mismatches = int((y_sim.astype(np.int64) != y_ort.astype(np.int64)).sum())
    assert np.array_equal(layer(ORT_ARITHMETIC), y_sim)

    def timed(fn, times):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)

    # Alternating blocks, so that every side samples the same stretch of a shared machine; a
    # pause after each ORT block, because ORT's idle workers spin for a while after a run and
    # would take a core from whatever runs next.
    t_ort, t_layer, t_exec, t_conv, t_mac16 = [], [], [], [], []
    block = 5
    while len(t_layer) < args.repeats:
        for _ in range(block):
            timed(lambda: session.run(None, feed), t_ort)
        time.sleep(0.2)
        for _ in range(block):
            timed(lambda: layer(ACC32_SAT_FINAL), t_layer)
        for _ in range(block):
            timed(lambda: sim(ACC32_SAT_FINAL), t_exec)
        for _ in range(block):
            timed(lambda: layer(ACC32_SAT_FINAL, conv_only=True), t_conv)
    for _ in range(max(3, args.repeats // 4)):
        timed(lambda: layer(ACC16_SAT_PER_MAC), t_mac16)
    plan = kernels.conv_plan(x64, w64, b64, X_ZP, 0, 1, ACC32_SAT_FINAL.accumulator)
    plan16 = kernels.conv_plan(x64, w64, b64, X_ZP, 0, 1, ACC16_SAT_PER_MAC.accumulator)

    # the reference, once, on a slice (8 output channels, 14x14) -- and it must agree
    xs, ws, bs = layer_data(1, c_out=8, h=14, w=14)
    small = build_program(ws, bs, y_scale, h=14, w=14)
    t = time.perf_counter()
    ref = execute(small, ACC16_SAT_PER_MAC, {"x": xs}, backend="reference", trace=False)
    t_ref = time.perf_counter() - t
    ker = execute(small, ACC16_SAT_PER_MAC, {"x": xs}, backend="kernels", trace=False)
    ref_agrees = bool(np.array_equal(ref.outputs["y"], ker.outputs["y"])
                      and ref.overflow == ker.overflow)
    ref_macs = N * 8 * C_IN * K * K * 14 * 14

    fresh_process()  # warm-up: populates anything the cache still lacks
    child = fresh_process()

    g_layer, g_ort, g_mac16 = median_gmacs(t_layer), median_gmacs(t_ort), median_gmacs(t_mac16)
    g_exec, g_conv = median_gmacs(t_exec), median_gmacs(t_conv)
    ratio = g_layer / g_ort
    rows = [
        ("kernels conv2d+requantize, acc32 sat final", f"{g_layer:8.2f} GMAC/s",
         f"{g_ort:8.2f} GMAC/s", f"{ratio:.3f}x ORT", f">= {TARGET_RATIO}x ORT",
         ratio >= TARGET_RATIO),
        (f"  conv2d alone (engine {plan.path})", f"{g_conv:8.2f} GMAC/s", "",
         f"{g_conv / g_ort:.3f}x ORT", "info", True),
        ("  whole Program via simulator.execute", f"{g_exec:8.2f} GMAC/s", "",
         f"{g_exec / g_ort:.3f}x ORT", "info", True),
        (f"kernels, acc16 sat per MAC (engine {plan16.path})", f"{g_mac16:8.2f} GMAC/s", "", "",
         f">= {TARGET_PER_MAC_GMACS} GMAC/s", g_mac16 >= TARGET_PER_MAC_GMACS),
        ("reference (8 ch, 14x14 slice, acc16 per MAC)", f"{ref_macs / t_ref / 1e9:8.4f} GMAC/s",
         "", "", "agrees with kernels", ref_agrees),
        ("bit-exact vs ORT (acc32 wrap, f32 scale)", f"{mismatches} of {y_ort.size} differ", "",
         "", "0 differ", mismatches == 0),
        ("fresh process: spawn -> first result", f"{child['first_result_s']:8.3f} s", "", "",
         f"< {TARGET_FIRST_RESULT_S} s", child["first_result_s"] < TARGET_FIRST_RESULT_S),
        ("fresh process: peak RSS", f"{child['peak_rss_mb']:8.1f} MiB", "", "",
         f"< {TARGET_PEAK_RSS_MB:.0f} MiB", child["peak_rss_mb"] < TARGET_PEAK_RSS_MB),
    ]
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average {load} (other processes share the "
          f"cores; all sides are timed in alternating blocks of the same loop)")
    print(f"layer: N={N} C={C_IN}->{C_OUT} {H}x{W} k{K} pad1, u8 x s8, {MACS / 1e6:.1f} MMAC; "
          f"median of {args.repeats} (per-MAC: {len(t_mac16)}); ORT intra_op_num_threads="
          f"{args.threads}, QLinearConv (MACs and requantization); simulator threads "
          f"{kernels.thread_count()}")

    def ms(times):
        return f"{np.median(times) * 1e3:.3f} ms (best {min(times) * 1e3:.3f})"

    print(f"ORT {ms(t_ort)}; kernels conv2d+requantize {ms(t_layer)}; conv2d alone "
          f"{ms(t_conv)}; execute {ms(t_exec)}; per-MAC {ms(t_mac16)}")
    widths = (46, 22, 17, 12, 22, 6)
    header = ("case", "simulator", "onnxruntime", "ratio", "target", "status")
    print("  ".join(h.ljust(wd) for h, wd in zip(header, widths)))
    print("  ".join("-" * wd for wd in widths))
    for *cells, ok in rows:
        print("  ".join(str(c).ljust(wd) for c, wd in zip((*cells, "PASS" if ok else "MISS"),
                                                           widths)))
    missed = [r[0] for r in rows if not r[-1]]
    if args.check and missed:
        print(f"missed: {missed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
