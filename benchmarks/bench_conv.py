"""How fast the simulator runs one real layer, beside onnxruntime, and that it is exact.

The layer: a 3x3 convolution, 64 -> 64 channels on 56x56 (pad 1), u8 activations x s8 weights
(ResNet-18's first stage), then its requantization to u8. onnxruntime runs it as one ONNX
``QLinearConv`` (intra_op_num_threads = all cores); the simulator runs it as a user does, through
``simulator.execute`` on a Program prepared once for the chip (``simulator.execute.prepare``:
weights packed, scales made integers, the requantize computed in the conv's epilogue), with its
input checks and the int64 result. Timed in the same process, in alternating blocks so that
all sides see the same (possibly shared) machine; medians over the repeats:

* a 32-bit accumulator saturating at the end, requantized by an integer multiplier and shift
  under each rounding mode (floor, half up, half even, half away, TFLite's double rounding);
* onnxruntime's own arithmetic (32-bit wrap, float32 scale, ties to even), on the Program
  built in code and on the same layer written as an ONNX QLinearConv with input zero point 3
  and output zero point 5, imported by ``simulator.onnx_import`` and run under the
  ``onnx-qlinear`` profile; both must equal onnxruntime's output bit for bit;
* a 16-bit accumulator saturating after every MAC (order-dependent), in GMAC/s;
* the NumPy reference, once, on a slice of the layer (for scale; it must agree too);
* a fresh process: time from spawn to the first simulated result (after a warm-up process has
  populated the numba cache), and that process's peak RSS.

    python benchmarks/bench_conv.py [--repeats 20] [--check]

``--check`` exits 1 if a target is missed: every requantize mode >= 0.5x onnxruntime, 16-bit
per-MAC >= 20 GMAC/s, first result < 2 s, peak RSS < 1 GiB, bit-exact against onnxruntime,
reference agrees.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.checks import report  # noqa: E402
from simulator.contract import (AccumulatorSpec, ArithmeticSpec, Overflow,  # noqa: E402
                                RequantMode, RequantSpec, RoundingMode, SaturationPoint)
from simulator.execute import execute, prepare  # noqa: E402
from simulator.ir import Program, ProgramBuilder  # noqa: E402
from simulator.numerics import kernels, tasks  # noqa: E402

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

TARGET_RATIO = 0.5
TARGET_PER_MAC_GMACS = 20.0
USER_X_ZP, USER_Y_ZP = 3, 5   # the imported layer's zero points: nonzero, not the midpoint


def acc32_sat_final(rounding: RoundingMode) -> ArithmeticSpec:
    return ArithmeticSpec(AccumulatorSpec(32, Overflow.SATURATE, SaturationPoint.FINAL),
                          RequantSpec(RequantMode.MULTIPLIER_SHIFT, rounding, 32))
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


def qlinear_conv_model(wts, bias, y_scale: float, x_zp: int = X_ZP, y_zp: int = Y_ZP) -> bytes:
    """The layer as one ONNX QLinearConv (serialized)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(X_SCALE, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(x_zp, np.uint8), "x_zp"),
             numpy_helper.from_array(wts, "w"),
             numpy_helper.from_array(np.array(W_SCALE, np.float32), "w_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(y_zp, np.uint8), "y_zp"),
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
    return model.SerializeToString()


def ort_session(model: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


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
    session = ort_session(qlinear_conv_model(wts, bias, y_scale), args.threads)
    feed = {"x": x}

    # the same layer as a user's ONNX file: nonzero zero points, imported, onnx-qlinear profile
    from simulator.onnx_import import import_onnx
    from simulator.profiles import load_profile
    user_model = qlinear_conv_model(wts, bias, y_scale, USER_X_ZP, USER_Y_ZP)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qlinear_conv.onnx"
        path.write_bytes(user_model)
        user_program = import_onnx(path)
    user_session = ort_session(user_model, args.threads)
    onnx_qlinear = load_profile("onnx-qlinear").arithmetic
    user_feed = {user_program.inputs[0]: x}

    cases = [(f"acc32 sat final, multiplier+shift, {r.value}", program, acc32_sat_final(r),
              feed, session) for r in (RoundingMode.FLOOR, RoundingMode.HALF_UP,
                                       RoundingMode.HALF_EVEN, RoundingMode.HALF_AWAY,
                                       RoundingMode.TFLITE)]
    cases += [("ORT arithmetic (acc32 wrap, float32 scale)", program, ORT_ARITHMETIC, feed,
               session),
              (f"ONNX QLinearConv imported, zp {USER_X_ZP}/{USER_Y_ZP}, onnx-qlinear",
               user_program, onnx_qlinear, user_feed, user_session)]
    prepared = [prepare(prog, arith) for _, prog, arith, _, _ in cases]

    def sim(i):
        return execute(prepared[i], cases[i][2], cases[i][3], trace=False).outputs

    # warm-up: compiles (or loads from the numba cache) every kernel used below
    for i in range(len(cases)):
        sim(i)
    per_mac = prepare(program, ACC16_SAT_PER_MAC)
    execute(per_mac, ACC16_SAT_PER_MAC, feed, trace=False)

    # bit-exactness against onnxruntime, under its arithmetic, through the executor
    mismatches = {}
    for i in (len(cases) - 2, len(cases) - 1):
        (y_sim,) = sim(i).values()
        y_ort = cases[i][4].run(None, cases[i][3])[0]
        mismatches[i] = int((y_sim != y_ort.astype(np.int64)).sum())

    def timed(fn, times):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)

    # Alternating blocks, so that every side samples the same stretch of a shared machine; a
    # pause after each ORT block, because ORT's idle workers spin for a while after a run and
    # would take a core from whatever runs next.
    t_ort = {id(session): [], id(user_session): []}
    t_sim = [[] for _ in cases]
    block = 5
    while len(t_sim[0]) < args.repeats:
        for sess, fd in ((session, feed), (user_session, user_feed)):
            for _ in range(block):
                timed(lambda: sess.run(None, fd), t_ort[id(sess)])
            time.sleep(0.2)
        for i in range(len(cases)):
            for _ in range(block):
                timed(lambda: sim(i), t_sim[i])
    t_mac16 = []
    for _ in range(max(3, args.repeats // 4)):
        timed(lambda: execute(per_mac, ACC16_SAT_PER_MAC, feed, trace=False), t_mac16)
    x64, w64, b64 = x.astype(np.int64), wts.astype(np.int64), bias.astype(np.int64)
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

    g_mac16 = median_gmacs(t_mac16)
    rows = []
    for i, (name, _, _, _, sess) in enumerate(cases):
        g_sim, g_ort = median_gmacs(t_sim[i]), median_gmacs(t_ort[id(sess)])
        ratio = g_sim / g_ort
        rows.append((name, f"{g_sim:8.2f} GMAC/s", f"{g_ort:8.2f} GMAC/s", f"{ratio:.3f}x ORT",
                     f">= {TARGET_RATIO}x ORT", ratio >= TARGET_RATIO))
    rows += [
        (f"acc16 sat per MAC (engine {plan16.path})", f"{g_mac16:8.2f} GMAC/s", "", "",
         f">= {TARGET_PER_MAC_GMACS} GMAC/s", g_mac16 >= TARGET_PER_MAC_GMACS),
        ("reference (8 ch, 14x14 slice, acc16 per MAC)", f"{ref_macs / t_ref / 1e9:8.4f} GMAC/s",
         "", "", "agrees with kernels", ref_agrees),
        *((f"bit-exact vs ORT: {cases[i][0].split(' (')[0].split(',')[0]}",
           f"{m} of {N * C_OUT * H * W} differ", "", "", "0 differ", m == 0)
          for i, m in mismatches.items()),
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
          f"{tasks.thread_count()}, 8-bit engine {plan.path}")

    def ms(times):
        return f"{np.median(times) * 1e3:.3f} ms (best {min(times) * 1e3:.3f})"

    print(f"ORT {ms(t_ort[id(session)])}, imported layer {ms(t_ort[id(user_session)])}; "
          + "; ".join(f"{c[0].split(',')[-1].strip()} {ms(t)}" for c, t in zip(cases, t_sim))
          + f"; per-MAC {ms(t_mac16)}")
    return report(("case", "simulator", "onnxruntime", "ratio", "target", "status"),
                  (60, 22, 17, 12, 22, 6), rows, args.check)

if __name__ == "__main__":
    sys.exit(main())
