"""Fashion-MNIST Arch-Net results: convert the committed teacher at 8w8a, 4w4a and 2w4a, verify
each converted network on several chip profiles, and write ``reports/fashion_mnist/``.

Not a test (it runs for tens of minutes on 2 cores). Every number in the report comes from the
``convert.json`` and ``verify_<chip>.json`` files this script has the commands write; the
report names each command exactly as it ran.

    python benchmarks/fashion_mnist_results.py                 # all three widths
    python benchmarks/fashion_mnist_results.py --bits 4w4a     # one width (others kept)
    python benchmarks/fashion_mnist_results.py --report-only   # rewrite the report from the JSON
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "reports/teachers/fashion_mnist_resnet.pt"
OUT = ROOT / "reports" / "fashion_mnist"
CONVERT_CHIP = "k210-kpu"        # the most constrained profile: its student runs on all the others
# the hand-written ResNet lowering these results were made with (the ResNets' default until
# 2026-12-07, so the commands below, as run, do not name it); reports/zoo/ has the chip-driven
# converter's runs of the same teacher
RECIPE = "resnet"
VERIFY_CHIPS = ("k210-kpu", "ethos-u55-128", "rk3588-npu-core", "edgetpu")
# (bits, epochs per period, allowed loss in points against the teacher: the targets)
RECIPES = {"8w8a": (1.0, 0.5), "4w4a": (2.0, 1.0), "2w4a": (3.0, 2.5)}


def run(cmd: list[str], log) -> float:
    """Run ``cmd`` from the repository root; logged once it succeeded (the log names the
    commands whose outputs are in the tree)."""
    line = " ".join(shlex.quote(c) for c in cmd)
    print(f"$ {line}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    log.write(f"$ {line}\n")
    log.flush()
    return time.perf_counter() - t0


def convert_and_verify(bits: str, threads: int, progress: bool, verify_only: bool = False) -> None:
    epochs, _ = RECIPES[bits]
    run_dir = OUT / bits
    bar = ["--progress"] if progress else ["--no-progress"]
    with open(OUT / "commands.log", "a") as log:
        if not verify_only:
            wall = run(["archnet", "convert", TEACHER, "--chip", CONVERT_CHIP, "--bits", bits,
                        "--recipe", RECIPE,
                        "--out", str(run_dir.relative_to(ROOT)), "--epochs-per-period", str(epochs),
                        "--threads", str(threads), *bar], log)
            (run_dir / "convert_wall.json").write_text(json.dumps({"wall_seconds": round(wall, 1)}) + "\n")
        for chip in VERIFY_CHIPS:
            out = run_dir / f"verify_{chip}.json"
            run(["archnet", "verify", str((run_dir / "model.program").relative_to(ROOT)),
                 "--chip", chip, "--out", str(out.relative_to(ROOT)), *bar], log)


def run_reports() -> list[str]:
    """``archnet report`` of every converted width, each with the others in its Pareto figure;
    returns the widths whose report was refused (its message printed; the others written)."""
    done = [b for b in RECIPES if (OUT / b / "convert.json").is_file()]
    refused = []
    with open(OUT / "commands.log", "a") as log:
        for bits in done:
            others = [a for b in done if b != bits for a in ("--with", f"reports/fashion_mnist/{b}")]
            try:
                run(["archnet", "report", f"reports/fashion_mnist/{bits}", *others], log)
            except subprocess.CalledProcessError:
                refused.append(bits)
    return refused


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_report() -> Path:
    rows, runs = [], []
    for bits, (epochs, allowed) in RECIPES.items():
        run_dir = OUT / bits
        conv = _load(run_dir / "convert.json")
        if conv is None:
            continue
        wall = (_load(run_dir / "convert_wall.json") or {}).get("wall_seconds")
        runs.append((bits, epochs, conv, wall))
        for chip in VERIFY_CHIPS:
            v = _load(run_dir / f"verify_{chip}.json")
            if v is None:
                continue
            teacher, student, sim = (v["teacher_accuracy"], v["student_accuracy"],
                                     v["simulator_accuracy"])
            loss = 100 * (teacher - sim)
            rows.append(
                f"| {bits} | {chip} | {100 * teacher:.2f} | {100 * student:.2f} | "
                f"{100 * sim:.2f} | {loss:+.2f} | {allowed:.1f} | "
                f"{'yes' if loss <= allowed else '**no**'} | "
                f"{v['elements_matched']:,} / {v['elements_total']:,} | {v['latency_ms']:.4f} | "
                f"{v['fallback_count']} |")
    lines = [
        "# Fashion-MNIST: Arch-Net on the simulator",
        "",
        f"Teacher: `{TEACHER}` (resnet8, width 32, 7x7 stem, 3x3/2 max-pool, 1x1 shortcuts, "
        "residual adds, global average pooling; see `reports/teachers/README.md`). Each width is "
        f"converted for `{CONVERT_CHIP}` (the most constrained profile, so the student runs on "
        f"every other profile without fallback) with the hand-written ResNet lowering (`--recipe "
        f"{RECIPE}`, the ResNets' default when these ran; `reports/zoo/` has the chip-driven "
        "converter's runs of this teacher, per chip) by label-free blockwise distillation on the 60,000 "
        "training images with the simulator in the loop, then verified on the 10,000 test images: "
        "accuracy is measured on the **simulator's integer logits** under each chip's arithmetic, "
        "and archnet's integer emulation is compared with the simulator element by element "
        "(every block output).",
        "",
        "| bits | chip | teacher % | fake-quant % | simulator % | loss (points) | allowed | met | "
        "elements equal (emulation = simulator) | est. latency ms | fallbacks |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        *rows,
        "",
        "## Conversion time and the simulator's share",
        "",
        "| bits | epochs per period | distillation s | simulator s (in the loop) | share | "
        "whole command s | est. latency on " + CONVERT_CHIP + " ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for bits, epochs, conv, wall in runs:
        lines.append(f"| {bits} | {epochs:g} | {conv['distill_seconds']:.0f} | "
                     f"{conv['simulator_seconds']:.0f} | {100 * conv['simulator_share']:.1f}% | "
                     f"{wall if wall is not None else conv['wall_seconds']:.0f} | "
                     f"{conv['estimated_latency_ms']:.4f} |")
    lines += ["", "## Commands (exactly as run, from the repository root)", "", "```"]
    log = OUT / "commands.log"
    if log.is_file():
        lines += list(dict.fromkeys(ln[2:] for ln in log.read_text().splitlines()
                                    if ln.startswith("$ ")))
    lines += ["```", "",
              "Each width's full report (latency per op per chip, the accuracy/latency Pareto "
              "picture across widths and chips, per-layer error between fake-quant and the "
              "simulator's integers, the teacher's graph against the Arch-Net graph, the "
              "distillation history) is in `<bits>/report/report.md`.", "",
              "Regenerate: `python benchmarks/fashion_mnist_results.py` (convert + verify, then "
              "this report); `--report-only` rebuilds this file from the JSON. Per-period losses, "
              "timings and the bits are in each `<bits>/convert.json`; per-block agreement and "
              "timings in `<bits>/verify_<chip>.json`. The distillation checkpoints are not "
              "committed (`.gitignore`).", ""]
    path = OUT / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    print(f"wrote {path}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", action="append", choices=list(RECIPES),
                    help="width(s) to run (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--verify-only", action="store_true",
                    help="verify (and report) run folders already converted")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for bits in args.bits or list(RECIPES):
            convert_and_verify(bits, args.threads, args.progress, args.verify_only)
    refused = run_reports()
    write_report()
    if refused:
        print(f"fashion_mnist_results: archnet report refused reports/fashion_mnist/"
              f"{{{','.join(refused)}}} (its message is above); the other reports and "
              f"{OUT.relative_to(ROOT)}/README.md were written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
