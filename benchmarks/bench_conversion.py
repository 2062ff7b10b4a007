"""Conversion speed: where the time of the Fashion-MNIST ResNet-8 4w4a conversion goes, beside
the committed run it replaces, and issue 18's targets (both cores, at most 8 minutes, the
simulator at most 10 % of distillation, accuracy on the simulator within 0.2 points).

Not a test: it reads the run ``python benchmarks/fashion_mnist_results.py --bits 4w4a`` wrote
(``reports/fashion_mnist/4w4a``) and the same files at a baseline commit (``git show``), and
with ``--profile-period K`` profiles period K's operators (torch.profiler) on a short re-run
of the same command (a tenth of the images, one epoch per period), in a temporary folder. It
writes ``reports/fashion_mnist/conversion_profile.md``.

    python benchmarks/bench_conversion.py --baseline 2901df1 --profile-period 3
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.checks import report  # noqa: E402

RUN = "reports/fashion_mnist/4w4a"
OUT = ROOT / "reports" / "fashion_mnist" / "conversion_profile.md"
CHIP = "k210-kpu"
TARGET_S, TARGET_SHARE, TARGET_POINTS = 480.0, 0.10, 0.2


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _at(rev: str, rel: str) -> dict:
    text = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    return json.loads(text)


def _run_files(rev: str | None) -> dict:
    """convert.json, the command's wall time and the convert chip's verify of RUN (at ``rev``,
    or as they are in the working tree)."""
    get = (lambda rel: _json(ROOT / rel)) if rev is None else (lambda rel: _at(rev, rel))
    return {"convert": get(f"{RUN}/convert.json"),
            "wall": get(f"{RUN}/convert_wall.json")["wall_seconds"],
            "verify": get(f"{RUN}/verify_{CHIP}.json")}


def profile_period(period: int, threads: int, images: int) -> tuple[list[tuple], dict, str]:
    """A short re-run of the 4w4a command with torch.profiler around period ``period`` (1-based):
    (its top operators, its history entry, the command)."""
    from torch.profiler import ProfilerActivity, profile

    from archnet.cli import main as archnet_main
    from archnet.distill import loop
    real = loop._run_period
    found: dict = {}

    signature = inspect.signature(real)

    def wrapped(*args, **kwargs):
        if signature.bind(*args, **kwargs).arguments["period"] + 1 != period:
            return real(*args, **kwargs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            entry = real(*args, **kwargs)
        found["ops"] = prof.key_averages()
        found["entry"] = entry
        return entry
    loop._run_period = wrapped
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["convert", "reports/teachers/fashion_mnist_resnet.pt", "--chip", CHIP,
                "--bits", "4w4a", "--recipe", "resnet", "--out", f"{tmp}/run",
                "--max-images", str(images), "--epochs-per-period", "1",
                "--threads", str(threads), "--no-progress"]
        archnet_main(argv)
        command = "archnet " + " ".join("TMP/run" if a == f"{tmp}/run" else a for a in argv)
    loop._run_period = real
    ops = sorted(found["ops"], key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1
    rows = [(e.key, e.count, e.self_cpu_time_total / 1e6, e.self_cpu_time_total / total)
            for e in ops[:15]]
    return rows, found["entry"], command


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="2901df1",
                    help="commit whose committed 4w4a run is the peer (default: the last one "
                         "before the conversion speed work)")
    ap.add_argument("--profile-period", type=int, default=None,
                    help="profile this period's operators on a short re-run (1-based)")
    ap.add_argument("--profile-images", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)
    now, base = _run_files(None), _run_files(args.baseline)
    c, b = now["convert"], base["convert"]
    acc, acc0 = now["verify"]["simulator_accuracy"], base["verify"]["simulator_accuracy"]
    rows = [
        ("wall time of the command", f"{now['wall']:.0f} s ({c['threads']} threads)",
         f"{base['wall']:.0f} s ({b['threads']} threads)", f"<= {TARGET_S:.0f} s",
         now["wall"] <= TARGET_S),
        ("simulator share of distillation", f"{100 * c['simulator_share']:.1f} %",
         f"{100 * b['simulator_share']:.1f} %", f"<= {100 * TARGET_SHARE:.0f} %",
         c["simulator_share"] <= TARGET_SHARE),
        (f"accuracy on the simulator ({CHIP})", f"{100 * acc:.2f} %", f"{100 * acc0:.2f} %",
         f">= {100 * acc0 - TARGET_POINTS:.2f} %", acc >= acc0 - TARGET_POINTS / 100),
    ]
    status = report(("measure", "this run", f"baseline {args.baseline}", "target", "verdict"),
                    (34, 20, 22, 12, 7), rows, args.check)
    lines = [
        "# Where the Fashion-MNIST 4w4a conversion's time goes",
        "",
        f"Written by `python benchmarks/bench_conversion.py --baseline {args.baseline}"
        + (f" --profile-period {args.profile_period}" if args.profile_period else "") + "` "
        f"from `{RUN}` (its command: `{c['command']}`) and the same files at commit "
        f"{args.baseline} (`{b['command']}`).",
        "",
        f"| measure | this run | baseline {args.baseline} | target | met |",
        "|---|---:|---:|---:|---|",
        *(f"| {m} | {x} | {y} | {t} | {'yes' if ok else '**no**'} |" for m, x, y, t, ok in rows),
        "",
        "## Seconds per period and phase (this run)",
        "",
        "Teacher: its features for the period's blocks (kept per input where they fit in "
        "memory); student forward: the window's fake-quant forward and loss; backward: autograd; "
        "optimizer: Adam and the schedule; simulator: the frozen prefix's integers for every "
        "image, and for each mixed batch; other: batches, mixing, bookkeeping.",
        "",
    ]
    # the phases as the loop named them (the run's own record, not a list kept here)
    phases = list(dict.fromkeys(k for h in c["history"] for k in h.get("phase_seconds") or {}))
    lines += ["| period | blocks | steps | " + " | ".join(phases) + " | total |",
              "|---|---|---:|" + "---:|" * (len(phases) + 1)]
    for h in c["history"]:
        ph = h.get("phase_seconds") or {}
        cells = [f"{ph[k]:.1f}" if k in ph else "n/a" for k in phases]
        lines.append(f"| {h['period'] + 1} | {'+'.join(h['blocks'])} | {h['steps']} | "
                     + " | ".join(cells) + f" | {h['seconds']:.1f} |")
    if args.profile_period:
        t0 = time.perf_counter()
        ops, entry, command = profile_period(args.profile_period, args.threads,
                                             args.profile_images)
        lines += [
            "",
            f"## Operators of period {args.profile_period} ({'+'.join(entry['blocks'])}), "
            "torch.profiler",
            "",
            f"A short re-run, `{command}` ({entry['steps']} steps, {entry['seconds']:.1f} s under "
            f"the profiler, {time.perf_counter() - t0:.0f} s for the whole command); self CPU "
            "time of the 15 most expensive operators, summed over the threads.",
            "",
            "| operator | calls | self CPU s | share |",
            "|---|---:|---:|---:|",
            *(f"| `{k}` | {n} | {s:.2f} | {100 * f:.1f} % |" for k, n, s, f in ops),
        ]
    tmp = OUT.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(OUT)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
