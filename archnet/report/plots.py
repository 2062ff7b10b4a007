"""The report's figures (matplotlib, Agg canvas, PNG). Every figure carries a footer naming the
command that produced its data, the profile file(s) and the data set/images.

No pyplot: figures are ``matplotlib.figure.Figure`` objects on an Agg canvas, so nothing here
touches a global backend or leaks figures.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

DPI = 110
WIDTH = 11.0                  # inches
FOOT_PT = 7.0                 # footer font size
COMPUTE, MEMORY, OVERHEAD = "#4C72B0", "#DD8452", "#A9A9A9"
HOST_EDGE, HOST_TEXT = "#B22222", "#B22222"
CHIP_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


# ----------------------------------------------------------------------------- layout helpers

def _wrap(lines: list[str], width_in: float) -> list[str]:
    chars = max(40, int(width_in * 72 / (0.66 * FOOT_PT)) - 4)
    out = []
    for line in lines:
        out += textwrap.wrap(line, chars, subsequent_indent="    ", break_on_hyphens=False,
                             break_long_words=True) or [""]
    return out


def _footer_height(lines: list[str]) -> float:
    return (len(lines) * FOOT_PT * 1.3 + 10) / 72 if lines else 0.1


def short_name(name: str, width: int = 34) -> str:
    """An op name that fits a tick label: ONNX paths lose the leading slash and the repeated
    module prefix (``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0/conv1/Conv``), then the middle."""
    parts = [p for p in name.split("/") if p]
    kept = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p))]
    s = "/".join(kept) if kept else name
    if len(s) > width:
        keep = width - 1
        s = s[: keep // 2] + "…" + s[-(keep - keep // 2):]
    return s


def new_figure(content_h: float, notes: list[str], footer: list[str], width: float = WIDTH):
    """A figure of ``content_h`` inches of plots above wrapped notes (dark red) and the footer
    (provenance, grey). Returns ``(fig, bottom_fraction)``; lay out plots above that fraction."""
    provenance = list(footer)
    notes = _wrap(notes, width)
    footer = _wrap(footer, width)
    foot_h = _footer_height(footer) + (_footer_height(notes) if notes else 0.0)
    height = content_h + foot_h
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig._archnet_provenance = provenance  # also saved as the PNG's Description text
    y = 4 / 72 / height
    fig.text(0.008, y, "\n".join(footer), fontsize=FOOT_PT, family="monospace", color="#404040",
             va="bottom", ha="left", linespacing=1.25)
    if notes:
        y2 = y + _footer_height(footer) / height
        fig.text(0.008, y2, "\n".join(notes), fontsize=FOOT_PT + 0.5, family="monospace",
                 color=HOST_TEXT, va="bottom", ha="left", linespacing=1.25)
    return fig, foot_h / height


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (surrogate escapes) shown as ``\\xff``:
    fonts and PNG metadata take Unicode only."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def save(fig: Figure, path: Path, bottom: float, top: float = 1.0) -> Path:
    from matplotlib.text import Text
    for artist in fig.findobj(Text):
        artist.set_text(printable(artist.get_text()))
    fig.tight_layout(rect=(0, bottom, 1, top))
    meta = {"Software": "archnet report",
            "Description": printable("\n".join(getattr(fig, "_archnet_provenance", [])))}
    fig.savefig(path, dpi=DPI, format="png", metadata=meta)
    return path


# ----------------------------------------------------------------------------- per-op latency

def _op_labels(df, host_marks: dict[str, str]):
    labels = []
    for name, typ, detail in zip(df["op"], df["type"], df["detail"]):
        mark = f" [{host_marks[name]}]" if name in host_marks else ""
        detail = "" if not isinstance(detail, str) or detail.startswith(("fused", "view")) \
            or detail.startswith("ONNX") else f" {detail}"
        labels.append(f"{short_name(name)} · {typ}{detail}{mark}")
    return labels


def plot_ops(df, path: Path, title: str, footer: list[str], *, hidden: int = 0) -> Path:
    """Horizontal stacked bars, one per op with cycles, in schedule order: compute, memory not
    hidden by compute, overhead; host fallbacks hatched with a red edge and label, and their
    reasons listed under the plot."""
    shown = df[df["cycles"] > 0].reset_index(drop=True)
    host = shown[shown["placement"] == "host"]
    marks = {name: f"H{i + 1}" for i, name in enumerate(host["op"])}
    notes = [f"[{marks[n]}] {n}: runs on the host: {r or 'placed on the host'}"
             for n, r in zip(host["op"], host["fallback_reason"])]
    if hidden:
        notes_hidden = f"{hidden} op(s) of zero cost (fused into their producer, or views) not shown"
    else:
        notes_hidden = None
    n = max(len(shown), 1)
    fig, bottom = new_figure(1.3 + 0.27 * n, notes, footer + ([notes_hidden] if notes_hidden else []))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(shown))
    is_host = (shown["placement"] == "host").to_numpy()
    left = np.zeros(len(shown))
    any_host = bool(is_host.any())
    for col, color, label in (("compute_ms", COMPUTE, "compute"),
                              ("memory_exposed_ms", MEMORY, "memory not hidden"
                               + (" (host: transfer)" if any_host else " by compute")),
                              ("overhead_ms", OVERHEAD, "overhead (host: hand-off)"
                               if any_host else "per-op overhead")):
        vals = shown[col].to_numpy(float)
        ax.barh(y[~is_host], vals[~is_host], left=left[~is_host], color=color, height=0.72,
                label=label)
        if is_host.any():
            ax.barh(y[is_host], vals[is_host], left=left[is_host], color=color, height=0.72,
                    hatch="////", edgecolor=HOST_EDGE, linewidth=0.8)
        left += vals
    total = shown["latency_ms"].to_numpy(float)
    xmax = float(total.max()) if len(total) else 1.0
    for yi, t, h in zip(y, total, is_host):
        ax.text(t + xmax * 0.008, yi, f"{t:.3g}", va="center", fontsize=7.5,
                color=HOST_TEXT if h else "#202020")
    ax.set_yticks(y)
    ax.set_yticklabels(_op_labels(shown, marks), fontsize=8)
    for tick, h in zip(ax.get_yticklabels(), is_host):
        if h:
            tick.set_color(HOST_TEXT)
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlim(0, xmax * 1.1 if xmax > 0 else 1)
    ax.set_ylim(len(shown) - 0.4, -0.6)
    ax.set_xlabel("estimated latency (ms per image)")
    ax.set_title(title, fontsize=10.5, loc="left", pad=24)
    ax.grid(axis="x", color="#e0e0e0", linewidth=0.6)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    if any_host:
        handles.append(Patch(facecolor="white", edgecolor=HOST_EDGE, hatch="////",
                             label="host fallback"))
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=4,
              fontsize=7.5, frameon=False, borderaxespad=0.2, handlelength=1.6)
    return save(fig, path, bottom)


# ----------------------------------------------------------------------------- Pareto

def plot_pareto(df, path: Path, footer: list[str]) -> Path:
    """Simulator accuracy against estimated latency: colour = chip, marker = bits; the points no
    other beats on both axes joined by a dashed step line; the float teacher as a dotted line."""
    fig, bottom = new_figure(5.2, [], footer)
    ax = fig.add_subplot(1, 1, 1)
    chips = list(dict.fromkeys(df["chip"]))
    bits = list(dict.fromkeys(df["bits"]))
    lat = df["latency_ms"].to_numpy(float)
    acc = df["simulator_accuracy"].to_numpy(float) * 100
    log = len(lat) > 1 and lat.min() > 0 and lat.max() / lat.min() > 4
    for _, row in df.iterrows():
        ax.scatter(row["latency_ms"], row["simulator_accuracy"] * 100,
                   color=CHIP_COLORS[chips.index(row["chip"]) % len(CHIP_COLORS)],
                   marker=MARKERS[bits.index(row["bits"]) % len(MARKERS)], s=70, zorder=3,
                   edgecolor="black" if row["pareto_optimal"] else "none", linewidth=1.2)
    # points that sit on one another share one label
    groups: list[list[int]] = []
    span_y = max(float(np.ptp(acc)) if len(acc) else 0.0, 0.5)
    for i in range(len(df)):
        for g in groups:
            j = g[0]
            close_x = (abs(math.log(lat[i] / lat[j])) < 0.04) if log else \
                abs(lat[i] - lat[j]) < 0.02 * (np.ptp(lat) or 1)
            if close_x and abs(acc[i] - acc[j]) < 0.025 * span_y and df.iloc[i]["chip"] == df.iloc[j]["chip"]:
                g.append(i)
                break
        else:
            groups.append([i])
    labels = [(", ".join(str(df.iloc[k]["bits"]) for k in g), lat[g[0]], acc[g[0]]) for g in groups]
    for k, chip in enumerate(chips):
        front = df[(df["chip"] == chip) & df["pareto_on_chip"]].sort_values("latency_ms")
        if len(front) > 1:
            ax.plot(front["latency_ms"], front["simulator_accuracy"] * 100, linestyle="--",
                    linewidth=1, color=CHIP_COLORS[k % len(CHIP_COLORS)], zorder=2)
    front = df[df["pareto_optimal"]].sort_values("latency_ms")
    if len(front) > 1:
        ax.step(front["latency_ms"], front["simulator_accuracy"] * 100, where="post",
                color="#606060", linestyle=":", linewidth=1.2, zorder=2)
    teacher = df["teacher_accuracy"].dropna().unique()
    if len(teacher) == 1:
        ax.axhline(float(teacher[0]) * 100, color="#303030", linestyle=":", linewidth=1)
        ax.annotate(f"float teacher {float(teacher[0]) * 100:.2f}%",
                    (0.01, float(teacher[0]) * 100), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", fontsize=8, color="#303030")
    if log:
        from matplotlib.ticker import FuncFormatter
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.tick_params(axis="x", which="minor", labelsize=8)
    ax.set_xlabel("estimated latency on the chip (ms per image)" + (", log scale" if log else ""))
    ax.set_ylabel("simulator (integer) accuracy on the test set (%)")
    lo = float(acc.min()) if len(acc) else 0
    hi = max(float(acc.max()) if len(acc) else 100, float(teacher[0]) * 100 if len(teacher) == 1 else 0)
    pad = max((hi - lo) * 0.15, 0.3)
    ax.set_ylim(lo - pad, min(hi + pad, 100.5) if hi <= 100 else hi + pad)
    if log:
        ax.set_xlim(lat.min() / 1.5, lat.max() * 1.6)
    else:
        span = float(np.ptp(lat)) or max(float(lat.max()) * 0.2, 1e-3)
        ax.set_xlim(max(0.0, lat.min() - span * 0.15), lat.max() + span * 0.3)
    ax.grid(color="#e6e6e6", linewidth=0.6, which="both")
    ax.set_axisbelow(True)
    handles = [Patch(color=CHIP_COLORS[i % len(CHIP_COLORS)], label=c) for i, c in enumerate(chips)]
    from matplotlib.lines import Line2D
    handles += [Line2D([], [], marker=MARKERS[i % len(MARKERS)], color="#404040", linestyle="",
                       label=b) for i, b in enumerate(bits)]
    handles.append(Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor="black",
                          linestyle=":", color="#606060",
                          label="Pareto-optimal over all chips\n(black edge)"))
    handles.append(Line2D([], [], linestyle="--", color="#606060",
                          label="Pareto front on one chip\n(chip colour)"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              framealpha=0.9, title="colour = chip, marker = bits", title_fontsize=8)
    ax.set_title("Accuracy against estimated latency across bit widths and chips "
                 "(up and left is better)", fontsize=10.5, loc="left")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    _place_labels(ax, labels, list(zip(lat, acc)))
    return save(fig, path, bottom)


def _place_labels(ax, labels, points) -> None:
    """Annotate each (text, x, y) beside its point where it overlaps no earlier label and no
    point (first fit of four places; the first place when none fits)."""
    renderer = ax.figure.canvas.get_renderer()
    r = 7.0
    boxes = []
    from matplotlib.transforms import Bbox
    for x, y in points:
        px, py = ax.transData.transform((x, y))
        boxes.append(Bbox([[px - r, py - r], [px + r, py + r]]))
    placed = []
    spots = [((7, 3), "left", "bottom"), ((7, -3), "left", "top"), ((-7, 3), "right", "bottom"),
             ((-7, -3), "right", "top"), ((0, 9), "center", "bottom"), ((0, -9), "center", "top")]
    for text, x, y in labels:
        chosen = None
        for off, ha, va in spots:
            ann = ax.annotate(text, (x, y), xytext=off, textcoords="offset points", fontsize=8,
                              ha=ha, va=va)
            bb = ann.get_window_extent(renderer)
            if not any(bb.overlaps(o) for o in placed + boxes):
                chosen = ann
                break
            ann.remove()
        if chosen is None:
            off, ha, va = spots[0]
            chosen = ax.annotate(text, (x, y), xytext=off, textcoords="offset points",
                                 fontsize=8, ha=ha, va=va)
        placed.append(chosen.get_window_extent(renderer))


# ----------------------------------------------------------------------------- per-layer error

def plot_layer_error(df, path: Path, footer: list[str]) -> Path:
    """Two panels over the student's steps in network order, one line per chip: the relative
    error of the fake-quant tensor against the simulator's from the image (accumulated), and with
    each block fed the simulator's own input (what that block alone adds)."""
    chips = list(dict.fromkeys(df["chip"]))
    first = df[df["chip"] == chips[0]]
    n = len(first)
    fig, bottom = new_figure(6.6, [], footer, width=max(WIDTH, 0.32 * n + 2))
    ax1 = fig.add_subplot(2, 1, 1)
    ax2 = fig.add_subplot(2, 1, 2, sharex=ax1)
    x = np.arange(n)
    series = {c: df[df["chip"] == c][["rel_error", "rel_error_local"]].to_numpy(float)
              for c in chips}
    styles = ["-", "--", "-.", ":"]
    for k, chip in enumerate(chips):
        same = [c for c in chips if c != chip and series[c].shape == series[chip].shape
                and np.allclose(series[c], series[chip], rtol=1e-6, atol=1e-9)]
        label = chip + (f" (= {', '.join(same)})" if same else "")
        kw = dict(color=CHIP_COLORS[k % len(CHIP_COLORS)], marker=MARKERS[k % len(MARKERS)],
                  markersize=max(7 - 1.5 * k, 3), linewidth=max(2.6 - 0.6 * k, 1),
                  linestyle=styles[k % len(styles)], label=label)
        ax1.plot(x, series[chip][:, 0] * 100, **kw)
        ax2.plot(x, series[chip][:, 1] * 100, **kw)
    blocks = first["block"].tolist()
    starts = [i for i in range(n) if i == 0 or blocks[i] != blocks[i - 1]]
    for ax in (ax1, ax2):
        for s in starts[1:]:
            ax.axvline(s - 0.5, color="#c8c8c8", linewidth=0.8)
        ax.grid(axis="y", color="#e6e6e6", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15 or 1)
    ymax = ax1.get_ylim()[1]
    for i, s in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        ax1.text((s + end - 1) / 2, ymax * 0.98, blocks[s], ha="center", va="top", fontsize=8,
                 color="#505050", bbox=dict(facecolor="white", edgecolor="none", pad=1, alpha=0.8))
    ax1.set_ylabel("relative L2 error (%)\nfrom the image")
    ax2.set_ylabel("relative L2 error (%)\nthis block alone")
    ax1.set_title("Per-layer error: fake-quant float tensor against the simulator's integer "
                  "tensor (dequantized), ‖fq − int‖ / ‖int‖", fontsize=10.5, loc="left")
    ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.88))
    ax2.set_xticks(x)
    ax2.set_xticklabels([f"{s} ({k})" for s, k in zip(first["tensor"], first["kind"])],
                        rotation=50, ha="right", fontsize=7.5)
    for label in ax1.get_xticklabels():
        label.set_visible(False)
    return save(fig, path, bottom)


