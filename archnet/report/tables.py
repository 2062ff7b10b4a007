"""The report's tables as pandas DataFrames (each written as one CSV).

Latency columns of ``op_frame`` are in milliseconds and add up per op:
``compute_ms + memory_exposed_ms + overhead_ms == latency_ms``. On the NPU an op's cycles are
``overhead + max(compute, memory)`` (compute and memory overlap), so ``memory_exposed_ms`` is the
memory time *not* hidden behind compute, ``max(0, memory - compute)``; on the host they add
(host compute, link transfer, hand-off) and ``memory_exposed_ms`` is the transfer. The raw terms
(``compute_cycles``, ``memory_cycles``, ``overhead_cycles``, ``cycles``) are the estimate's own.
"""

from __future__ import annotations

import pandas as pd

OP_COLUMNS = ["op", "type", "detail", "placement", "bound", "weight_bits", "activation_bits",
              "macs", "activation_bytes", "weight_bytes", "compute_cycles", "memory_cycles",
              "overhead_cycles", "cycles", "latency_ms", "compute_ms", "memory_exposed_ms",
              "overhead_ms", "fused_into", "fallback_reason"]


def op_segments(op) -> tuple[float, float, float]:
    """(compute, exposed memory, overhead) in ms, adding up to the op's latency."""
    c = op.cost
    ms = 1e3 / op.clock_hz
    if op.on_host:
        return c.compute_cycles * ms, c.memory_cycles * ms, c.overhead_cycles * ms
    if c.cycles == 0:
        return 0.0, 0.0, 0.0
    compute = c.compute_cycles
    exposed = max(0.0, c.memory_cycles - c.compute_cycles)
    overhead = c.cycles - compute - exposed  # == overhead_cycles; exact so the parts add up
    return compute * ms, exposed * ms, overhead * ms


def op_frame(est) -> pd.DataFrame:
    """One row per op of an ``Estimate``, in schedule order."""
    rows = []
    for op in est.ops:
        d = op.to_dict()
        compute, exposed, overhead = op_segments(op)
        rows.append({**{k: d.get(k) for k in OP_COLUMNS if k in d}, "op": op.name,
                     "compute_ms": compute, "memory_exposed_ms": exposed, "overhead_ms": overhead})
    df = pd.DataFrame(rows, columns=OP_COLUMNS)
    for col in ("weight_bits", "activation_bits"):
        df[col] = df[col].astype("Int64")
    return df


def mac_modes(est) -> str:
    """The precision modes the estimate costs the MAC ops in, e.g. ``w8a8`` or ``w4a4 w8a8``."""
    modes = sorted({f"w{op.weight_bits}a{op.activation_bits}" for op in est.ops
                    if op.weight_bits is not None and op.cycles > 0})
    return " ".join(modes)


def chip_frame(run, chips, estimates, profiles) -> pd.DataFrame:
    """Per chip: the Program's estimate and, where verified, its accuracy."""
    from archnet.report.measure import host_npu_ms
    rows = []
    for chip in chips:
        est = estimates[chip]
        npu, host = host_npu_ms(est)
        rec = run.verifies.get(chip)
        rows.append({
            "chip": chip, "profile": str(profiles[chip].path), "converted_for": chip == run.chip,
            "latency_ms": est.total_latency_ms, "npu_ms": npu, "host_ms": host,
            "fallbacks": len(est.fallbacks),
            "simulator_accuracy": rec.simulator_accuracy if rec else None,
            "fake_quant_accuracy": rec.student_accuracy if rec else None,
            "teacher_accuracy": rec.teacher_accuracy if rec else None,
            "test_images": rec.images if rec else None,
            "bit_exact": rec.bit_exact if rec else None,
            "verify_file": rec.path.name if rec else None,
        })
    return pd.DataFrame(rows)


def pareto_frame(runs, chips=None) -> pd.DataFrame:
    """Every (run, chip) with accuracy: latency from the verify record (the estimate it was made
    with) and whether no other point is both faster and more accurate."""
    rows = []
    labels = [r.bits_label for r in runs]
    for run in runs:
        label = run.bits_label
        if labels.count(label) > 1:
            label = f"{label} ({run.name})"
        for chip, rec in sorted(run.verifies.items()):
            if chips is not None and chip not in chips:
                continue
            rows.append({"run": str(run.path), "bits": label, "chip": chip,
                         "latency_ms": rec.latency_ms, "simulator_accuracy": rec.simulator_accuracy,
                         "fake_quant_accuracy": rec.student_accuracy,
                         "teacher_accuracy": rec.teacher_accuracy, "test_images": rec.images,
                         "dataset": rec.dataset, "profile": rec.chip_path,
                         "verify_file": str(rec.path), "verify_command": rec.source,
                         "convert_command": run.command})
    df = pd.DataFrame(rows, columns=["run", "bits", "chip", "latency_ms", "simulator_accuracy",
                                     "fake_quant_accuracy", "teacher_accuracy", "test_images",
                                     "dataset", "profile", "verify_file", "verify_command",
                                     "convert_command"])
    df["pareto_optimal"] = _non_dominated(df)
    df["pareto_on_chip"] = False
    for _chip, idx in df.groupby("chip").groups.items():
        df.loc[idx, "pareto_on_chip"] = _non_dominated(df.loc[idx]).values
    return df


