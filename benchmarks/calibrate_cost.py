"""Calibrate the cost model against published latencies; writes reports/calibration.{md,csv}.

    python benchmarks/calibrate_cost.py          # estimate every case, write the report
    python benchmarks/calibrate_cost.py --fit    # refit the fitted profile fields, print them

Each case is one published measurement (vendor benchmark tables, model zoos, vendor SDK docs:
see ``MEASUREMENTS``, each with its source and what it measures) of a network built in code as
its paper and torchvision define it (``archnet.teachers.imagenet``), exported to ONNX as a user
would and imported with ``simulator.onnx_import``, against ``simulator.cost.estimate`` on the
chip's profile. Cases are split: ``fit`` cases are the only ones ``--fit`` may look at (at most
two thirds of all), ``held_out`` cases test the fitted profiles. The fitted fields
(``FIT_GROUPS``) are in the profiles' TOML files with the fit named in their provenance;
everything else in a profile comes from its public sources. tests/cost pins every ratio within
1.5x and the report to the current profiles.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.networks import exported_program  # noqa: E402
from benchmarks.resnet50 import resnet50_program  # noqa: E402
from simulator.cost import FORMULA, estimate  # noqa: E402
from simulator.ir import Program  # noqa: E402
from simulator.profiles import ChipProfile, load_profile  # noqa: E402

TOLERANCE = 1.5
MAX_FIT_SHARE = 2 / 3
REPORT_DIR = ROOT / "reports"

CORAL_PAGE = ("coral.ai/docs/edgetpu/benchmarks, Table 1, column 'Desktop CPU + USB Accelerator "
              "(USB 3.0) with Edge TPU'; 'the time required to execute the model only' (C++ "
              "benchmark), input pre-processing excluded")
PYCORAL = ("google-coral/pycoral benchmarks/reference/inference_reference_x86_64.csv "
           "(08ad320, 2020-11-05): Xeon E5-1650 v3 + USB Accelerator on USB 3.0, "
           "interpreter.invoke() averaged over 200 runs, random uint8 input")
RKNN_ZOO = ("airockchip/rknn_model_zoo README v1.6.0 (eaa94d6), 'Model performance benchmark "
            "(FPS)': INT8, batch 1, maximum NPU frequency, pre- and post-processing excluded; "
            "ms = 1000 / FPS")


@dataclass(frozen=True)
class Measurement:
    chip: str
    network: str              # key of NETWORKS
    size: int                 # input height = width
    measured_ms: float
    split: str                # "fit" or "held_out"
    measures: str             # scope, batch, host, clock
    source: str
    family: str
    system_clock_hz: float | None = None   # the measured system's NPU and bus clock, if not
                                           # the profile's (the profile's rates scale with it)


MEASUREMENTS = (
    Measurement("rk3588-npu-core", "resnet50", 224, 1000 / 108.6, "fit",
                "NPU inference, one core, 108.6 FPS", RKNN_ZOO + "; resnet50-v2-7 (ONNX zoo)",
                "ResNet"),
    Measurement("rk3588-npu-core", "mobilenet_v2", 224, 1000 / 433.0, "fit",
                "NPU inference, one core, 433.0 FPS", RKNN_ZOO + "; mobilenetv2-12 (ONNX zoo)",
                "MobileNet"),
    Measurement("rk3566-npu", "resnet50", 224, 1000 / 40.6, "fit",
                "NPU inference, 40.6 FPS", RKNN_ZOO + "; resnet50-v2-7 (ONNX zoo)", "ResNet"),
    Measurement("rk3566-npu", "mobilenet_v2", 224, 1000 / 197.4, "held_out",
                "NPU inference, 197.4 FPS", RKNN_ZOO + "; mobilenetv2-12 (ONNX zoo)",
                "MobileNet"),
    Measurement("edgetpu", "mobilenet_v1", 224, 2.17, "fit",
                "invoke() incl. USB transfers, batch 1", PYCORAL +
                "; mobilenet_v1_1.0_224_quant_edgetpu.tflite", "MobileNet"),
    Measurement("edgetpu", "inception_v1", 224, 3.06, "fit",
                "invoke() incl. USB transfers, batch 1", PYCORAL +
                "; inception_v1_224_quant_edgetpu.tflite", "Inception"),
    Measurement("edgetpu", "resnet50_v1", 299, 49.0, "fit",
                "model execution incl. USB transfers and weight streaming, batch 1",
                CORAL_PAGE + "; ResNet-50 V1 (299x299)", "ResNet"),
    Measurement("edgetpu", "mobilenet_v2", 224, 2.29, "held_out",
                "invoke() incl. USB transfers, batch 1", PYCORAL +
                "; mobilenet_v2_1.0_224_quant_edgetpu.tflite", "MobileNet"),
    Measurement("edgetpu", "resnet50", 299, 50.0, "held_out",
                "model execution incl. USB transfers and weight streaming, batch 1",
                CORAL_PAGE + "; ResNet-50 V2 (299x299), priced with V1.5's convolutions",
                "ResNet"),
    Measurement("edgetpu", "resnet152", 299, 128.0, "held_out",
                "model execution incl. USB transfers and weight streaming, batch 1",
                CORAL_PAGE + "; ResNet-152 V2 (299x299), priced with V1.5's convolutions",
                "ResNet"),
    Measurement("edgetpu", "efficientnet_edgetpu_s", 224, 5.1, "fit",
                "model execution incl. USB transfers, batch 1",
                CORAL_PAGE + "; EfficientNet-EdgeTpu-S", "EfficientNet"),
    Measurement("edgetpu", "efficientnet_edgetpu_m", 240, 8.7, "held_out",
                "model execution incl. USB transfers, batch 1",
                CORAL_PAGE + "; EfficientNet-EdgeTpu-M", "EfficientNet"),
    Measurement("ethos-u55-128", "mobilenet_v2", 224, 7345741 / 500e6 * 1e3, "fit",
                "NPU active cycles (7,345,741) of one inference on the Corstone-300 FVP, whose "
                "NPU model is cycle-approximate; Shared_Sram memory mode; compared in cycles "
                "(ms at the profile's 500 MHz)",
                "ARM-software/ml-embedded-evaluation-kit docs/use_cases/img_class.md (tags 21.08 "
                "to 24.05, e.g. 23.11 c56eeda), default Ethos-U55 H128 build, "
                "ML-zoo mobilenet_v2_1.0_224_INT8.tflite compiled by Vela", "MobileNet"),
    Measurement("ethos-u55-256", "mobilenet_v2_035", 224, 1000 / 75.8, "held_out",
                "TFLite Micro inference on the Nuvoton M55M1 board, 75.8 inferences/s; "
                "camera and display excluded; system clock 220 MHz (the NPU and its AXI buses "
                "taken at that clock: the profile's clock and memory rates scaled by "
                "220/500, assumed)",
                "OpenNuvoton/ML_M55M1_SampleCode M55M1BSP-3.01.002/SampleCode/NuEdgeWise/"
                "ImageClassification/README.md (e079d25), mobilenet_v2_224_035_int8quant_"
                "vela_H256", "MobileNet", system_clock_hz=220e6),
    Measurement("ethos-u85-128", "mobilenet_v2", 224, 4738932 / 1e9 * 1e3, "held_out",
                "NPU cycles (ethosu_pmu_cycle_cntr 4,738,932) of one inference on the "
                "Corstone-320 FVP, whose NPU model is cycle-approximate; Ethos_U85_SYS_DRAM_Mid "
                "(1 GHz), Sram_Only; 64 NPU ops, 0 CPU ops; compared in cycles (ms at 1 GHz)",
                "ArmDeveloperEcosystem/arm-learning-paths content/learning-paths/embedded-and-"
                "microcontrollers/visualizing-ethos-u-performance/8-evaluate-output.md (36883f7): "
                "torchvision MobileNetV2 INT8 through ExecuTorch's aot_arm_compiler --delegate "
                "--quantize, Vela for ethos-u85-128", "MobileNet"),
)

# Fields fitted per group of profiles that share an NPU generation, and the cases each group
# may be fitted on (its chips' "fit" cases only). One value per field for the whole group.
FIT_GROUPS = {
    "rockchip": (("rk3588-npu-core", "rk3566-npu"), ("array.efficiency",
                                                     "array.op_overhead_cycles")),
    "edgetpu": (("edgetpu",), ("array.efficiency", "host.invoke_overhead_s",
                               "memory.weight_bytes_per_s")),
    # Ethos-U55 and U85 share the MAC micro-block (8-deep reduction, channels by 8): one value
    "ethos-u": (("ethos-u55-128", "ethos-u55-256", "ethos-u85-128", "ethos-u85-256",
                 "ethos-u85-512"), ("array.efficiency",)),
}


# ----------------------------------------------------------------------------- networks

NETWORKS = {
    "resnet50": lambda s: exported_program("resnet50", s),
    # Keras' original V1 (stride on the first 1x1), as the Edge TPU's ResNet-50 V1 file has it
    "resnet50_v1": lambda s: resnet50_program(s, s, stride_on_3x3=False),
    "resnet152": lambda s: exported_program("resnet152", s),
    "mobilenet_v1": lambda s: exported_program("mobilenet_v1", s),
    "mobilenet_v2": lambda s: exported_program("mobilenet_v2", s),
    "mobilenet_v2_035": lambda s: exported_program("mobilenet_v2", s, width_mult=0.35),
    "inception_v1": lambda s: exported_program("inception_v1", s),
    "efficientnet_edgetpu_s": lambda s: exported_program("efficientnet_edgetpu_s", s),
    "efficientnet_edgetpu_m": lambda s: exported_program("efficientnet_edgetpu_m", s),
}


@lru_cache(maxsize=None)
def network_program(network: str, size: int) -> Program:
    return NETWORKS[network](size)


# ----------------------------------------------------------------------------- profiles

def with_fields(profile: ChipProfile, values: dict[str, float]) -> ChipProfile:
    """``profile`` with dotted fields (``array.efficiency``) replaced."""
    for path, value in values.items():
        section, name = path.split(".")
        profile = dataclasses.replace(
            profile, **{section: dataclasses.replace(getattr(profile, section), **{name: value})})
    return profile


def at_system_clock(profile: ChipProfile, clock_hz: float | None) -> ChipProfile:
    """The chip in a system clocked at ``clock_hz``: NPU cycles and bus rates scale with it."""
    if clock_hz is None:
        return profile
    k = clock_hz / profile.clock_hz
    mem = profile.memory
    return dataclasses.replace(profile, clock_hz=clock_hz, memory=dataclasses.replace(
        mem, activation_bytes_per_s=mem.activation_bytes_per_s * k,
        weight_bytes_per_s=mem.weight_bytes_per_s * k))


def case_estimate(m: Measurement, overrides: dict[str, float] | None = None):
    profile = with_fields(load_profile(m.chip), overrides or {})
    return estimate(network_program(m.network, m.size), at_system_clock(profile,
                                                                         m.system_clock_hz))


def fitted_values(group: str) -> dict[str, float]:
    chips, fields = FIT_GROUPS[group]
    profile = load_profile(chips[0])
    out = {}
    for path in fields:
        section, name = path.split(".")
        out[path] = getattr(getattr(profile, section), name)
    return out


# ----------------------------------------------------------------------------- the fit

def fit_group(group: str) -> tuple[dict[str, float], float]:
    """Values of the group's fields that minimise the mean squared log(estimate / measured)
    over its fit cases (least squares in log space: a unique optimum, so refitting from the
    profile's values returns them; Nelder-Mead on log-values), and the worst |log ratio|."""
    from scipy.optimize import minimize

    chips, fields = FIT_GROUPS[group]
    cases = [m for m in MEASUREMENTS if m.chip in chips and m.split == "fit"]
    start = fitted_values(group)
    x0 = [math.log(max(start[f], 1e-9)) for f in fields]

    def errors(x):
        values = {f: math.exp(v) for f, v in zip(fields, x)}
        return [math.log(case_estimate(m, values).total_latency_ms / m.measured_ms)
                for m in cases]

    def loss(x):
        if "array.efficiency" in fields and x[fields.index("array.efficiency")] > 0:
            return 1e3  # an efficiency above 1 is no array
        return sum(e * e for e in errors(x)) / len(cases)

    result = minimize(loss, x0, method="Nelder-Mead",
                      options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 800})
    return ({f: math.exp(v) for f, v in zip(fields, result.x)},
            max(abs(e) for e in errors(result.x)))


