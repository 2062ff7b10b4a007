"""``write_report(run_dir)``: one folder per run with report.md, CSV tables and PNG plots.

Everything is read and computed first (a missing file or absent accuracy data fails before any
file is written); then the folder is written under a temporary name beside its final place and
renamed into place (``archnet.report.staging``).
"""

from __future__ import annotations

import datetime as _dt
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from archnet.errors import ReportError
from archnet.report import plots, tables
from archnet.report.collect import (STUDENT_FILE, RunFolder, no_accuracy_error, open_run,
                                    show_path, verify_command)
from archnet.report.markdown import Markdown, code
from archnet.report.staging import check_target, staged_folder

REPORT_DIR = "report"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "chip"


def parse_chips(chips) -> list[str] | None:
    if chips is None:
        return None
    items = chips.split(",") if isinstance(chips, str) else list(chips)
    out = list(dict.fromkeys(c.strip() for c in items if c and c.strip()))
    if not out:
        raise ReportError("--chips: no chip named (give names separated by commas, e.g. "
                          "k210-kpu,ethos-u55-128)")
    return out


def report_command(run_dir, others=(), chips=None, out=None, images=64, latency_only=False) -> str:
    parts = ["archnet", "report", str(run_dir)]
    for o in others:
        parts += ["--with", str(o)]
    if chips:
        parts += ["--chips", ",".join(chips)]
    if out is not None:
        parts += ["--out", str(out)]
    if images != 64:
        parts += ["--images", str(images)]
    if latency_only:
        parts.append("--latency-only")
    return shlex.join(parts)


@dataclass
class ReportData:
    run: RunFolder
    others: list[RunFolder]
    chips: list[str]
    profiles: dict
    estimates: dict
    teacher: object = None
    teacher_estimates: dict = field(default_factory=dict)
    layer_images: object = None
    layer_errors: dict = field(default_factory=dict)
    latency_only: bool = False
    command: str = ""


def collect(run_dir, *, others=(), chips=None, images=64, latency_only=False, command=None,
            log=None) -> ReportData:
    """Read the run folder(s) and compute every number of the report (no file is written)."""
    from simulator.cost import estimate
    from archnet.report import measure

    say = log or (lambda _m: None)
    run = open_run(run_dir)
    other_runs = [open_run(o) for o in others]
    if images is None or int(images) < 0:
        raise ReportError(f"--images must be 0 or more, got {images}")
    images = int(images)
    if not latency_only:
        for r in [run, *other_runs]:
            if not r.verifies:
                raise no_accuracy_error(r)
    chip_list = parse_chips(chips)
    if chip_list is None:
        chip_list = [run.chip] + sorted(c for c in run.verifies if c != run.chip)
    program = run.program()
    run.student()  # the student must be there and be model.program's own
    profiles, estimates = {}, {}
    for chip in chip_list:
        prof = measure.profile_for(run, chip)
        if prof.name in profiles:
            continue
        profiles[prof.name] = prof
        estimates[prof.name] = estimate(program, prof)
    chip_list = list(profiles)
    data = ReportData(run, other_runs, chip_list, profiles, estimates, latency_only=latency_only,
                      command=command or report_command(run_dir, others, parse_chips(chips), None,
                                                        images, latency_only))
    say(f"estimated {program.name} on {', '.join(chip_list)}")
    data.teacher = measure.teacher_graph(run)
    data.teacher_estimates = {c: estimate(data.teacher.program, profiles[c]) for c in chip_list}
    say(f"estimated the teacher's graph ({data.teacher.path}) on {len(chip_list)} chip(s)")
    if not latency_only and images > 0:
        data.layer_images = measure.layer_images(run, images)
        for c in chip_list:
            data.layer_errors[c] = measure.layer_errors(run, profiles[c], data.layer_images.images)
        say(f"per-layer error on {data.layer_images.count} {data.layer_images.dataset} images")
    return data


# ----------------------------------------------------------------------------- provenance text