# ----------------------------------------------------------------------------- teacher vs Arch-Net

def plot_teacher(df, path: Path, footer: list[str]) -> Path:
    """One panel per chip (own scale): the teacher's graph and the Arch-Net graph, NPU time solid
    and host time hatched, with the total and the fallback count over each bar."""
    chips = list(dict.fromkeys(df["chip"]))
    ncol = min(len(chips), 4)
    nrow = math.ceil(len(chips) / ncol)
    width = max(WIDTH, 2.8 * ncol)
    fig, bottom = new_figure(3.6 * nrow + 0.5, [], footer, width=width)
    for k, chip in enumerate(chips):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        d = df[df["chip"] == chip].set_index("graph").loc[["teacher", "arch-net"]]
        x = np.arange(2)
        ax.bar(x, d["npu_ms"], color=["#8DA0CB", COMPUTE], width=0.6, label="on the NPU")
        host = d["host_ms"].to_numpy(float)
        ax.bar(x[host > 0], host[host > 0], bottom=d["npu_ms"].to_numpy(float)[host > 0],
               color="white", edgecolor=HOST_EDGE, hatch="////", width=0.6,
               label="on the host (fallbacks)")
        top = float(d["latency_ms"].max()) or 1.0
        for xi, (_, r) in zip(x, d.iterrows()):
            fb = int(r["fallbacks"])
            ax.text(xi, r["latency_ms"] + top * 0.02,
                    f"{r['latency_ms']:.3g} ms\n{fb} fallback{'s' if fb != 1 else ''}",
                    ha="center", va="bottom", fontsize=8,
                    color=HOST_TEXT if fb else "#202020")
        ax.set_ylim(0, top * 1.3)
        ax.set_xticks(x)
        ax.set_xticklabels(["teacher\n(ONNX export)", "Arch-Net\n(model.program)"], fontsize=8.5)
        speed = d.loc["teacher", "latency_ms"] / d.loc["arch-net", "latency_ms"] \
            if d.loc["arch-net", "latency_ms"] > 0 else float("nan")
        if speed >= 1:
            verdict = f"Arch-Net {speed:.2f}x faster"
        elif speed > 0:
            verdict = f"Arch-Net {1 / speed:.2f}x slower"
        else:
            verdict = ""
        ax.set_title(f"{chip}\n{verdict}", fontsize=9.5)
        if k % ncol == 0:
            ax.set_ylabel("estimated latency (ms per image)")
        ax.grid(axis="y", color="#e6e6e6", linewidth=0.6)
        ax.set_axisbelow(True)
    handles = [Patch(color="#8DA0CB", label="teacher on the NPU"),
               Patch(color=COMPUTE, label="Arch-Net on the NPU"),
               Patch(facecolor="white", edgecolor=HOST_EDGE, hatch="////",
                     label="on the host (fallbacks)")]
    height = fig.get_figheight()
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.003, 1 - 0.3 / height),
               ncol=3, fontsize=8, frameon=False)
    fig.suptitle("The teacher's graph against the Arch-Net graph on each chip (each panel its "
                 "own scale)", fontsize=10.5, x=0.01, y=1 - 0.08 / height, ha="left", va="top")
    return save(fig, path, bottom, top=1 - 0.45 / height)


