"""Command line of the simulator: profiles, simulate, estimate, regress.

``archnet`` (archnet/cli.py) mounts these commands; ``python -m simulator`` runs them alone.
User errors print one line and exit 2; a divergence found by ``--check`` exits 1.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from simulator.argtypes import OneLineParser
from simulator.errors import InputError, SimulatorError
from simulator.jsontext import json_text
from simulator.model_files import EXAMPLE, load_inputs, load_model, save_arrays
from simulator.outputs import check_file_outputs

# ----------------------------------------------------------------------------- shapes

def _parse_shapes(items: list[str] | None) -> dict | None:
    if not items:
        return None
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
            if not name or not all(d >= 1 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise InputError(f"--input-shape {item!r}: use NAME=1x3x224x224") from None
    return shapes


# ----------------------------------------------------------------------------- commands

def cmd_profiles(args) -> int:
    from simulator.profiles import list_profiles, load_profile
    if args.action == "list":
        for name in list_profiles():
            prof = load_profile(name)
            print(f"{name:24s} {prof.description}")
        return 0
    if args.action == "show":
        if not args.target:
            raise InputError("profiles show needs a profile NAME")
        prof = load_profile(args.target)
        print(Path(prof.path).read_text())
        return 0
    if not args.target:
        raise InputError("profiles validate needs a FILE")
    prof = load_profile(args.target)
    print(f"{args.target}: valid profile {prof.name!r}")
    return 0


def _overflow_table(result, chip, program=None) -> str:
    """The accumulator table and sentence; MAC ops with 16-bit activations apart where the
    chip gives them their own accumulator (arithmetic.int16_accumulator_bits)."""
    from simulator.overflow import OverflowSummary
    arith = chip.arithmetic
    groups = {arith.accumulator: dict(result.overflow)}
    if program is not None and arith.int16_accumulator not in (None, arith.accumulator):
        wide = {}
        for node in program.nodes:
            x = program.tensors[node.inputs[0]] if node.inputs else None
            if node.name in result.overflow and x is not None and x.is_int \
                    and x.dtype.bits == 16:
                wide[node.name] = groups[arith.accumulator].pop(node.name)
        groups = {k: v for k, v in groups.items() if v}
        if wide:
            groups[arith.int16_accumulator] = wide
    lines = []
    for acc, stats in groups.items():
        summary = OverflowSummary.of(acc, stats)
        lines += [*summary.table(), summary.sentence()]
    return "\n".join(lines)


def cmd_simulate(args) -> int:
    from simulator.execute import execute, output_array
    from simulator.profiles import load_profile
    check_file_outputs({"--output": args.output, "--trace": args.trace},
                       inputs=[args.model, args.input, args.chip],
                       suffixes={"--output": (".npy", ".npz"), "--trace": (".npz",)})
    chip = load_profile(args.chip)
    program = load_model(args.model)
    if not program.executable:
        raise InputError(f"{args.model}: a float graph can be estimated but not simulated; "
                         f"give an integer (QLinear/ConvInteger) ONNX file or a Program file")
    inputs = load_inputs(args.input, program)
    name = args.model or EXAMPLE
    print(f"simulating {name} on {chip.name} ({len(program.nodes)} ops, backend {args.backend})")
    bar = _progress(len(program.nodes), "simulate")
    start = time.perf_counter()
    result = execute(program, chip, inputs, backend=args.backend, trace=bool(args.check or args.trace),
                     progress=(lambda i, n, node: bar.update(1)) if bar else None)
    if bar:
        bar.close()
    elapsed = time.perf_counter() - start
    outputs = {n: output_array(program.tensors[n], v) for n, v in result.outputs.items()}
    if args.output:
        save_arrays(args.output, outputs)
    if args.trace:
        save_arrays(args.trace, {n: output_array(program.tensors[n], v)
                                 for n, v in result.tensors.items() if program.tensors[n].data is None})
    for n, v in outputs.items():
        flat = v.ravel()
        shown = " ".join(str(x) for x in flat[:16]) + (" ..." if flat.size > 16 else "")
        print(f"output {n} {program.tensors[n].dtype} {list(v.shape)}: {shown}")
    if result.overflow:
        print(_overflow_table(result, chip, program))
    print(f"simulated in {elapsed * 1000:.1f} ms" + (f"; wrote {args.output}" if args.output else ""))
    if args.check:
        return _check(args, program, chip, inputs, result)
    return 0


def _check(args, program, chip, inputs, result) -> int:
    from simulator.compare import find_divergence
    from simulator.execute import execute
    if args.check == "reference":
        other = execute(program, chip, inputs, backend="reference", trace=True).tensors
        names = (args.backend, "reference")
    elif args.check == "litert":
        from simulator.litert_check import check_litert
        from simulator.tflite_import import is_tflite
        if not args.model or not is_tflite(args.model):
            raise InputError("--check litert needs a TFLite model file")
        return check_litert(args.model, program, chip, inputs, result)
    else:
        if not args.model or not args.model.endswith(".onnx"):
            raise InputError("--check onnxruntime needs an ONNX model file")
        from simulator.onnx_import.peers import run_onnxruntime
        other = run_onnxruntime(args.model, inputs, intermediates=True)
        names = ("simulator", "onnxruntime")
    div = find_divergence(program, result.tensors, other, chip, names)
    if div is None:
        compared = sum(1 for n in program.nodes if n.outputs[0] in other)
        print(f"bit-exact: {names[0]} and {names[1]} agree on every element of {compared} tensors")
        return 0
    print(div.format())
    return 1


def cmd_estimate(args) -> int:
    from simulator.cost import estimate, format_estimate
    from simulator.profiles import load_profile
    chip = load_profile(args.chip)
    program = load_model(args.model, _parse_shapes(args.input_shape))
    est = estimate(program, chip)
    if args.json:
        print(json_text(est.to_dict()))
    else:
        print(f"estimate of {args.model or EXAMPLE} on {chip.name}")
        print(format_estimate(est))
    return 0


def cmd_regress(args) -> int:
    from simulator import golden
    directory = Path(args.dir) if args.dir else golden.default_dir()
    if args.regenerate:
        count = golden.regenerate(directory, progress=None)
        print(f"regenerated {count} golden cases in {directory} from the reference")
        return 0
    backends = ("kernels", "reference") if args.backend == "both" else (args.backend,)
    results = golden.check(directory, backends)
    print(f"{'case':52s} {'backend':9s} {'elements':>8s}  status")
    for r in results:
        status = "ok" if r.ok else f"FAIL ({r.mismatches} differ; first {r.first})"
        print(f"{r.case:52s} {r.backend:9s} {r.elements:8d}  {status}")
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _progress(total: int, desc: str):
    if total < 50:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="op", file=sys.stderr, leave=False)


# ----------------------------------------------------------------------------- parser

def add_commands(sub) -> None:
    p = sub.add_parser("profiles", help="list, show or validate chip profiles")
    p.add_argument("action", nargs="?", choices=["list", "show", "validate"], default="list")
    p.add_argument("target", nargs="?", help="profile NAME (show) or FILE (validate)")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("simulate", help="run a Program or an integer ONNX or TFLite model "
                                        "bit-exactly on a chip")
    p.add_argument("model", nargs="?", help=".program, .onnx or .tflite file (default: the "
                                            "bundled example)")
    p.add_argument("--chip", required=True, help="profile name or TOML file")
    p.add_argument("--input", help=".npy (one input) or .npz (by name)")
    p.add_argument("--output", help=".npy or .npz for the outputs")
    p.add_argument("--trace", help=".npz to write every intermediate tensor")
    p.add_argument("--backend", choices=["kernels", "reference"], default="kernels")
    p.add_argument("--check", choices=["reference", "onnxruntime", "litert"],
                   help="run a second execution and name the first element that differs "
                        "(litert: LiteRT's reference kernels, then its optimised ones)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("estimate", help="per-op cycles and latency of a model on a chip")
    p.add_argument("model", nargs="?", help=".program, .onnx or .tflite file (default: the "
                                            "bundled example)")
    p.add_argument("--chip", required=True, help="profile name or TOML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--input-shape", action="append", metavar="NAME=1x3x224x224",
                   help="override an ONNX input shape (repeatable)")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("regress", help="check every kernel against the stored golden vectors")
    p.add_argument("--dir", help="golden folder (default: tests/golden)")
    p.add_argument("--backend", choices=["kernels", "reference", "both"], default="both")
    p.add_argument("--regenerate", action="store_true",
                   help="rewrite the goldens from the reference (deliberate: review the diff)")
    p.set_defaults(func=cmd_regress)

    from simulator.onnx_export import cli as export_cli  # after regress: the same help order
    export_cli.add_commands(sub)


def run(parser: argparse.ArgumentParser, argv=None, prog: str = "archnet") -> int:
    """Parse and run one command: a user error is one line on stderr and exit code 2."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must still print
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (one line, OneLineParser) or --help
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except SimulatorError as exc:
        return _fail(prog, str(exc))
    except OSError as exc:  # the file system refused: a read-only folder, a full disk
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return _fail(prog, f"{where}{exc.strerror or type(exc).__name__}")
    except MemoryError:
        return _fail(prog, "out of memory: give smaller inputs or batches")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _fail(prog: str, message: str) -> int:
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", message)  # terminal colours quoted from torch
    print(f"{prog}: error: {' '.join(plain.split())}", file=sys.stderr)
    return 2


def build_parser(prog: str = "simulator") -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description="bit-exact integer NPU simulator")
    add_commands(parser.add_subparsers(dest="command"))
    return parser


def main(argv=None) -> int:
    return run(build_parser("python -m simulator"), argv, prog="simulator")
