"""``export-onnx PROGRAM --out FILE.onnx [--form ...] [--opset N] [--chip NAME]``: a Program as
ONNX; ``--chip`` names the profile whose arithmetic the ``qlinear`` graph reproduces.

``add_commands(sub)`` mounts the command on an argparse subparsers object (``archnet`` and
``python -m simulator`` style); user errors are SimulatorErrors, printed as one line, exit 2.
"""

from __future__ import annotations

from pathlib import Path

from simulator.argtypes import int_in
from simulator.onnx_export import DEFAULT_PROFILE, FORMS
from simulator.outputs import check_file_outputs


def cmd_export_onnx(args) -> int:
    from simulator.model_files import load_model
    from simulator.onnx_export import choose_form, export_onnx

    check_file_outputs({"--out": args.out}, inputs=[args.program], suffixes={"--out": (".onnx",)})
    out = Path(args.out)
    program = load_model(args.program)
    form = choose_form(program) if args.form == "auto" and program.executable else args.form
    path = export_onnx(program, out, form=form, opset=args.opset, profile=args.chip)
    ops = len(program.nodes)
    print(f"wrote {path} (form {form}, {ops} Program ops, {path.stat().st_size} bytes)")
    return 0


def _opset(text: str) -> int:
    """``--opset``: an opset the installed onnx package defines."""
    import onnx
    return int_in(1, onnx.defs.onnx_opset_version())(text)


def add_commands(sub) -> None:
    p = sub.add_parser(
        "export-onnx", help="write a Program as ONNX: 8-bit QLinear (bit-exact on onnxruntime, "
                            "imports back to the same Program), INT4 QDQ or QONNX below 8 bits")
    p.add_argument("program", help=".program file (or an integer .onnx file)")
    p.add_argument("--out", required=True, help="the .onnx file to write (atomically)")
    p.add_argument("--form", choices=FORMS, default="auto",
                   help="auto: qlinear at 8 bits, int4 with <= 4-bit tensors, qonnx otherwise")
    p.add_argument("--opset", type=_opset,
                   help="default opset: 21 (qlinear, qdq, int4), 13 (qonnx)")
    p.add_argument("--chip", default=DEFAULT_PROFILE, metavar="NAME",
                   help="profile name or TOML file whose integers the qlinear graph gives on "
                        f"onnxruntime, for every input (default {DEFAULT_PROFILE})")
    p.set_defaults(func=cmd_export_onnx)