# ----------------------------------------------------------------------------- distillation history

def plot_history(df, path: Path, footer: list[str], total_share: float | None) -> Path:
    """Left: the distillation loss at the start and end of each period. Right: each period's
    seconds, the simulator's part stacked, with its share."""
    fig, bottom = new_figure(4.2, [], footer)
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    x = np.arange(len(df))
    labels = [f"{p}: +{b}" for p, b in zip(df["period"], df["new_block"])]
    ax1.plot(x, df["loss_first"], marker="o", markerfacecolor="white", color=COMPUTE,
             label="first step")
    ax1.plot(x, df["loss_last"], marker="o", color=COMPUTE, linestyle="-", alpha=0.9,
             label="last step")
    for xi, a, b in zip(x, df["loss_first"], df["loss_last"]):
        ax1.annotate("", xy=(xi, b), xytext=(xi, a),
                     arrowprops=dict(arrowstyle="->", color="#808080", lw=0.8))
    ax1.set_xticks(x)
    ax1.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax1.set_ylabel("distillation loss of the period's window")
    ax1.set_title("Loss per period (new block trained)", fontsize=10, loc="left")
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", color="#e6e6e6", linewidth=0.6)
    ax1.set_ylim(bottom=0)
    sim = df["simulator_seconds"].to_numpy(float)
    rest = np.maximum(df["seconds"].to_numpy(float) - sim, 0)
    ax2.bar(x, rest, color=COMPUTE, width=0.6, label="training (PyTorch)")
    ax2.bar(x, sim, bottom=rest, color=MEMORY, width=0.6, label="simulator in the loop")
    tops = rest + sim
    for xi, t, s in zip(x, tops, df["simulator_share"]):
        ax2.text(xi, t + (tops.max() or 1) * 0.02, f"{s:.0%}", ha="center", fontsize=8)
    ax2.set_xticks(x)
    ax2.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("seconds")
    ax2.set_ylim(0, (tops.max() or 1) * 1.2)
    share = f" (run: {total_share:.0%})" if total_share is not None else ""
    ax2.set_title("Seconds per period, share in the simulator" + share, fontsize=10, loc="left")
    ax2.legend(fontsize=8, loc="upper left")
    ax2.grid(axis="y", color="#e6e6e6", linewidth=0.6)
    return save(fig, path, bottom)