def _non_dominated(df: pd.DataFrame) -> pd.Series:
    lat, acc = df["latency_ms"].to_numpy(float), df["simulator_accuracy"].to_numpy(float)
    out = []
    for i in range(len(df)):
        dominated = any((lat[j] <= lat[i] and acc[j] >= acc[i]) and (lat[j] < lat[i] or acc[j] > acc[i])
                        for j in range(len(df)))
        out.append(not dominated)
    return pd.Series(out, index=df.index, dtype=bool)


def layer_frame(errors: dict) -> pd.DataFrame:
    """``errors``: chip -> [LayerError]; one row per (chip, step) in network order."""
    from dataclasses import asdict
    rows = []
    for chip, items in errors.items():
        for k, e in enumerate(items):
            rows.append({"chip": chip, "index": k, **asdict(e)})
    return pd.DataFrame(rows)


def teacher_frame(chips, student_est, teacher_est) -> pd.DataFrame:
    """Per chip, the teacher's graph and the Arch-Net graph: latency, NPU/host split, fallbacks."""
    from archnet.report.measure import host_npu_ms
    rows = []
    for chip in chips:
        for graph, est in (("teacher", teacher_est[chip]), ("arch-net", student_est[chip])):
            npu, host = host_npu_ms(est)
            rows.append({"chip": chip, "graph": graph, "latency_ms": est.total_latency_ms,
                         "npu_ms": npu, "host_ms": host, "ops": sum(op.cycles > 0 for op in est.ops),
                         "mac_modes": mac_modes(est),
                         "fallbacks": len(est.fallbacks),
                         "fallback_ops": "; ".join(f"{op.name}: {op.fallback_reason}"
                                                   for op in est.fallbacks)})
    df = pd.DataFrame(rows)
    t = df[df.graph == "teacher"].set_index("chip")["latency_ms"]
    s = df[df.graph == "arch-net"].set_index("chip")["latency_ms"]
    df["speedup_vs_teacher"] = [t[c] / s[c] if s[c] > 0 else None for c in df.chip]
    return df


PLAN_COLUMNS = ["node", "module", "op", "rule", "kept", "reason", "student_ops", "cycles",
                "other_forms"]


def plan_frame(summary: dict) -> pd.DataFrame | None:
    """One row per teacher node of the conversion plan ``convert.json`` records: the rule that
    fired, whether the chip's own op was kept, why, what the student runs for it, its cycles on
    the conversion chip and the other forms that fit (with their cycles) or why they did not.
    None where no plan is recorded (the hand-written ResNet lowering)."""
    plan = summary.get("plan")
    if not isinstance(plan, dict) or not isinstance(plan.get("decisions"), list):
        return None
    rows = []
    for d in plan["decisions"]:
        if not isinstance(d, dict):
            continue
        others = []
        for c in d.get("candidates") or []:
            if not isinstance(c, dict) or c.get("rule") == d.get("rule"):
                continue
            cyc = c.get("cycles")
            others.append(f"{c.get('rule')} ({c['why_not']})" if c.get("why_not") else
                          f"{c.get('rule')} ({cyc:,.0f} cycles)" if isinstance(cyc, (int, float))
                          else str(c.get("rule")))
        rows.append({"node": d.get("node"), "module": d.get("module"), "op": d.get("op"),
                     "rule": d.get("rule"),
                     "kept": "host" if d.get("host") else "yes" if d.get("native") else "replaced",
                     "reason": d.get("reason"), "student_ops": " ".join(d.get("student_ops") or []),
                     "cycles": d.get("cycles"), "other_forms": "; ".join(others)})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def history_frame(summary: dict) -> pd.DataFrame:
    """One row per distillation period of ``convert.json``."""
    rows = []
    for h in summary.get("history") or []:
        secs = float(h.get("seconds") or 0.0)
        sim = float(h.get("simulator_seconds") or 0.0)
        rows.append({"period": int(h.get("period", len(rows))) + 1,
                     # a last period over the whole network (text: on the sentence embedding)
                     "new_block": "(last period)" if h.get("final") else h.get("new_block"),
                     "blocks": "+".join(h.get("blocks") or []),
                     "steps": h.get("steps"), "loss_first": h.get("loss_first"),
                     "loss_last": h.get("loss_last"), "seconds": secs, "simulator_seconds": sim,
                     "simulator_share": sim / secs if secs > 0 else 0.0,
                     "simulator_in_loop": h.get("simulator_in_loop"),
                     "simulator_images": h.get("simulator_images"),
                     "chip_forward": bool(h.get("chip_forward", False)),
                     **phase_columns(h)})
    phases = list(dict.fromkeys(k for r in rows for k in r if k.endswith("_phase_seconds")))
    df = pd.DataFrame(rows, columns=["period", "new_block", "blocks", "steps", "loss_first",
                                     "loss_last", "seconds", "simulator_seconds",
                                     "simulator_share", "simulator_in_loop", "simulator_images",
                                     "chip_forward", *phases])
    # the column of a run that trained some period on the chip's integers (--chip-forward)
    return df if df["chip_forward"].any() else df.drop(columns="chip_forward")


def phase_columns(period: dict) -> dict:
    """Where a period's time went, as the distillation loop timed it (``phase_seconds`` of
    convert.json; none in older runs), the simulator's part left to its own column."""
    return {f"{k}_phase_seconds": v for k, v in (period.get("phase_seconds") or {}).items()
            if k != "simulator"}


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return "–"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v).replace("|", "\\|").replace("\n", " ")
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


__all__ = ["OP_COLUMNS", "chip_frame", "history_frame", "layer_frame", "mac_modes",
           "markdown_table", "op_frame", "op_segments", "pareto_frame", "teacher_frame"]
