"""``archnet compare MODEL --chips a,b,c``: one network's estimated latency and fallbacks on
several chip profiles side by side (text, CSV, JSON, PNG).

MODEL is a ``.program``, an ``.onnx`` (imported for estimation only, so float models work) or a
run folder (its ``model.program``).
"""

from __future__ import annotations

import io
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from archnet.errors import ReportError
from archnet.report.collect import PROGRAM_FILE, convert_command, show_path
from archnet.report.tables import op_segments
from simulator.fileio import atomic_write_bytes


@dataclass
class Comparison:
    model: str        # as given
    kind: str         # "Program", "ONNX (estimate-only import)", "run folder"
    program: object
    profiles: list
    estimates: list
    command: str

    @property
    def chips(self) -> list[str]:
        return [p.name for p in self.profiles]

    @property
    def batch(self) -> int | None:
        if not self.program.inputs:
            return None
        shape = self.program.tensors[self.program.inputs[0]].shape
        return int(shape[0]) if shape else None


def load_model(model) -> tuple[object, str]:
    """(Program, kind) of a ``.program``, ``.onnx`` or run folder."""
    from simulator.errors import SimulatorError
    from simulator.ir.program import load_program
    path = Path(model)
    if path.is_dir():
        prog = path / PROGRAM_FILE
        if not prog.is_file():
            raise ReportError(f"{prog}: missing from the run folder; `{convert_command(path)}` "
                              f"writes it")
        try:
            return load_program(prog), "run folder"
        except SimulatorError as exc:
            raise ReportError(str(exc)) from None
    if not path.is_file():
        raise ReportError(f"{model}: no such model (give a .program, an .onnx or a run folder)")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    try:
        if magic.startswith(b"PK"):
            return load_program(path), "Program"
        from simulator.onnx_import import import_onnx
        return import_onnx(path, estimate_only=True), "ONNX (estimate-only import)"
    except SimulatorError as exc:
        raise ReportError(str(exc)) from None


def compare_model(model, chips, *, command: str | None = None) -> Comparison:
    """Estimate ``model`` on every chip of ``chips`` (a list, or names separated by commas)."""
    from archnet.report.build import parse_chips
    from simulator.cost import estimate
    from simulator.profiles import load_profile
    names = parse_chips(chips)
    if not names:
        raise ReportError("--chips: name at least one chip profile")
    program, kind = load_model(model)
    profiles, seen = [], set()
    for name in names:
        prof = load_profile(name)
        if prof.name not in seen:
            seen.add(prof.name)
            profiles.append(prof)
    estimates = [estimate(program, p) for p in profiles]
    cmd = command or shlex.join(["archnet", "compare", str(model), "--chips", ",".join(names)])
    return Comparison(str(model), kind, program, profiles, estimates, cmd)


# ----------------------------------------------------------------------------- tables

def totals_frame(c: Comparison) -> pd.DataFrame:
    rows = []
    for prof, est in zip(c.profiles, c.estimates):
        parts = [0.0, 0.0, 0.0]
        host = 0.0
        for op in est.ops:
            if op.on_host:
                host += op.latency_ms
            else:
                parts = [a + b for a, b in zip(parts, op_segments(op))]
        rows.append({"chip": prof.name, "profile": str(prof.path),
                     "latency_ms": est.total_latency_ms, "npu_ms": est.total_latency_ms - host,
                     "host_ms": host, "compute_ms": parts[0], "memory_exposed_ms": parts[1],
                     "overhead_ms": parts[2], "fallbacks": len(est.fallbacks),
                     "host_ops": sum(op.on_host for op in est.ops)})
    return pd.DataFrame(rows)


def per_op_frame(c: Comparison) -> pd.DataFrame:
    """One row per op (schedule order), per chip its latency, placement and fallback reason."""
    base = c.estimates[0]
    rows = []
    for i, op in enumerate(base.ops):
        row = {"op": op.name, "type": op.type, "detail": op.detail}
        for prof, est in zip(c.profiles, c.estimates):
            o = est.ops[i]
            if o.name != op.name:  # pragma: no cover - one Program, one schedule
                raise ReportError(f"{c.model}: op order differs between chips")
            row[f"{prof.name} ms"] = o.latency_ms
            row[f"{prof.name} placement"] = "host" if o.on_host else "npu"
            row[f"{prof.name} fallback"] = o.fallback_reason or ""
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_dict(c: Comparison) -> dict:
    tot = totals_frame(c)
    return {
        "model": c.model, "kind": c.kind, "program": c.program.name, "batch": c.batch,
        "command": c.command,
        "chips": [{**{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()},
                   "fallback_ops": [{"name": op.name, "type": op.type, "reason": op.fallback_reason}
                                    for op in est.fallbacks]}
                  for row, est in zip(tot.to_dict("records"), c.estimates)],
        "ops": [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                for r in per_op_frame(c).to_dict("records")],
    }


