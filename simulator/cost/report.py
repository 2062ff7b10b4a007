"""Text table and CSV of an Estimate: one row per op, every number traceable to its terms."""

from __future__ import annotations

import csv
import io

from simulator.cost.breakdown import FORMULA, Estimate

CSV_FIELDS = ["name", "type", "detail", "placement", "bound", "weight_bits", "activation_bits",
              "macs", "utilisation", "activation_bytes", "weight_bytes", "compute_cycles",
              "memory_cycles", "overhead_cycles", "cycles", "latency_ms", "fallback_reason"]


def _k(x: float) -> str:
    return f"{x / 1e3:,.1f}k" if x >= 1e3 else f"{x:,.0f}"


def format_estimate(est: Estimate) -> str:
    """A fixed-width table with the formula in its header and totals at the bottom."""
    lines = [f"chip {est.chip} @ {est.clock_hz / 1e6:g} MHz, program {est.program}",
             f"formula: {FORMULA}",
             f"{'op':28s} {'type':16s} {'detail':26s} {'bits':6s} {'MMACs':>8s} {'util':>5s} "
             f"{'compute':>9s} {'memory':>9s} {'ovhd':>8s} {'cycles':>9s} {'ms':>8s} "
             f"{'bound':8s} fallback"]
    for op in est.ops:
        bits = f"w{op.weight_bits}a{op.activation_bits}" if op.weight_bits else \
            (f"a{op.activation_bits}" if op.activation_bits else "")
        util = f"{op.utilisation:.2f}" if op.utilisation is not None else ""
        c = op.cost
        lines.append(f"{op.name[:28]:28s} {op.type[:16]:16s} {op.detail[:26]:26s} {bits:6s} "
                     f"{c.macs / 1e6:8.2f} {util:>5s} {_k(c.compute_cycles):>9s} "
                     f"{_k(c.memory_cycles):>9s} {_k(c.overhead_cycles):>8s} {_k(c.cycles):>9s} "
                     f"{op.latency_ms:8.3f} {op.bound:8s} {op.fallback_reason or ''}")
    if est.invoke.cycles:
        i = est.invoke
        lines.append(f"{'(invoke)':28s} {'host':16s} {'start, read result':26s} {'':6s} "
                     f"{0:8.2f} {'':>5s} {_k(0):>9s} {_k(0):>9s} {_k(i.overhead_cycles):>8s} "
                     f"{_k(i.cycles):>9s} {i.cycles / est.clock_hz * 1e3:8.3f} host")
    t = est.total
    lines.append(f"{'total':28s} {'':16s} {'':26s} {'':6s} {t.macs / 1e6:8.1f} {'':>5s} "
                 f"{_k(t.compute_cycles):>9s} {_k(t.memory_cycles):>9s} "
                 f"{_k(t.overhead_cycles):>8s} {_k(t.cycles):>9s} {est.total_latency_ms:8.3f}")
    host = [op for op in est.ops if op.on_host]
    lines.append(f"{len(est.ops)} ops, {len(host)} on the host ({len(est.fallbacks)} fallbacks); "
                 f"{t.activation_bytes / 1e6:.2f} MB activations and {t.weight_bytes / 1e6:.2f} MB "
                 f"weights over the external interfaces")
    return "\n".join(lines)


def estimate_csv(est: Estimate) -> str:
    """Per-op CSV (as Vela's per-layer report), columns ``CSV_FIELDS``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for op in est.ops:
        writer.writerow(op.to_dict())
    if est.invoke.cycles:  # the once-per-inference term, so the rows add up to the total
        writer.writerow({"name": "(invoke)", "type": "invoke", "detail": "start, read result",
                         "placement": "host", "bound": "host",
                         "overhead_cycles": est.invoke.overhead_cycles,
                         "cycles": est.invoke.cycles,
                         "latency_ms": est.invoke.cycles / est.clock_hz * 1e3})
    return buf.getvalue()