def _profiles_line(profiles) -> str:
    paths = [show_path(p.path) for p in profiles]
    return ("profile: " if len(paths) == 1 else "profiles: ") + ", ".join(paths)


def _verify_lines(runs: list[RunFolder], chips) -> list[str]:
    """The verify commands, one line per run where they differ only in the chip."""
    lines = []
    for r in runs:
        recs = [rec for c, rec in sorted(r.verifies.items()) if chips is None or c in chips]
        if not recs:
            continue
        generic = {rec.source.replace(rec.chip, "{CHIP}") for rec in recs}
        if len(generic) == 1 and len(recs) > 1:
            lines.append(f"accuracy by: {generic.pop()}  [CHIP = {', '.join(x.chip for x in recs)}]")
        else:
            lines += [f"accuracy by: {rec.source}" for rec in recs]
    return lines


def _images_text(recs) -> str:
    sets = sorted({(rec.dataset or "?", rec.split or "test", rec.images) for rec in recs},
                  key=str)
    return "; ".join(f"{d} {s} split, {n} labelled images" for d, s, n in sets)


# ----------------------------------------------------------------------------- writing

def write_files(data: ReportData, folder: Path) -> list[str]:
    """Write every CSV, PNG and report.md into ``folder``; returns the file names."""
    run = data.run
    written: list[str] = []
    md = Markdown()
    profs = [data.profiles[c] for c in data.chips]

    def csv(df, name: str) -> str:
        df.to_csv(folder / name, index=False, errors="backslashreplace")
        written.append(name)
        return name

    def png(fn, name: str, *args, **kw) -> str:
        fn(*args, path=folder / name, **kw)
        written.append(name)
        return name

    _, meta = run.student()
    teacher = data.teacher
    md.h(1, f"Arch-Net report: {run.name}")
    md.bullets([
        f"run folder: {code(show_path(run.path))}",
        f"teacher: {code(show_path(teacher.path))} ({meta.get('teacher_arch') or '?'}), "
        f"data set {code(run.dataset)}; student bits {code(' '.join(run.bits))}; "
        f"converted for {code(run.chip)} ({code(show_path(run.profile_path))})",
        f"converted by: {code(run.command)}",
        f"teacher trained by: {code(teacher.command or '?')}",
        f"this report: {code(data.command)} "
        f"({_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')})",
        f"chips: {', '.join(f'{code(c)} ({code(show_path(data.profiles[c].path))})' for c in data.chips)}",
    ])
    other_teacher = [r for c, r in sorted(run.verifies.items())
                     if c in data.chips and r.teacher_matches_conversion is False]
    if other_teacher:
        md.p("**Warning: verified against another teacher.** "
             + "; ".join(f"{code(r.path.name)} used {code(show_path(r.teacher))}" for r in other_teacher)
             + f", given on purpose with `--teacher`: its content hash differs from the one "
               f"{code(STUDENT_FILE)} records, so its teacher accuracy and agreement are not "
               f"those of the teacher this run was converted from.")
    missing_acc = [c for c in data.chips if c not in run.verifies]
    if data.latency_only:
        md.p("**Accuracy is absent from this report** (`--latency-only`): no `verify_<chip>.json` "
             "was used, so there is no accuracy column, no accuracy-latency (Pareto) figure and "
             "no per-layer error. " + (f"`{verify_command(run.path, run.chip)}` adds accuracy for "
                                       f"{run.chip}." if not run.verifies else ""))
    elif missing_acc:
        md.p("Accuracy is absent for " + ", ".join(code(c) for c in missing_acc) + ": "
             + "; ".join(code(verify_command(run.path, c)) for c in missing_acc) + " adds it.")

    # -- summary per chip
    chip_df = tables.chip_frame(run, data.chips, data.estimates, data.profiles)
    if data.latency_only:
        chip_df = chip_df.drop(columns=["simulator_accuracy", "fake_quant_accuracy",
                                        "teacher_accuracy", "test_images", "bit_exact",
                                        "verify_file"])
    csv(chip_df, "chips.csv")
    md.h(2, "Summary per chip")
    show = chip_df.copy()
    show["profile"] = [show_path(p) for p in show["profile"]]
    md.table(tables.markdown_table(show))
    md.p("Latency: `simulator.cost.estimate` of `model.program` (batch 1) on each profile. "
         + ("" if data.latency_only else "Accuracy: from each chip's `verify_<chip>.json` "
            "(simulator = the integer Program on that chip's arithmetic; fake-quant = the float "
            "student; teacher = float)."))

    # -- per-op latency
    md.h(2, "Latency per op")
    md.p("Each bar is one op of the Arch-Net Program, in schedule order, split so the parts add "
         "up to the op's estimated latency: compute, memory time *not* hidden behind compute "
         "(on the NPU an op takes overhead + max(compute, memory)), and the fixed per-op "
         "overhead. Host fallbacks are hatched with a red label and their reason listed under "
         "the plot. Ops of zero cost (requantize fused into its conv, flatten views) are left "
         "out of the plot but are in the CSV.")
    for chip in data.chips:
        est, prof = data.estimates[chip], data.profiles[chip]
        df = tables.op_frame(est)
        name = csv(df, f"ops_{slug(chip)}.csv")
        npu, host = _split(est)
        hidden = int((df["cycles"] <= 0).sum())
        footer = [f"model: {show_path(run.program_path)}, written by: {run.command}",
                  f"estimate: simulator.cost.estimate, batch 1, by: {data.command}",
                  _profiles_line([prof]) + f"  ({chip}, {prof.clock_hz / 1e6:g} MHz)",
                  "data: none (the cost model reads only shapes, bit widths and the profile)"]
        title = (f"Arch-Net on {chip}: {est.total_latency_ms:.4g} ms per image "
                 f"(NPU {npu:.3g} ms, host {host:.3g} ms), {len(est.fallbacks)} fallback"
                 f"{'s' if len(est.fallbacks) != 1 else ''}")
        fig = png(plots.plot_ops, f"ops_{slug(chip)}.png", df, title=title, footer=footer,
                  hidden=hidden)
        md.h(3, chip)
        md.figure(fig, f"latency per op on {chip}",
                  f"{title}. Table: [{name}]({name}) (every op, raw cycles and the parts plotted).",
                  [f"model: {code(show_path(run.program_path))}, written by {code(run.command)}",
                   f"estimate: {code('simulator.cost.estimate')} (batch 1), by {code(data.command)}",
                   f"profile: {code(show_path(prof.path))}",
                   "data: none — the cost model reads only shapes, bit widths and the profile"])
        if est.fallbacks:
            md.bullets([f"fallback {code(op.name)}: {op.fallback_reason}" for op in est.fallbacks])

    # -- Pareto
    if not data.latency_only:
        runs = [run, *data.others]
        pdf = tables.pareto_frame(runs, set(data.chips) if data.chips else None)
        name = csv(pdf, "pareto.csv")
        md.h(2, "Accuracy against estimated latency (Pareto)")
        recs = [rec for r in runs for c, rec in r.verifies.items() if c in data.chips]
        if pdf.empty:
            md.p("No verify record on the chips of this report: no points to plot.")
        else:
            # as shown: the same profile verified from another checkout is listed once
            prof_paths = sorted({show_path(str(p)) for p in pdf["profile"].dropna()})
            footer = (_verify_lines(runs, set(data.chips))
                      + ["profiles: " + ", ".join(prof_paths),
                         f"data: {_images_text(recs)}; latency: the estimate in each verify record",
                         f"plotted by: {data.command}"])
            fig = png(plots.plot_pareto, "pareto.png", pdf, footer=footer)
            md.figure(fig, "accuracy against latency",
                      f"Simulator (integer) accuracy on the test set against the estimated latency, "
                      f"one point per (bits, chip) from {len(runs)} run folder(s). Black edges mark "
                      f"the points no other point beats on both axes (joined by the dotted line); "
                      f"a dashed line in a chip's colour joins that chip's own Pareto front. "
                      f"Table: [{name}]({name}).",
                      [f"accuracy by: {code(rec.source)}" for rec in recs]
                      + [f"converted by: {code(r.command)}" for r in runs]
                      + [f"profiles: {', '.join(code(p) for p in prof_paths)}",
                         f"data: {_images_text(recs)}"])
            cols = ["bits", "chip", "latency_ms", "simulator_accuracy", "fake_quant_accuracy",
                    "teacher_accuracy", "test_images", "pareto_optimal"]
            md.table(tables.markdown_table(pdf[cols]))
            ties = []
            for chip, grp in pdf.groupby("chip", sort=False):
                for _lat, g in grp.groupby(grp["latency_ms"].round(9)):
                    if g["bits"].nunique() > 1:
                        ties.append(f"{' and '.join(g['bits'])} on {code(chip)}")
            if ties:
                md.p("Same estimated latency for " + "; ".join(ties) + ": the chip has no "
                     "precision mode that narrow, so those widths run in the same (wider) mode "
                     "(the `weight_bits`/`activation_bits` columns of the per-op CSVs).")

    # -- per-layer error
    if not data.latency_only and data.layer_errors:
        li = data.layer_images
        ldf = tables.layer_frame(data.layer_errors)
        name = csv(ldf, "layer_error.csv")
        md.h(2, "Per-layer error: fake-quant against integer")
        footer = [f"data: first {li.count} unlabeled {li.dataset} {li.split} images "
                  f"(data path {li.data_path or 'default'})",
                  f"fake-quant: {show_path(run.student_path)}; integer: "
                  f"{show_path(run.program_path)} on the simulator; written by: {run.command}",
                  f"computed by: {data.command}", _profiles_line(profs)]
        fig = png(plots.plot_layer_error, "layer_error.png", ldf, footer=footer)
        md.figure(fig, "per-layer error",
                  "Relative L2 error ‖fq − int‖ / ‖int‖ of every student step, in network order: "
                  "the fake-quant float tensor (PyTorch, `student.blocks[i].trace`) against the "
                  "simulator's integer tensor, dequantized with its scale and zero point. Top: "
                  "each side runs from the image, so errors accumulate as on the chip. Bottom: "
                  "each block is fed the simulator's own block input, so it shows what that "
                  f"block alone adds. Table: [{name}]({name}) (also the mean and max error in "
                  "steps of the tensor's grid, and the share of elements that land on another "
                  "step).",
                  [f"data: first {li.count} unlabeled {code(li.dataset)} {li.split} images",
                   f"fake-quant: {code(show_path(run.student_path))}; integer: "
                   f"{code(show_path(run.program_path))}, written by {code(run.command)}",
                   f"computed by: {code(data.command)}",
                   "profiles: " + ", ".join(code(show_path(p.path)) for p in profs)])
        piv = ldf.pivot_table(index=["index", "tensor", "kind"], columns="chip",
                              values=["rel_error", "rel_error_local"], sort=False)
        piv.columns = [f"{chip} {'alone' if v == 'rel_error_local' else 'from image'}"
                       for v, chip in piv.columns]
        piv = piv.reset_index().drop(columns=["index"])
        md.table(tables.markdown_table(piv, "{:.3%}"))

    # -- teacher vs Arch-Net
    tdf = tables.teacher_frame(data.chips, data.estimates, data.teacher_estimates)
    name = csv(tdf, "teacher_vs_archnet.csv")
    md.h(2, "The teacher's graph against the Arch-Net graph")
    t_footer = [f"teacher: ONNX export (float, opset 17) of {show_path(teacher.path)}, trained by: "
                f"{teacher.command or '?'}",
                f"Arch-Net: {show_path(run.program_path)}, written by: {run.command}",
                f"estimates: simulator.cost.estimate, batch 1, by: {data.command}",
                _profiles_line(profs),
                "data: none (the cost model reads only shapes, bit widths and the profile)"]
    fig = png(plots.plot_teacher, "teacher_vs_archnet.png", tdf, footer=t_footer)
    md.figure(fig, "teacher against Arch-Net",
              "Estimated latency per image of the teacher's graph (its ONNX export, imported for "
              "estimation only: ops the chip lacks — a 7x7 conv, Add, global pooling — fall back "
              "to the host) and of the Arch-Net Program, per chip; host time hatched. The float "
              "teacher is costed in the precision mode(s) of the `mac_modes` column. "
              f"Table: [{name}]({name}).",
              [f"teacher: ONNX export of {code(show_path(teacher.path))}, trained by "
               f"{code(teacher.command or '?')}",
               f"Arch-Net: {code(show_path(run.program_path))}, written by {code(run.command)}",
               f"estimates by {code(data.command)}",
               "profiles: " + ", ".join(code(show_path(p.path)) for p in profs),
               "data: none — the cost model reads only shapes, bit widths and the profile"])
    show = tdf.drop(columns=["fallback_ops"])
    md.table(tables.markdown_table(show))
    slower = [c for c in data.chips
              if data.estimates[c].total_latency_ms > data.teacher_estimates[c].total_latency_ms]
    if slower:
        md.p("On " + ", ".join(code(c) for c in slower) + " the Arch-Net graph is slower than "
             f"the teacher's: it was lowered for {code(run.chip)}'s op set (more, smaller ops: "
             "e.g. a large kernel as a stack of small convs, a residual Add as concat + conv), "
             "which " + ("that chip does" if len(slower) == 1 else "those chips do")
             + " not need; convert for " + ("it" if len(slower) == 1 else "each of them")
             + " to compare like with like.")
    for chip in data.chips:
        est = data.teacher_estimates[chip]
        df = tables.op_frame(est)
        cname = csv(df, f"teacher_ops_{slug(chip)}.csv")
        npu, host = _split(est)
        title = (f"Teacher graph on {chip}: {est.total_latency_ms:.4g} ms per image "
                 f"(NPU {npu:.3g} ms, host {host:.3g} ms), {len(est.fallbacks)} fallback"
                 f"{'s' if len(est.fallbacks) != 1 else ''}")
        footer = [t_footer[0], t_footer[2],
                  _profiles_line([data.profiles[chip]]) + f"  ({chip})", t_footer[4]]
        fig = png(plots.plot_ops, f"teacher_ops_{slug(chip)}.png", df, title=title,
                  footer=footer, hidden=int((df["cycles"] <= 0).sum()))
        md.figure(fig, f"teacher per op on {chip}",
                  f"{title}. Table: [{cname}]({cname}).",
                  [f"teacher: ONNX export of {code(show_path(teacher.path))}",
                   f"estimate by {code(data.command)}",
                   f"profile: {code(show_path(data.profiles[chip].path))}",
                   "data: none — the cost model reads only shapes, bit widths and the profile"])
        if est.fallbacks:
            md.bullets([f"fallback {code(op.name)}: {op.fallback_reason}" for op in est.fallbacks])

    # -- conversion plan
    pdf = tables.plan_frame(run.summary)
    md.h(2, "Conversion plan: the rule per teacher node")
    if pdf is None:
        md.p(f"{code('convert.json')} records no plan: the hand-written ResNet lowering "
             f"(`--recipe resnet`) converted this run, by construction rather than per node.")
    else:
        name = csv(pdf, "plan.csv")
        md.p(plan_text(run.summary, run.chip) + f" Table: [{name}]({name}).")
        md.table(tables.markdown_table(pdf[["node", "module", "op", "rule", "kept", "reason",
                                            "student_ops"]]))

    # -- distillation history
    hdf = tables.history_frame(run.summary)
    md.h(2, "Distillation history")
    if hdf.empty:
        md.p(f"{code('convert.json')} holds no per-period history.")
    else:
        name = csv(hdf, "history.csv")
        share = run.summary.get("simulator_share")
        share = float(share) if share is not None else None
        footer = [f"data: {show_path(run.path / 'convert.json')} (history), written by: {run.command}",
                  f"simulator in the loop on profile: {show_path(run.profile_path)}",
                  f"images: {run.summary.get('images')} unlabeled {run.dataset} training images",
                  f"plotted by: {data.command}"]
        fig = png(plots.plot_history, "history.png", hdf, footer=footer, total_share=share)
        md.figure(fig, "distillation history",
                  "Blockwise distillation, one period per new block: the loss of the period's "
                  "window of blocks at its first and last step, and the period's seconds with "
                  f"the simulator's share (it runs the earlier blocks). Table: [{name}]({name}).",
                  [f"data: {code('convert.json')}, written by {code(run.command)}",
                   f"profile: {code(show_path(run.profile_path))}",
                   f"images: {run.summary.get('images')} unlabeled {run.dataset} training images"])
        phases = [c for c in hdf.columns if c.endswith("_phase_seconds")]
        md.table(tables.markdown_table(hdf[["period", "new_block", "blocks", "steps", "loss_first",
                                            "loss_last", "seconds", "simulator_share",
                                            *phases]]))

    md.h(2, "Files")
    md.bullets([f"[{f}]({f})" for f in sorted(written)])
    (folder / "report.md").write_text(md.text(), encoding="utf-8", errors="backslashreplace")
    written.append("report.md")
    return written


