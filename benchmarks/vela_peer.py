"""Arm Vela as a peer of the Ethos-U55 and Ethos-U85 profiles; writes reports/vela_peer.{md,csv}.

    python benchmarks/vela_peer.py                        # every network on all five chips
    python benchmarks/vela_peer.py --networks mobilenet_v1 --chips ethos-u85-256   # print only
    python benchmarks/vela_peer.py --keep /tmp/vela       # keep the .tflite files and Vela's output

Each network is built in code (``archnet.teachers.imagenet``), exported to ONNX at 224x224 and
imported estimate-only, as ``benchmarks/calibrate_cost.py`` does; ``benchmarks.tflite_networks``
writes the same layers as a fully-int8 TFLite file (random weights, per-channel scales). Arm's
Vela compiler (PyPI ``ethos-u-vela``, run as ``python -m ethosu.vela``) compiles that file for
the configuration the profile says it models (its ``[provenance]``: Vela accelerator config,
``vela.ini`` system config and memory mode: Ethos_U55_High_End_Embedded / Shared_Sram for the
U55 profiles, Ethos_U85_SYS_DRAM_Mid / Sram_Only for the U85 ones) and reports its performance
estimate (Vela 5.2 compiles both with its C++ core, regor, whose summary and per-layer CSVs have
the same columns for U55 and U85); archnet imports the same file
(``simulator.model_files.load_model``) and runs ``simulator.cost.estimate`` on the same profile.
Both are estimates of one inference at batch 1: Vela's ``inference_time`` (its summary CSV;
``cycles_total / core_clock``) against archnet's ``total_latency_ms``.
tests/cost/test_vela_peer.py pins one row (ratio within 1.5x, report current).

Vela's per-layer CSV (``--verbose-performance``) and archnet's per-op costs are matched by the
TFLite tensor names (``n<index>_<op>``, one per Program node), so the report also shows where
the two differ, by class of op and for the largest single ops, with archnet's compute, memory
and overhead terms beside Vela's NPU (compute) and memory-access cycles (SRAM, and flash or DRAM:
in Sram_Only, the U85 profiles' mode, every access is SRAM).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import io
import math
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.networks import exported_program  # noqa: E402
from benchmarks.tflite_networks import op_counts, ops_by_tag, to_tflite  # noqa: E402
from simulator.cost import FORMULA, estimate  # noqa: E402
from simulator.ir import OpKind, Program  # noqa: E402
from simulator.profiles import ChipProfile, load_profile  # noqa: E402

NETWORKS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_lite0",
            "resnet18", "resnet50", "inception_v1")
CHIPS = ("ethos-u55-128", "ethos-u55-256", "ethos-u85-128", "ethos-u85-256", "ethos-u85-512")
SIZE = 224
TOLERANCE = 1.5
SEED = 0
GLOBAL_POOL = "avgpool"            # see benchmarks.tflite_networks: Vela runs it faster than MEAN
VELA_CONFIG_FILE = "Arm/vela.ini"  # Vela's bundled file, found under ethosu/config_files/
REPORT_DIR = ROOT / "reports"
COMMAND = "python benchmarks/vela_peer.py"


# ----------------------------------------------------------------------------- Vela

@dataclass(frozen=True)
class VelaTarget:
    accelerator: str      # --accelerator-config, e.g. ethos-u55-128
    system_config: str    # a [System_Config.*] section of vela.ini
    memory_mode: str      # a [Memory_Mode.*] section of vela.ini
    config_file: str = VELA_CONFIG_FILE


def vela_target(profile: ChipProfile) -> VelaTarget:
    """The Vela configuration a profile says it is modelled on, read from its provenance
    (the accelerator as Vela's Python core names it, ``accelerator_configs[Ethos_U55_128]``, or
    its C++ core regor, ``s_EthosU85Configs[Ethos_U85_256]``; ``System_Config.<name>``;
    ``Memory_Mode.<name>``)."""
    text = " ".join(profile.provenance.sources.values())
    found = {}
    for key, pattern in (("accelerator",
                          r"(?:accelerator_configs|s_EthosU\d+Configs)\[(Ethos_U\d+_\d+)\]"),
                         ("system_config", r"System_Config\.(\w+)"),
                         ("memory_mode", r"Memory_Mode\.(\w+)")):
        names = sorted(set(re.findall(pattern, text)))
        if len(names) != 1:
            raise ValueError(f"profile {profile.name}: its provenance names {len(names)} Vela "
                             f"{key} values ({names}); expected one")
        found[key] = names[0]
    return VelaTarget(found["accelerator"].lower().replace("_", "-"), found["system_config"],
                      found["memory_mode"])


def vela_available() -> bool:
    try:
        return importlib.util.find_spec("ethosu.vela") is not None
    except ModuleNotFoundError:
        return False


def vela_version() -> str:
    try:
        return importlib.metadata.version("ethos-u-vela")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class VelaResult:
    ms: float                  # summary inference_time x 1000 (batch 1)
    cycles: float              # summary cycles_total
    clock_hz: float
    npu_ops: int               # Vela's "NPU operators = n"
    cpu_ops: int               # Vela's "CPU operators = n": left to the Cortex-M, not estimated
    layers: list[dict] = field(default_factory=list)   # the per-layer CSV's rows


def run_vela(tflite: Path, target: VelaTarget, out_dir: Path) -> VelaResult:
    """Compile ``tflite`` with Vela and read its performance estimate."""
    cmd = [sys.executable, "-m", "ethosu.vela", str(tflite),
           "--accelerator-config", target.accelerator, "--system-config", target.system_config,
           "--memory-mode", target.memory_mode, "--config", target.config_file,
           "--output-dir", str(out_dir), "--verbose-performance"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"vela failed on {tflite.name} (exit {proc.returncode}): {tail}")
    stem = tflite.stem
    with open(out_dir / f"{stem}_summary_{target.system_config}.csv", newline="") as fh:
        summary = next(csv.DictReader(fh))
    with open(out_dir / f"{stem}_per-layer.csv", newline="") as fh:
        layers = list(csv.DictReader(fh))
    batch = int(float(summary["batch_size"]))
    if batch != 1:
        raise RuntimeError(f"vela estimated batch {batch} for {tflite.name}; expected 1")
    clock = float(summary["core_clock"])
    cycles = float(summary["cycles_total"])
    seconds = float(summary["inference_time"])
    if not math.isclose(seconds, cycles / clock, rel_tol=1e-6):
        raise RuntimeError(f"vela's inference_time {seconds} s is not cycles_total / core_clock "
                           f"({cycles} / {clock})")
    counts = {}
    for kind in ("CPU", "NPU"):
        m = re.search(rf"^{kind} operators = (\d+)", proc.stdout, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"vela's output for {tflite.name} has no '{kind} operators' line")
        counts[kind] = int(m.group(1))
    return VelaResult(seconds * 1e3, cycles, clock, counts["NPU"], counts["CPU"], layers)


# ----------------------------------------------------------------------------- networks

def network_program(network: str, size: int = SIZE) -> Program:
    """The float network as a user's ONNX export, imported estimate-only."""
    return exported_program(network, size)


