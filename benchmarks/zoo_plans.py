"""What the chip-driven converter plans for each zoo teacher, before any training: estimated
latency of the teacher (with its host fallbacks) and of the planned student, native first
against the paper's op set, on the chips of the zoo's results (the ViT on those of issue 17).

    python benchmarks/zoo_plans.py                   # writes reports/zoo_plans.md
    python benchmarks/zoo_plans.py --out FILE.md

Every number is ``archnet plan TEACHER --chip CHIP --bits BITS [--recipe paper]``; nothing here
depends on the teachers' weights, only on their graphs and the chip profiles.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = {"resnet8": "reports/teachers/fashion_mnist_resnet.pt",
            "mobilenetv2": "reports/teachers/fashion_mnist_mobilenetv2.pt",
            "vgg": "reports/teachers/fashion_mnist_vgg.pt",
            "vit": "reports/teachers/fashion_mnist_vit.pt"}
CNN_RUNS = [("k210-kpu", "4w4a"), ("ethos-u55-128", "4w4a"), ("rk3588-npu-core", "4w4a"),
            ("ethos-u55-128", "8w8a")]
# the K210 runs no attention (no matmul, softmax or transpose): the ViT's row there says so
RUNS = {"vit": [("k210-kpu", "4w4a"), ("ethos-u55-128", "4w4a"), ("ethos-u85-256", "4w4a"),
                ("rk3588-npu-core", "4w4a"), ("ethos-u55-128", "8w8a")]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "reports" / "zoo_plans.md"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from archnet.capture import capture
    from archnet.errors import ConversionError
    from archnet.lowering.resnet import parse_bits
    from archnet.rules import plan_conversion
    from archnet.teachers import load_teacher
    from simulator.fileio import atomic_write_bytes
    from simulator.profiles import load_profile

    lines = ["# Planned students of the zoo teachers (no training)", "",
             "`python benchmarks/zoo_plans.py`; each row is `archnet plan TEACHER --chip CHIP "
             "--bits BITS` (native) and the same with `--recipe paper`. Latency is the cost "
             "model's estimate per image (batch 1); the teacher's counts its host fallbacks "
             "(in brackets).", "",
             "| teacher | chip | bits | teacher ms (host ops) | native ms | paper ms | native replaces |",
             "|---|---|---|---:|---:|---:|---|"]
    for name, path in TEACHERS.items():
        model, meta = load_teacher(ROOT / path)
        graph = capture(model, (torch.zeros(1, *meta["input_shape"]),))
        for chip, bits in RUNS.get(name, CNN_RUNS):
            profile = load_profile(chip)
            try:
                native = plan_conversion(graph, profile, parse_bits(bits), "native")
            except ConversionError as e:
                unplaced = str(e).split(" teacher node(s)")[0]
                lines.append(f"| {name} | {chip} | {bits} | | cannot convert | | {unplaced} "
                             f"nodes no rule places (`archnet plan` names them) |")
                print(lines[-1], flush=True)
                continue
            try:
                paper_ms = f"{plan_conversion(graph, profile, parse_bits(bits), 'paper').student.total_latency_ms:.3f}"
            except ConversionError:
                paper_ms = "cannot convert"
            replaced = sorted({d.rule for d in native.replaced()})
            t = native.teacher
            lines.append(f"| {name} | {chip} | {bits} | {t.total_latency_ms:.3f} "
                         f"({len(t.fallbacks)}) | {native.student.total_latency_ms:.3f} | "
                         f"{paper_ms} | "
                         f"{', '.join(replaced) if replaced else 'nothing'} |")
            print(lines[-1], flush=True)
    atomic_write_bytes(args.out, ("\n".join(lines) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