# ----------------------------------------------------------------------------- the report

def calibration_rows() -> list[dict]:
    rows = []
    for m in MEASUREMENTS:
        est = case_estimate(m)
        total = est.total
        rows.append({
            "chip": m.chip, "network": m.network, "family": m.family, "input": f"{m.size}x{m.size}",
            "split": m.split, "estimate_ms": round(est.total_latency_ms, 3),
            "measured_ms": round(m.measured_ms, 3),
            "ratio": round(est.total_latency_ms / m.measured_ms, 3), "measures": m.measures,
            "source": m.source, "macs": total.macs,
            "compute_ms": total.compute_cycles / est.clock_hz * 1e3,
            "memory_ms": total.memory_cycles / est.clock_hz * 1e3,
            "overhead_ms": total.overhead_cycles / est.clock_hz * 1e3,
            "weight_mb": total.weight_bytes / 1e6, "activation_mb": total.activation_bytes / 1e6,
            "host_ops": sum(op.on_host for op in est.ops),
        })
    return rows


CSV_COLUMNS = ["chip", "network", "family", "input", "split", "estimate_ms", "measured_ms",
               "ratio", "measures", "source"]


def _table(rows: list[dict]) -> list[str]:
    lines = ["| chip | network | input | estimate ms | measured ms | ratio | what was measured "
             "| source |", "| --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['chip']} | {r['network']} | {r['input']} | {r['estimate_ms']:.2f} | "
                     f"{r['measured_ms']:.2f} | {r['ratio']:.2f} | {r['measures']} | "
                     f"{r['source']} |")
    return lines