def op_class(program: Program, node) -> str:
    """A coarse class of a Program node, for the gap tables."""
    if node.op is OpKind.CONV2D:
        c = program.tensors[node.inputs[0]].shape[1]
        _, _, kh, kw = program.tensors[node.inputs[1]].shape
        groups = node.attrs.get("groups", 1)
        if groups > 1 and groups == c:
            return "depthwise conv"
        if groups > 1:
            return "grouped conv"
        if c < 8:
            return "conv, < 8 input channels"
        return "1x1 conv" if (kh, kw) == (1, 1) else "kxk conv"
    return {OpKind.FULLY_CONNECTED: "fully connected", OpKind.ADD: "add", OpKind.MUL: "mul",
            OpKind.MAXPOOL2D: "max pool", OpKind.AVGPOOL2D: "avg pool",
            OpKind.GLOBAL_AVGPOOL2D: "global pool", OpKind.CONCAT: "concat",
            OpKind.LOOKUP_TABLE: "activation", OpKind.SOFTMAX: "softmax",
            OpKind.CLAMP: "activation"}.get(node.op, "reshape/other")


KEY = re.compile(r"^(n\d+)_")


def op_key(name: str) -> str:
    """The Program node a TFLite tensor, Vela layer or archnet op belongs to: ``n<index>``,
    or "layout" for what neither names (archnet's NHWC -> NCHW view of the graph input)."""
    m = KEY.match(name)
    return m.group(1) if m else "layout"