# ----------------------------------------------------------------------------- compare

def plot_compare(totals, per_op, path, title: str, footer: list[str],
                 max_ops: int = 40) -> Path:
    """Top: per chip, the total latency as one horizontal bar: compute / memory not hidden /
    overhead on the NPU, then the host time hatched. Bottom: per op, one bar per chip (host ops
    hatched, red label where any chip falls back), the ``max_ops`` slowest ops in schedule order."""
    chips = list(totals["chip"])
    ops = per_op[per_op[[f"{c} ms" for c in chips]].max(axis=1) > 0]
    omitted = 0
    if len(ops) > max_ops:
        keep = ops[[f"{c} ms" for c in chips]].max(axis=1).nlargest(max_ops).index
        omitted = len(ops) - max_ops
        ops = ops.loc[sorted(keep)]
    n = len(ops)
    notes = [f"{omitted} faster op(s) left out of the per-op panel (every op is in the CSV)"] \
        if omitted else []
    top_h = 0.42 * len(chips) + 1.2
    ops_h = max(2.5, (0.11 * max(len(chips), 2) + 0.08) * n + 1.3)
    fig, bottom = new_figure(top_h + ops_h + 0.5, notes, footer, width=WIDTH)
    height = fig.get_figheight()
    gs = fig.add_gridspec(2, 1, height_ratios=[top_h, ops_h])
    ax1 = fig.add_subplot(gs[0, 0])
    ax2 = fig.add_subplot(gs[1, 0])
    y = np.arange(len(chips))
    left = np.zeros(len(chips))
    for col, color, label in (("compute_ms", COMPUTE, "NPU compute"),
                              ("memory_exposed_ms", MEMORY, "NPU memory (not hidden)"),
                              ("overhead_ms", OVERHEAD, "NPU per-op overhead")):
        v = totals[col].to_numpy(float)
        ax1.barh(y, v, left=left, color=color, height=0.6, label=label)
        left += v
    host = totals["host_ms"].to_numpy(float)
    on = host > 0
    if on.any():
        ax1.barh(y[on], host[on], left=left[on], color="white", edgecolor=HOST_EDGE,
                 hatch="////", height=0.6, label="host (fallbacks)")
    left += host
    xmax = float(left.max()) or 1.0
    for yi, t, fb, h in zip(y, left, totals["fallbacks"], host):
        text = f"{t:.4g} ms · {int(fb)} fallback{'s' if fb != 1 else ''}"
        if h > 0:
            text += f" · host {h:.3g} ms"
        ax1.text(t + xmax * 0.01, yi, text, va="center", fontsize=8,
                 color=HOST_TEXT if fb else "#202020")
    ax1.set_yticks(y)
    ax1.set_yticklabels(chips, fontsize=9)
    ax1.set_ylim(len(chips) - 0.5, -0.5)
    ax1.set_xlim(0, xmax * 1.55)
    ax1.set_xlabel("estimated latency per inference (ms)")
    ax1.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax1.set_title("Total per chip", fontsize=10, loc="left")
    ax1.grid(axis="x", color="#e6e6e6", linewidth=0.6)
    ax1.set_axisbelow(True)
    yy0 = np.arange(n)
    h = 0.8 / len(chips)
    for k, chip in enumerate(chips):
        vals = ops[f"{chip} ms"].to_numpy(float)
        on_host = (ops[f"{chip} placement"] == "host").to_numpy()
        color = CHIP_COLORS[k % len(CHIP_COLORS)]
        yy = yy0 - 0.4 + h * (k + 0.5)
        ax2.barh(yy[~on_host], vals[~on_host], height=h, color=color, label=chip)
        if on_host.any():
            ax2.barh(yy[on_host], vals[on_host], height=h, color=color, hatch="////",
                     edgecolor=HOST_EDGE, linewidth=0.6)
    any_host = ops[[f"{c} placement" for c in chips]].eq("host").any(axis=1).to_numpy()
    ax2.set_yticks(yy0)
    labels = []
    for o, t, d in zip(ops["op"], ops["type"], ops["detail"]):
        d = "" if not isinstance(d, str) or d.startswith(("fused", "view", "ONNX")) else f" {d}"
        labels.append(f"{short_name(o, 28)} · {t}{d}")
    ax2.set_yticklabels(labels, fontsize=7.5)
    for tick, hst in zip(ax2.get_yticklabels(), any_host):
        if hst:
            tick.set_color(HOST_TEXT)
            tick.set_fontweight("bold")
    ax2.set_ylim(n - 0.5, -0.5)
    ax2.set_xlabel("estimated latency per op (ms); hatched = on the host on that chip")
    handles, _ = ax2.get_legend_handles_labels()
    if any_host.any():
        handles.append(Patch(facecolor="white", edgecolor=HOST_EDGE, hatch="////",
                             label="host fallback"))
    ax2.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0),
               frameon=False)
    ax2.set_title("Per op, chips side by side (red label: on the host on some chip)",
                  fontsize=10, loc="left")
    ax2.grid(axis="x", color="#e6e6e6", linewidth=0.6)
    ax2.set_axisbelow(True)
    fig.suptitle(title, fontsize=11, x=0.01, y=1 - 0.08 / height, ha="left", va="top")
    return save(fig, path, bottom, top=1 - 0.2 / height)


__all__ = ["plot_compare", "plot_history", "plot_layer_error", "plot_ops", "plot_pareto",
           "plot_teacher", "short_name"]
