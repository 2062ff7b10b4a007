"""``archnet demo``: the whole loop on an embedded default, in a few minutes on 2 CPU cores.

Nothing to download and nothing to install beyond archnet: scikit-learn's bundled digits
(1,437 training and 360 test images at 16x16), a ResNet teacher the demo trains itself (7x7 stem,
1x1 shortcuts, residual adds, global average pooling: what the chips lack), then

1. ``convert`` at 4w4a for the Kendryte K210 profile, the chip-driven converter (native first:
   the K210's own convs stay, its missing 7x7 conv, residual add and global pooling are
   replaced), label-free blockwise distillation with the simulator in the loop;
2. ``verify`` on four chip profiles: every element of archnet's integer emulation against the
   simulator, accuracy on the simulator's integer logits under each chip's arithmetic;
3. ``report``: Markdown, CSV and PNG per chip in ``OUT/run/report/``;

and a summary table at the end saying where everything is.
"""

from __future__ import annotations

import time
from pathlib import Path

from simulator.jsontext import json_text

DEMO_CHIP = "k210-kpu"
VERIFY_CHIPS = ("k210-kpu", "ethos-u55-128", "rk3588-npu-core", "edgetpu")


def run_demo(out: str | Path = "archnet-demo", *, bits: str = "4w4a", threads: int | None = 1,
             progress: bool | None = None, seed: int = 0, log=print) -> dict:
    """Train, convert, verify, report; returns the summary (also in ``OUT/demo.json``)."""
    import torch

    from archnet.jobs.convert import ConvertOptions, convert
    from archnet.distill.loop import DistillConfig
    from archnet.lowering import parse_bits
    from archnet.runs import check_demo_output, is_run_folder
    from archnet.teachers.train import TrainConfig, train_teacher
    from archnet.jobs.verify import verify
    from simulator.fileio import atomic_write_bytes, prepare_folder

    t0 = time.perf_counter()
    out = Path(out)
    parse_bits(bits)
    check_demo_output(out)
    prepare_folder(out)
    if threads:
        torch.set_num_threads(threads)
    teacher = out / "teacher.pt"
    run_dir = out / "run"
    stages = {}

    log(f"[1/4] teacher: training a ResNet-8 on digits (the only step that reads labels) -> {teacher}")
    t = time.perf_counter()
    meta = train_teacher(TrainConfig(dataset="digits", out=str(teacher), seed=seed, threads=threads,
                                     progress=progress), log=lambda _m: None)
    stages["teacher"] = time.perf_counter() - t
    log(f"      test accuracy {meta['test_accuracy']:.4f} in {stages['teacher']:.0f} s")

    log(f"[2/4] convert: {bits} for {DEMO_CHIP}, label-free distillation, simulator in the loop")
    t = time.perf_counter()
    if is_run_folder(run_dir):   # a demo folder from an earlier run: start clean
        import shutil
        shutil.rmtree(run_dir)
    summary = convert(
        ConvertOptions(teacher=str(teacher), chip=DEMO_CHIP, out=str(run_dir), bits=bits,
                       recipe="native", threads=threads, command=f"archnet demo --out {out}",
                       report=False),
        DistillConfig(epochs_per_period=2.0, batch_size=32, lr=1e-3, seed=seed, progress=progress),
        log=lambda line: log("      " + line) if line.startswith(("period", "wrote")) else None)
    stages["convert"] = time.perf_counter() - t

    log(f"[3/4] verify: the 360 test images on {len(VERIFY_CHIPS)} chip profiles")
    t = time.perf_counter()
    rows = []
    for chip in VERIFY_CHIPS:
        rep = verify(run_dir / "model.program", chip, progress=progress,
                     command=f"archnet verify {run_dir / 'model.program'} --chip {chip}")
        doc = rep.to_dict()
        atomic_write_bytes(run_dir / f"verify_{chip}.json", (json_text(doc) + "\n").encode())
        rows.append(doc)
        log(f"      {chip:<16} {'bit-exact' if doc['bit_exact'] else 'MISMATCH'}: "
            f"{doc['elements_matched']:,}/{doc['elements_total']:,} elements, simulator accuracy "
            f"{doc['simulator_accuracy']:.4f}")
    stages["verify"] = time.perf_counter() - t

    log("[4/4] report")
    t = time.perf_counter()
    from archnet.report import write_report
    report = write_report(run_dir)
    stages["report"] = time.perf_counter() - t

    total = time.perf_counter() - t0
    result = {"out": str(out), "teacher": str(teacher), "teacher_test_accuracy": meta["test_accuracy"],
              "run": str(run_dir), "report": str(report), "bits": bits, "converted_for": DEMO_CHIP,
              # the teacher with its host fallbacks, as the conversion plan costed it
              "teacher_latency_ms": summary["plan"]["teacher_latency_ms"],
              "teacher_fallbacks": summary["plan"]["teacher_fallbacks"],
              "archnet_latency_ms": summary["estimated_latency_ms"],
              "distill_seconds": summary["distill_seconds"],
              "simulator_share": summary["simulator_share"],
              "chips": [{k: r[k] for k in ("chip", "bit_exact", "elements_matched", "elements_total",
                                           "teacher_accuracy", "student_accuracy",
                                           "simulator_accuracy", "latency_ms", "fallback_count")}
                        for r in rows],
              "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
              "seconds": round(total, 1)}
    atomic_write_bytes(out / "demo.json", (json_text(result) + "\n").encode())
    log("")
    log(format_summary(result))
    return result


def format_summary(result: dict) -> str:
    chip, t_ms, a_ms = result["converted_for"], result["teacher_latency_ms"], \
        result["archnet_latency_ms"]
    lines = [f"Arch-Net demo: digits ResNet-8 -> {result['bits']} Arch-Net, converted for {chip}: "
             f"its own ops kept, what it lacks replaced",
             f"on {chip} the Arch-Net runs in {a_ms:.3f} ms against the teacher's {t_ms:.3f} ms "
             f"({result['teacher_fallbacks']} ops on the host): {t_ms / a_ms:.2f}x faster",
             "",
             f"{'chip':<16} {'bit-exact':<10} {'elements':>13} {'teacher':>8} {'fake-quant':>10} "
             f"{'simulator':>9} {'latency ms':>10} {'fallbacks':>9}"]
    for c in result["chips"]:
        lines.append(f"{c['chip']:<16} {'yes' if c['bit_exact'] else 'NO':<10} "
                     f"{c['elements_total']:>13,} {100 * c['teacher_accuracy']:>7.2f}% "
                     f"{100 * c['student_accuracy']:>9.2f}% {100 * c['simulator_accuracy']:>8.2f}% "
                     f"{c['latency_ms']:>10.4f} {c['fallback_count']:>9}")
    lines += ["",
              f"distillation {result['distill_seconds']:.0f} s (simulator {100 * result['simulator_share']:.0f}% "
              f"of it); whole demo {result['seconds']:.0f} s",
              f"report:  {result['report']}",
              f"run:     {result['run']} (student.pt, model.program, convert.json, verify_*.json)",
              f"summary: {Path(result['out']) / 'demo.json'}"]
    return "\n".join(lines)
