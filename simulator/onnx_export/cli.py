"""``export-onnx PROGRAM --out FILE.onnx [--form ...] [--opset N]``: a Program as ONNX.

``add_commands(sub)`` mounts the command on an argparse subparsers object (``archnet`` and
``python -m simulator`` style); user errors are SimulatorErrors, printed as one line, exit 2.
"""

from __future__ import annotations

from pathlib import Path

from simulator.errors import InputError
from simulator.onnx_export import FORMS


def cmd_export_onnx(args) -> int:
    from simulator.cli import load_model
    from simulator.onnx_export import choose_form, export_onnx

    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"{args.out}: the output must end in .onnx")
    if out.is_dir():
        raise InputError(f"{args.out}: is a directory")
    program = load_model(args.program)
    form = choose_form(program) if args.form == "auto" and program.executable else args.form
    path = export_onnx(program, out, form=form, opset=args.opset)
    ops = len(program.nodes)
    print(f"wrote {path} (form {form}, {ops} Program ops, {path.stat().st_size} bytes)")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "export-onnx", help="write a Program as ONNX: 8-bit QLinear (bit-exact on onnxruntime, "
                            "imports back to the same Program), INT4 QDQ or QONNX below 8 bits")
    p.add_argument("program", help=".program file (or an integer .onnx file)")
    p.add_argument("--out", required=True, help="the .onnx file to write (atomically)")
    p.add_argument("--form", choices=FORMS, default="auto",
                   help="auto: qlinear at 8 bits, int4 with <= 4-bit tensors, qonnx otherwise")
    p.add_argument("--opset", type=int, help="default opset: 21 (qlinear, qdq, int4), 13 (qonnx)")
    p.set_defaults(func=cmd_export_onnx)