def _num(row: dict, column: str) -> float:
    try:
        return float(row.get(column) or 0)
    except ValueError:
        return 0.0


# Vela's "Original Operator" names -> TFLite builtin operators (others: the same name, spaced)
VELA_OPERATORS = {"conv2d": "CONV_2D", "depthwiseconv2d": "DEPTHWISE_CONV_2D",
                  "fullyconnected": "FULLY_CONNECTED", "maxpool": "MAX_POOL_2D",
                  "avgpool": "AVERAGE_POOL_2D", "sigmoid": "LOGISTIC", "concat": "CONCATENATION",
                  "hardswish": "HARD_SWISH"}


def vela_operator(original: str) -> str:
    key = original.lower().replace("_", "")
    return VELA_OPERATORS.get(key, original.upper())


def attribute_layers(program: Program, layers: list[dict],
                     emitted: dict[str, list[str]]) -> list[str]:
    """The Program node (``n<index>``) each Vela layer belongs to. Vela names a layer after the
    tensor it writes; where it fuses an op into the next one's output (a convolution and the
    HARD_SWISH after it, the convolutions that write straight into a CONCATENATION) that is the
    later node's tensor. So a layer whose original operator was not written for the node it
    names goes to the nearest producer of that node that was written with that operator and has
    no layer of its own."""
    producer = {n.outputs[0]: i for i, n in enumerate(program.nodes)}
    named = [(op_key(layer.get("Name", "")), vela_operator(layer.get("Original Operator", "")),
              _num(layer, "Op Cycles")) for layer in layers]
    own = {tag for tag, kind, _ in named if kind in emitted.get(tag, ())}
    taken: set[str] = set()
    out = []
    for tag, kind, cycles in named:
        if tag == "layout" or not cycles or kind in emitted.get(tag, ()):
            out.append(tag)
            continue
        queue, seen, found = [int(tag[1:])], set(), None
        while queue and found is None:
            node = program.nodes[queue.pop(0)]
            for name in node.inputs:
                j = producer.get(name)
                if j is None or j in seen:
                    continue
                seen.add(j)
                candidate = f"n{j:03d}"
                if kind in emitted.get(candidate, ()) and candidate not in own | taken:
                    found = candidate
                    break
                queue.append(j)
        if found is not None:
            taken.add(found)
        out.append(found or tag)
    return out


def per_op(program: Program, vela: VelaResult, est, emitted: dict[str, list[str]]) -> list[dict]:
    """One row per Program node (plus "layout"): Vela's cycles (op, NPU compute, SRAM and
    flash access) and archnet's (total, compute, memory, overhead), summed over the TFLite
    ops, Vela layers and archnet ops that belong to it."""
    rows: dict[str, dict] = {}

    def row(key: str) -> dict:
        if key not in rows:
            if key == "layout":
                cls, detail, kind = "reshape/other", "graph input NHWC -> NCHW", "layout"
            else:
                node = program.nodes[int(key[1:])]
                cls, detail, kind = op_class(program, node), "", node.op.value
            rows[key] = {"key": key, "kind": kind, "class": cls, "detail": detail,
                         "vela_cycles": 0.0, "vela_npu": 0.0, "vela_sram": 0.0,
                         "vela_flash": 0.0, "archnet_cycles": 0.0, "archnet_compute": 0.0,
                         "archnet_memory": 0.0, "archnet_overhead": 0.0, "archnet_bound": ""}
        return rows[key]

    for layer, key in zip(vela.layers, attribute_layers(program, vela.layers, emitted),
                          strict=True):
        r = row(key)
        r["vela_cycles"] += _num(layer, "Op Cycles")
        r["vela_npu"] += _num(layer, "NPU")
        r["vela_sram"] += _num(layer, "SRAM AC")
        r["vela_flash"] += _num(layer, "OffFlash AC") + _num(layer, "OnFlash AC") + \
            _num(layer, "DRAM AC")
    for op in est.ops:
        r = row(op_key(op.name))
        c = op.cost
        r["archnet_cycles"] += c.cycles
        r["archnet_compute"] += c.compute_cycles
        r["archnet_memory"] += c.memory_cycles
        r["archnet_overhead"] += c.overhead_cycles
        if c.cycles and not r["archnet_bound"]:   # the op that carries the node's cost
            r["detail"], r["archnet_bound"] = r["detail"] or op.detail, op.bound
    return sorted(rows.values(), key=lambda r: (r["key"] != "layout", r["key"]))


