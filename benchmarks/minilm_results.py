"""all-MiniLM-L6-v2 Arch-Net results: convert the real pretrained MiniLM at 8w8a and 4w4a for a
chip profile on Debian's fortunes with the chip-driven converter (``--recipe native``: the shared
pipeline images use too), verify each on the held-out sentences with the simulator, and write
``reports/minilm/`` (the quality table and the teacher-vs-student latency table on every
profile).

Not a test (about an hour per width on both cores of this 2-core machine). Every number in the report comes from the
``convert.json`` and ``verify_<chip>.json`` files the commands below write; ``commands.log``
names each command exactly as it ran. The run folders' ``student.pt`` and ``model.program``
(about 90 and 25 MB) are not committed; rerun the convert commands to get them.

    python benchmarks/minilm_results.py                  # both widths, verify, report
    python benchmarks/minilm_results.py --bits 4w4a      # one width
    python benchmarks/minilm_results.py --verify-only    # verify the existing runs, then report
    python benchmarks/minilm_results.py --bits 4w4a --resume   # after the last checkpoint
    python benchmarks/minilm_results.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "minilm"
CHIP = "ethos-u55-128"          # has matmul, softmax, the LUT unit and add: no host fallback
# bits -> steps per period, steps of the last (sentence-embedding) period, the periods whose
# forward runs on the chip's integers (--chip-forward)
RECIPES = {"8w8a": (500, 1000, "none"), "4w4a": (500, 500, "final")}
SENTENCES = 4096                # distillation sentences (of ~13.6k non-held-out fortunes)
HELDOUT = 512                   # held-out sentences verified on the simulator


def run(cmd: list[str], log) -> float:
    line = " ".join(shlex.quote(c) for c in cmd)
    print(f"$ {line}", flush=True)
    log.write(f"$ {line}\n")
    log.flush()
    t0 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)
    return time.perf_counter() - t0


def archnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "archnet", *args]


def convert_and_verify(bits: str, threads: int, verify_only: bool, resume: bool) -> None:
    steps, final, chip_forward = RECIPES[bits]
    run_dir = OUT / bits
    rel = str(run_dir.relative_to(ROOT))
    with open(OUT / "commands.log", "a") as log:
        if not verify_only:
            wall = run(archnet("convert", "minilm", "--recipe", "native", "--chip", CHIP,
                               "--bits", bits, "--out", rel, "--max-sentences", str(SENTENCES),
                               "--steps-per-period", str(steps), "--final-steps", str(final),
                               "--chip-forward", chip_forward, "--threads", str(threads),
                               "--no-progress", *(["--resume"] if resume else [])), log)
            (run_dir / "convert_wall.json").write_text(json.dumps({"wall_seconds": round(wall, 1)}) + "\n")
        run(archnet("verify", f"{rel}/model.program", "--chip", CHIP, "--out",
                    f"{rel}/verify_{CHIP}.json", "--max-sentences", str(HELDOUT)), log)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", choices=sorted(RECIPES), action="append")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--verify-only", action="store_true")
    ap.add_argument("--resume", action="store_true",
                    help="continue each conversion after its last complete period (a checkpoint "
                         "before the last period may take another last-period recipe)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for bits in args.bits or list(RECIPES):
            convert_and_verify(bits, args.threads, args.verify_only, args.resume)
    done = [str((OUT / b).relative_to(ROOT)) for b in RECIPES if (OUT / b / "convert.json").is_file()]
    with open(OUT / "commands.log", "a") as log:
        run(archnet("report", *done, "--out", str((OUT / "report").relative_to(ROOT))), log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