# ----------------------------------------------------------------------------- text

def format_comparison(c: Comparison) -> str:
    chips = c.chips
    tot = totals_frame(c)
    w = max(14, *(len(x) + 2 for x in chips))
    n_ops = len(c.estimates[0].ops)
    lines = [f"compare {c.model} ({c.kind}; program {c.program.name}, {n_ops} ops, "
             f"batch {c.batch if c.batch is not None else '?'})",
             "profiles: " + ", ".join(f"{p.name} = {show_path(p.path)}" for p in c.profiles),
             "", f"{'':24s}" + "".join(f"{x:>{w}s}" for x in chips)]

    def row(label, values, fmt):
        lines.append(f"{label:24s}" + "".join(f"{fmt(v):>{w}s}" for v in values))
    row("latency ms", tot["latency_ms"], lambda v: f"{v:.4f}")
    row("  on the NPU ms", tot["npu_ms"], lambda v: f"{v:.4f}")
    row("  on the host ms", tot["host_ms"], lambda v: f"{v:.4f}")
    row("fallbacks", tot["fallbacks"], lambda v: str(int(v)))
    fastest = float(tot["latency_ms"].min())
    row("x the fastest", tot["latency_ms"],
        lambda v: f"{v / fastest:.2f}x" if fastest > 0 else "-")

    ops = per_op_frame(c)
    fb_idx = [i for i in range(len(ops)) if any(ops.loc[i, f"{x} placement"] == "host" for x in chips)]
    lines.append("")
    if fb_idx:
        lines.append("fallback ops (HOST = runs on the host on that chip)")
        lines.append(f"{'op':24s}" + "".join(f"{x:>{w}s}" for x in chips))
        for i in fb_idx:
            name = f"{ops.loc[i, 'op']} ({ops.loc[i, 'type']})"
            lines.append(f"{_fit(name, 24)}" + "".join(
                f"{('HOST' if ops.loc[i, f'{x} placement'] == 'host' else 'npu'):>{w}s}"
                for x in chips))
        lines.append("reasons:")
        for i in fb_idx:
            for x in chips:
                reason = ops.loc[i, f"{x} fallback"]
                if ops.loc[i, f"{x} placement"] == "host":
                    lines.append(f"  {ops.loc[i, 'op']} ({ops.loc[i, 'type']}) on {x}: "
                                 f"{reason or 'placed on the host'}")
    else:
        lines.append("fallback ops: none on any chip")

    lines += ["", "per-op latency ms (H = on the host)"]
    lines.append(f"{'op':30s} {'type':16s}" + "".join(f"{x:>{w}s}" for x in chips))
    zero = 0
    for i in range(len(ops)):
        vals = [ops.loc[i, f"{x} ms"] for x in chips]
        if all(v == 0 for v in vals):
            zero += 1
            continue
        cells = [f"{v:.4f}" + ("H" if ops.loc[i, f"{x} placement"] == "host" else " ")
                 for v, x in zip(vals, chips)]
        lines.append(f"{_fit(ops.loc[i, 'op'], 30)} {_fit(ops.loc[i, 'type'], 16)}"
                     + "".join(f"{s:>{w}s}" for s in cells))
    lines.append(f"{'total':30s} {'':16s}"
                 + "".join(f"{v:>{w - 1}.4f} " for v in tot["latency_ms"]))
    if zero:
        lines.append(f"({zero} op(s) of zero cost on every chip left out: fused into their "
                     f"producer, or views)")
    return "\n".join(lines)


def _fit(text: str, width: int) -> str:
    text = str(text)
    if len(text) > width:
        keep = width - 1
        text = text[: keep // 2] + "…" + text[-(keep - keep // 2):]
    return f"{text:{width}s}"


# ----------------------------------------------------------------------------- plot

def plot_comparison(c: Comparison, path) -> Path:
    from archnet.report import plots
    path = Path(path)
    footer = [f"model: {show_path(c.model)} ({c.kind}; program {c.program.name}, batch "
              f"{c.batch if c.batch is not None else '?'})",
              f"estimates: simulator.cost.estimate, by: {c.command}",
              "profiles: " + ", ".join(show_path(p.path) for p in c.profiles),
              "data: none (the cost model reads only shapes, bit widths and the profile)"]
    title = (f"{Path(c.model).name} on {len(c.chips)} chips: estimated latency and host "
             f"fallbacks")
    buf = io.BytesIO()
    plots.plot_compare(totals_frame(c), per_op_frame(c), buf, title, footer)
    return atomic_write_bytes(path, buf.getvalue())


__all__ = ["Comparison", "compare_model", "comparison_dict", "format_comparison", "load_model",
           "per_op_frame", "plot_comparison", "totals_frame"]