def compare(network: str, chip: str, work: Path, global_pool: str = GLOBAL_POOL) -> dict:
    """Vela and archnet on one network and chip; ``work`` holds the .tflite and Vela's
    output."""
    from simulator.fileio import atomic_write_bytes
    from simulator.model_files import load_model

    program = network_program(network)
    tflite = work / f"{network}_{SIZE}_int8.tflite"
    data = to_tflite(program, seed=SEED, global_pool=global_pool)
    atomic_write_bytes(tflite, data)
    profile = load_profile(chip)
    target = vela_target(profile)
    vela = run_vela(tflite, target, work / f"vela_{chip}")
    est = estimate(load_model(str(tflite)), profile)
    onnx_est = estimate(program, profile)
    host_ops = sum(op.on_host for op in est.ops)
    counts = op_counts(data)
    archnet_ms = est.total_latency_ms
    return {
        "network": network, "chip": chip, "input": f"{SIZE}x{SIZE}",
        "vela_ms": round(vela.ms, 3), "archnet_ms": round(archnet_ms, 3),
        "ratio": round(archnet_ms / vela.ms, 3),
        "vela_cycles": round(vela.cycles), "archnet_cycles": round(est.total_cycles),
        "vela_npu_ops": vela.npu_ops, "vela_cpu_ops": vela.cpu_ops,
        "archnet_host_ops": host_ops,
        "like_for_like": vela.cpu_ops == 0 and host_ops == 0,
        "archnet_onnx_ms": round(onnx_est.total_latency_ms, 3),
        "global_pool": "AVERAGE_POOL_2D" if global_pool == "avgpool" else "MEAN",
        "vela_target": f"{target.accelerator} {target.system_config} {target.memory_mode}",
        "tflite_ops": ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        "ops": per_op(program, vela, est, ops_by_tag(data)),
        "host_reasons": sorted({op.fallback_reason for op in est.ops
                                if op.on_host and op.fallback_reason}),
    }


def _print_row(r: dict, progress) -> None:
    note = "" if r["like_for_like"] else \
        (f"  NOT LIKE FOR LIKE: Vela CPU ops {r['vela_cpu_ops']}, archnet host ops "
         f"{r['archnet_host_ops']}")
    progress(f"  {r['chip']:14s} {r['global_pool']:15s} Vela {r['vela_ms']:8.3f} ms  archnet "
             f"{r['archnet_ms']:8.3f} ms  ratio {r['ratio']:.2f}  Vela NPU/CPU ops "
             f"{r['vela_npu_ops']}/{r['vela_cpu_ops']}{note}", flush=True)


