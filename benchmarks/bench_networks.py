"""Whole int8 networks through the simulator beside onnxruntime: images per second.

ResNet-18 and MobileNetV2 at 224x224, built in code (``archnet.teachers.imagenet``), exported
to ONNX, written as fully-int8 TFLite files with per-channel weights (``tflite_networks``:
random weights of trained magnitudes, the layout TFLite's converter writes), imported
(``simulator.tflite_import``) and run by ``simulator.execute`` on a Program prepared once under
the ``tflite-reference`` profile (TFLite's integer arithmetic). The peer runs the same Program
exported by the project as ONNX QDQ (``simulator.onnx_export``, ``form="qdq"``), which
onnxruntime turns into its int8 kernels (QLinearConv and friends) with all cores. Both are
timed in alternating blocks of the same loop (a shared machine: medians, ratios). The QDQ
graph computes between its quantizers in float32, so its integers may differ from TFLite's by
one step where a float32 sum lands on the other side of a .5: the share of equal output
integers is printed for information; the simulator's own bit-exactness is proven against its
reference and the peers by the tests.

    python benchmarks/bench_networks.py [--repeats 10] [--networks resnet18 mobilenet_v2] [--check]

``--check`` exits 1 if the simulator is more than 3x onnxruntime's time on a network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_RATIO = 3.0
SIZE = 224


def int8_program(name: str, folder: Path):
    """The network as an executable int8 Program (via a TFLite file, as a user's would be)."""
    from networks import exported_program
    from tflite_networks import to_tflite

    from simulator.tflite_import import import_tflite

    path = folder / f"{name}.tflite"
    path.write_bytes(to_tflite(exported_program(name, SIZE)))
    return import_tflite(path)


def ort_session(program, folder: Path, threads: int):
    import onnxruntime as ort

    from simulator.onnx_export import export_onnx

    path = folder / f"{program.name}_qdq.onnx"
    export_onnx(program, path, form="qdq")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--networks", nargs="+", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)

    from benchmarks.checks import report
    from simulator.execute import execute, prepare
    from simulator.numerics import tasks
    from simulator.profiles import load_profile

    profile = load_profile("tflite-reference")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.networks:
            print(f"{name}: building the int8 Program and its ONNX export ...", flush=True)
            program = int8_program(name, Path(tmp))
            session = ort_session(program, Path(tmp), args.threads)
            info = program.tensors[program.inputs[0]]
            x = np.random.default_rng(0).integers(info.dtype.qmin, info.dtype.qmax + 1,
                                                  info.shape).astype(np.int8)
            ort_feed = {session.get_inputs()[0].name: x}
            ready = prepare(program, profile)

            def sim():
                return execute(ready, profile, {program.inputs[0]: x}, trace=False).outputs

            def peer():
                return session.run(None, ort_feed)

            y_sim, y_ort = next(iter(sim().values())), peer()[0]   # warm-up (and compile)
            same = float(np.mean(y_sim == y_ort.astype(np.int64)))
            t_sim, t_ort = [], []
            while len(t_sim) < args.repeats:
                for fn, times in ((peer, t_ort), (sim, t_sim)):
                    for _ in range(3):
                        t = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - t)
                    time.sleep(0.2)   # onnxruntime's idle workers spin for a while after a run
            ms_sim, ms_ort = np.median(t_sim) * 1e3, np.median(t_ort) * 1e3
            ratio = ms_sim / ms_ort
            rows.append((name, len(program.nodes), ms_sim, ms_ort, ratio, same))
            print(f"  simulator {ms_sim:.2f} ms (best {min(t_sim) * 1e3:.2f}), onnxruntime "
                  f"{ms_ort:.2f} ms (best {min(t_ort) * 1e3:.2f}), {len(t_sim)} runs each",
                  flush=True)

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"machine: {os.cpu_count()} cores, load average {load}; simulator threads "
          f"{tasks.thread_count()}, onnxruntime intra_op_num_threads {args.threads}; "
          f"{SIZE}x{SIZE}, batch 1, medians")
    table = [(name, nodes, f"{1e3 / ms_sim:.1f}", f"{1e3 / ms_ort:.1f}", f"{ratio:.2f}x",
              f"<= {TARGET_RATIO:.0f}x", f"{same:.1%}", ratio <= TARGET_RATIO)
             for name, nodes, ms_sim, ms_ort, ratio, same in rows]
    return report(("network", "nodes", "simulator img/s", "onnxruntime img/s", "time ratio",
                   "target", "equal outputs", "status"), (14, 6, 16, 18, 11, 10, 14, 6), table,
                  args.check)

if __name__ == "__main__":
    sys.exit(main())