def write_reports(rows: list[dict], out_dir: Path = REPORT_DIR) -> tuple[Path, Path]:
    from simulator.fileio import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    fit = [r for r in rows if r["split"] == "fit"]
    held = [r for r in rows if r["split"] == "held_out"]

    def spread(rs):
        return max(max(r["ratio"], 1 / r["ratio"]) for r in rs)

    lines = ["# Cost model calibration", "",
             "Generated by `python benchmarks/calibrate_cost.py`; do not edit by hand. Every",
             f"estimate, fitted or held out, must lie within a factor {TOLERANCE} of its "
             "measurement",
             "(pinned by `tests/cost/test_cost_calibration.py`). Networks are built in code",
             "(`archnet.teachers.imagenet`), exported to ONNX and imported as a user's would be.",
             "", f"Formula: {FORMULA}", "",
             f"{len(rows)} measurements on {len({r['chip'] for r in rows})} chips, "
             f"{len({r['family'] for r in rows})} network families "
             f"({', '.join(sorted({r['family'] for r in rows}))}); {len(fit)} used to fit, "
             f"{len(held)} held out. No Transformer latency is published for these chips in "
             "INT8 (the RKNN zoo's CLIP image encoder is FP16 only).", "",
             f"## Fitted ({len(fit)}; worst ratio {spread(fit):.2f}x)", ""] + _table(fit) + \
            ["", f"## Held out ({len(held)}; worst ratio {spread(held):.2f}x)", "",
             "Never seen by the fit: how far the model carries to other networks and chips.",
             ""] + _table(held)
    lines += ["", "## Fitted profile fields", "",
              "`python benchmarks/calibrate_cost.py --fit` fits each group's fields on its fit "
              "cases only (least squares of the log ratios); the values below are in the "
              "profiles.", "",
              "| group | profiles | field | value |", "| --- | --- | --- | ---: |"]
    for group, (chips, fields) in FIT_GROUPS.items():
        for path, value in fitted_values(group).items():
            lines.append(f"| {group} | {', '.join(chips)} | `{path}` | {value:.4g} |")
    lines += ["", "## Where the time goes", "",
              "Sums over ops of each term (an op costs overhead + max(compute, memory), so compute",
              "and memory overlap and do not add up to the estimate).", "",
              "| chip | network | input | GMACs | compute ms | memory ms | overhead ms | weights MB "
              "over the interface | activations MB | host ops |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['chip']} | {r['network']} | {r['input']} | {r['macs'] / 1e9:.2f} | "
                     f"{r['compute_ms']:.2f} | {r['memory_ms']:.2f} | {r['overhead_ms']:.2f} | "
                     f"{r['weight_mb']:.1f} | {r['activation_mb']:.1f} | {r['host_ops']} |")
    lines.append("")
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "calibration.csv", out_dir / "calibration.md"
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    atomic_write_bytes(md_path, "\n".join(lines).encode())
    return md_path, csv_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true",
                        help="refit each group's fields on its fit cases and print the values")
    args = parser.parse_args()
    if args.fit:
        for group in FIT_GROUPS:
            values, worst = fit_group(group)
            shown = ", ".join(f"{k} = {v:.4g}" for k, v in values.items())
            print(f"{group}: {shown} (worst fit ratio {math.exp(worst):.3f}x)", flush=True)
        return 0
    rows = calibration_rows()
    for r in rows:
        print(f"{r['split']:8s} {r['chip']:16s} {r['network']:24s} {r['input']:8s} estimate "
              f"{r['estimate_ms']:8.2f} ms  measured {r['measured_ms']:7.2f} ms  "
              f"ratio {r['ratio']:.2f}", flush=True)
    md, csv_path = write_reports(rows)
    print(f"wrote {md.relative_to(ROOT)} and {csv_path.relative_to(ROOT)}")
    bad = [r for r in rows if not 1 / TOLERANCE <= r["ratio"] <= TOLERANCE]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