def comparison_rows(networks=NETWORKS, chips=CHIPS, keep: Path | None = None,
                    global_pool: str = GLOBAL_POOL, progress=print) -> list[dict]:
    """One row per network and chip; where archnet runs a whole-map AVERAGE_POOL_2D on the host
    (its profile's avg-pool kernel limit), the network again with MEAN for the global pool,
    marked ``alternate``."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = keep if keep is not None else Path(tmp)
        for network in networks:
            progress(f"{network}: export to ONNX, import, write int8 TFLite", flush=True)
            work = base / network
            work.mkdir(parents=True, exist_ok=True)
            mine = []
            for chip in chips:
                mine.append(compare(network, chip, work, global_pool))
                mine[-1]["alternate"] = False
                _print_row(mine[-1], progress)
            pools_on_host = any(r["archnet_host_ops"] and any(
                o["class"] == "global pool" and o["archnet_bound"] == "host" for o in r["ops"])
                for r in mine)
            if global_pool == "avgpool" and pools_on_host:
                (work / "mean").mkdir(exist_ok=True)
                for chip in chips:
                    mine.append(compare(network, chip, work / "mean", "mean"))
                    mine[-1]["alternate"] = True
                    _print_row(mine[-1], progress)
            rows += mine
    return rows


# ----------------------------------------------------------------------------- the report

CSV_COLUMNS = ["network", "chip", "input", "vela_ms", "archnet_ms", "ratio", "vela_cycles",
               "archnet_cycles", "vela_npu_ops", "vela_cpu_ops", "archnet_host_ops",
               "like_for_like", "archnet_onnx_ms", "global_pool", "vela_target", "tflite_ops"]


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _ms(cycles: float, clock: float) -> str:
    return f"{cycles / clock * 1e3:.3f}"


def class_totals(rows: list[dict], chip: str) -> list[dict]:
    totals: dict[str, dict] = {}
    for r in rows:
        if r["chip"] != chip:
            continue
        for o in r["ops"]:
            t = totals.setdefault(o["class"], {"class": o["class"], "n": 0, **{
                k: 0.0 for k in ("vela_cycles", "vela_npu", "vela_sram", "vela_flash",
                                 "archnet_cycles", "archnet_compute", "archnet_memory",
                                 "archnet_overhead")}})
            t["n"] += 1
            for k in t:
                if k not in ("class", "n"):
                    t[k] += o[k]
    return sorted(totals.values(), key=lambda t: -abs(t["archnet_cycles"] - t["vela_cycles"]))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "-"


def write_reports(rows: list[dict], out_dir: Path = REPORT_DIR) -> tuple[Path, Path]:
    from simulator.fileio import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    alternates = [r for r in rows if r.get("alternate")]
    rows = [r for r in rows if not r.get("alternate")]
    chips = list(dict.fromkeys(r["chip"] for r in rows))
    clock = {chip: load_profile(chip).clock_hz for chip in chips}
    lines = ["# Arm Vela as a peer of the Ethos-U profiles", "",
             f"Generated by `{COMMAND}`; do not edit by hand. Pinned by",
             "`tests/cost/test_vela_peer.py` (one row: ratio within "
             f"{TOLERANCE}x, this report current).", "",
             "Each network is built in code (`archnet.teachers.imagenet`), exported to ONNX at "
             f"{SIZE}x{SIZE},",
             "imported estimate-only, and written as a fully-int8 TFLite file by",
             "`benchmarks/tflite_networks.py` (random weights of trained-looking spread, "
             "per-channel weight",
             "scales, int32 biases; fused ReLU/ReLU6; the global average pool as "
             f"{rows[0]['global_pool'] if rows else 'AVERAGE_POOL_2D'} over the whole map).",
             f"Arm Vela {vela_version()} (PyPI `ethos-u-vela`, its default C++ compiler core) "
             "compiles that file",
             "for the configuration the profile's provenance names (accelerator config, "
             "`vela.ini` system",
             "config and memory mode) and estimates one inference: the `inference_time` of its "
             "summary CSV",
             "(= `cycles_total` / `core_clock`, batch 1). archnet imports the same file "
             "(`simulator.model_files.load_model`)",
             "and runs `simulator.cost.estimate` on the same profile. ratio = archnet / Vela.",
             "", "The Vela configuration of each chip (accelerator config, system config, "
             "memory mode):", ""]
    for chip in chips:
        target = next(r["vela_target"] for r in rows if r["chip"] == chip)
        lines.append(f"- {chip}: {target}")
    lines += ["", f"archnet's formula: {FORMULA}", ""]
    lines += ["## Side by side", "",
              "| network | chip | Vela ms | archnet ms | ratio | Vela NPU / CPU ops | archnet host "
              "ops | like for like | archnet from the ONNX file, ms |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['chip']} | {r['vela_ms']:.3f} | "
                     f"{r['archnet_ms']:.3f} | {r['ratio']:.2f} | {r['vela_npu_ops']} / "
                     f"{r['vela_cpu_ops']} | {r['archnet_host_ops']} | "
                     f"{'yes' if r['like_for_like'] else 'no'} | {r['archnet_onnx_ms']:.3f} |")
    lines += ["", "| chip | networks | median ratio | geometric mean | lowest | highest | "
              f"within {TOLERANCE}x |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for chip in chips:
        ratios = [r["ratio"] for r in rows if r["chip"] == chip]
        within = sum(1 / TOLERANCE <= x <= TOLERANCE for x in ratios)
        lines.append(f"| {chip} | {len(ratios)} | {statistics.median(ratios):.2f} | "
                     f"{geomean(ratios):.2f} | {min(ratios):.2f} | {max(ratios):.2f} | "
                     f"{within} of {len(ratios)} |")
    unlike = [r for r in rows if not r["like_for_like"]]
    lines += [""]
    if unlike:
        lines += ["Not like for like (an op on the CPU in Vela, or on the host in archnet):", ""]
        for r in unlike:
            why = "; ".join(r["host_reasons"]) or "-"
            lines.append(f"- {r['network']} on {r['chip']}: Vela CPU ops {r['vela_cpu_ops']}, "
                         f"archnet host ops {r['archnet_host_ops']} ({why})")
    else:
        lines.append("Every op of every network runs on the NPU in both Vela and archnet.")
    if alternates:
        lines += ["", "### The global pool as MEAN", "",
                  "archnet's profiles run an avg-pool kernel of at most 8x8 (Vela's limit for a "
                  "padded",
                  "AVERAGE_POOL_2D; a VALID one may be 256x256), so a whole-map pool over a larger "
                  "map goes to",
                  "archnet's host. The same networks with MEAN for every global pool (what "
                  "TFLite's converter",
                  "writes; Vela lowers it to a depthwise convolution and a MUL):", "",
                  "| network | chip | Vela ms | archnet ms | ratio | Vela NPU / CPU ops | archnet "
                  "host ops | like for like |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in alternates:
            lines.append(f"| {r['network']} | {r['chip']} | {r['vela_ms']:.3f} | "
                         f"{r['archnet_ms']:.3f} | {r['ratio']:.2f} | {r['vela_npu_ops']} / "
                         f"{r['vela_cpu_ops']} | {r['archnet_host_ops']} | "
                         f"{'yes' if r['like_for_like'] else 'no'} |")
    lines += ["", "TFLite ops of each file:", ""]
    for r in rows:
        if r["chip"] == chips[0]:
            lines.append(f"- {r['network']}: {r['tflite_ops']}")
    lines += ["", "## Where the time goes, by class of op", "",
              "Summed over all networks. Vela: its per-layer op cycles, and within them the NPU "
              "(compute)",
              "cycles and the SRAM and flash access cycles (flash: off- and on-chip flash and "
              "DRAM; a Vela op",
              "costs about the largest of the three; in Sram_Only every access is SRAM).",
              "archnet: its op cycles = overhead + max(compute, memory), and the three terms "
              "summed.",
              "Sorted by the size of the difference (archnet - Vela).", ""]
    for chip in chips:
        c = clock[chip]
        lines += [f"### {chip}", "",
                  "| class | ops | Vela ms | archnet ms | ratio | archnet - Vela ms | Vela NPU ms "
                  "| Vela SRAM ms | Vela flash ms | archnet compute ms | archnet memory ms | "
                  "archnet overhead ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                  "| ---: |"]
        for t in class_totals(rows, chip):
            lines.append(
                f"| {t['class']} | {t['n']} | {_ms(t['vela_cycles'], c)} | "
                f"{_ms(t['archnet_cycles'], c)} | {_ratio(t['archnet_cycles'], t['vela_cycles'])}"
                f" | {_ms(t['archnet_cycles'] - t['vela_cycles'], c)} | "
                f"{_ms(t['vela_npu'], c)} | {_ms(t['vela_sram'], c)} | {_ms(t['vela_flash'], c)}"
                f" | {_ms(t['archnet_compute'], c)} | {_ms(t['archnet_memory'], c)} | "
                f"{_ms(t['archnet_overhead'], c)} |")
        lines.append("")
    lines += ["## The largest differences between single ops", "",
              "Per chip, the 12 ops whose archnet and Vela cycles differ most.", ""]
    for chip in chips:
        c = clock[chip]
        ops = [(r["network"], o) for r in rows if r["chip"] == chip for o in r["ops"]]
        ops.sort(key=lambda p: -abs(p[1]["archnet_cycles"] - p[1]["vela_cycles"]))
        lines += [f"### {chip}", "",
                  "| network | op | class | archnet detail | Vela ms | archnet ms | ratio | "
                  "Vela NPU / SRAM / flash ms | archnet compute / memory / overhead ms | "
                  "archnet bound |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for network, o in ops[:12]:
            lines.append(
                f"| {network} | {o['key']} | {o['class']} | {o['detail']} | "
                f"{_ms(o['vela_cycles'], c)} | {_ms(o['archnet_cycles'], c)} | "
                f"{_ratio(o['archnet_cycles'], o['vela_cycles'])} | "
                f"{_ms(o['vela_npu'], c)} / {_ms(o['vela_sram'], c)} / "
                f"{_ms(o['vela_flash'], c)} | {_ms(o['archnet_compute'], c)} / "
                f"{_ms(o['archnet_memory'], c)} / {_ms(o['archnet_overhead'], c)} | "
                f"{o['archnet_bound']} |")
        lines.append("")
    lines += ["## Per network, by class of op", "",
              "| network | chip | class | ops | Vela ms | archnet ms | ratio | archnet compute "
              "/ memory / overhead ms |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        c = clock[r["chip"]]
        for t in class_totals([r], r["chip"]):
            lines.append(
                f"| {r['network']} | {r['chip']} | {t['class']} | {t['n']} | "
                f"{_ms(t['vela_cycles'], c)} | {_ms(t['archnet_cycles'], c)} | "
                f"{_ratio(t['archnet_cycles'], t['vela_cycles'])} | "
                f"{_ms(t['archnet_compute'], c)} / {_ms(t['archnet_memory'], c)} / "
                f"{_ms(t['archnet_overhead'], c)} |")
    lines.append("")
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "vela_peer.csv", out_dir / "vela_peer.md"
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    atomic_write_bytes(md_path, "\n".join(lines).encode())
    return md_path, csv_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--chips", nargs="+", choices=CHIPS, default=list(CHIPS))
    parser.add_argument("--keep", type=Path, default=None,
                        help="a folder to keep the .tflite files and Vela's output in")
    args = parser.parse_args(argv)
    if not vela_available():
        print("ethos-u-vela is not installed (pip install 'ethos-u-vela>=4')", file=sys.stderr)
        return 2
    rows = comparison_rows(args.networks, args.chips, args.keep)
    for chip in args.chips:
        ratios = [r["ratio"] for r in rows if r["chip"] == chip and not r["alternate"]]
        print(f"{chip}: median ratio {statistics.median(ratios):.2f}, geometric mean "
              f"{geomean(ratios):.2f}, range {min(ratios):.2f}..{max(ratios):.2f}", flush=True)
    if set(args.networks) == set(NETWORKS) and set(args.chips) == set(CHIPS):
        md, csv_path = write_reports(rows)
        print(f"wrote {md.relative_to(ROOT)} and {csv_path.relative_to(ROOT)}")
    else:
        print("a subset of networks or chips: the report is not written")
    bad = [r for r in rows if not r["alternate"] and not 1 / TOLERANCE <= r["ratio"] <= TOLERANCE]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