def plan_text(summary: dict, chip: str) -> str:
    """What the plan's table says, with the plan's notes (widths the chip does not accelerate)."""
    plan = summary.get("plan") or {}
    fired = plan.get("rules_fired") or {}
    notes = [str(n) for n in plan.get("notes") or []]
    return (f"The converter's choice per teacher node for {code(str(chip))} (recipe "
            f"{code(str(plan.get('recipe') or summary.get('recipe') or '?'))}): *kept* yes where "
            f"the chip's own op runs it, *replaced* where an Arch-Net form does, *host* where it "
            f"falls back; *reason* why; the CSV adds each node's cycles and the other forms that "
            f"fit, with their cycles, or why they did not. Rules fired: "
            + ", ".join(f"{code(r)} x{n}" for r, n in sorted(fired.items()))
            + "." + ("" if not notes else " " + " ".join(f"**Note:** {n}." for n in notes)))


def _split(est) -> tuple[float, float]:
    from archnet.report.measure import host_npu_ms
    return host_npu_ms(est)


def write_report(run_dir, *, others=(), chips=None, out=None, images: int = 64,
                 latency_only: bool = False, command: str | None = None, log=None) -> Path:
    """Write ``RUN_DIR/report/`` (or ``out``): report.md, CSV tables, PNG plots.

    ``others``: more run folders whose verify records join the Pareto figure. ``chips``: the
    chips to report (names or profile files, a list or "a,b"); default the conversion chip and
    every chip with a ``verify_<chip>.json``. ``images``: unlabeled training images for the
    per-layer error (0 leaves it out). ``latency_only``: no accuracy needed (no verify record),
    and none reported. Raises ``ReportError`` (one line) before writing anything when a file is
    missing or there is no accuracy data; the folder appears complete or not at all.
    """
    run_path = Path(run_dir)
    final = Path(out) if out is not None else run_path / REPORT_DIR
    inputs = [run_path, *others]
    check_target(final, inputs)
    cmd = command or report_command(run_dir, others, parse_chips(chips), out, images, latency_only)
    data = collect(run_dir, others=others, chips=chips, images=images, latency_only=latency_only,
                   command=cmd, log=log)
    with staged_folder(final, inputs) as tmp:
        write_files(data, tmp)
    return final


__all__ = ["REPORT_DIR", "ReportData", "collect", "parse_chips", "report_command", "write_files",
           "write_report"]
