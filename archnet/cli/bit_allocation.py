"""``archnet latency-table MODEL --chip NAME``: per-block latency of a model's student at each width.

MODEL is a teacher checkpoint (``archnet-teacher``) or a student checkpoint; for a student the
table is made from its teacher (``metadata['teacher']``, a path taken as given or relative to the
student file) at the student's input shape, the student's own bits are marked with ``*``, and a
column gives the student's own latency per block as it is.

torch is imported inside the command function only, so ``archnet --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

from simulator.jsontext import json_text

TEACHER_FORMAT = "archnet-teacher"
STUDENT_FORMAT = "archnet-student-checkpoint"


def _format_of(path: Path) -> str | None:
    """The ``format`` field of an archnet checkpoint (read safely, its content hash verified)."""
    from archnet.torchfile import load_torch
    return load_torch(path, "checkpoint").get("format")


def load_model(path: str):
    """``(teacher, input_shape, student or None, student bits or None, recipe or None)`` for a
    teacher or a student checkpoint (the recipe the student was converted with; for a teacher,
    the one ``archnet convert`` would use); anything else is a one-line ``CheckpointError``."""
    from archnet.errors import CheckpointError
    from archnet.student_io import load_student
    from archnet.teachers import load_recorded_teacher, load_teacher
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path}: no such model file (give a teacher or student checkpoint)")
    kind = _format_of(p)
    if kind == TEACHER_FORMAT:
        teacher, meta = load_teacher(p)
        shape = meta.get("input_shape")
        if not isinstance(shape, list) or len(shape) != 3:
            raise CheckpointError(f"{path}: teacher metadata has no input_shape [C, H, W]")
        return teacher, shape, None, None, "native"
    if kind == STUDENT_FORMAT:
        student, meta = load_student(p)
        teacher, _, _, _ = load_recorded_teacher(meta, p)
        bits = [row["bits"] for row in student.summary()]
        return teacher, list(student.input_shape), student, bits, meta.get("recipe")
    raise CheckpointError(f"{path}: neither a teacher nor a student checkpoint (format {kind!r})")


def cmd_latency_table(args) -> int:
    from archnet.bit_allocation import (block_costs, format_latency_table, latency_table,
                                        latency_table_dict, order_options)
    from simulator.cost import estimate
    from simulator.fileio import atomic_write_bytes
    from simulator.outputs import check_file_outputs
    from simulator.profiles import load_profile

    check_file_outputs({"--csv": args.csv}, inputs=[args.model, args.chip],
                       suffixes={"--csv": (".csv",)})
    profile = load_profile(args.chip)
    options = order_options(args.options) if args.options else None
    teacher, shape, student, bits, recorded = load_model(args.model)
    recipe = args.recipe or recorded or "resnet"
    students = None
    if recipe != "resnet":          # the chip-driven converter's blocks
        import torch

        from archnet.bit_allocation import GraphStudents
        from archnet.capture import capture
        students = GraphStudents(capture(teacher, (torch.zeros(1, *shape),)), profile, recipe)
    df = latency_table(teacher, profile, shape, options, students=students)
    if student is not None:  # the student as it is, attributed per block
        est = estimate(student.export(), profile)
        rows = block_costs(est, student.block_names)
        df.insert(0, "model ms", [est.total_latency_ms if b == "total" else
                                  rows.get(b, {}).get("ms", 0.0) for b in df.index])
        df.insert(1, "model fallbacks", [len(est.fallbacks) if b == "total" else
                                         rows.get(b, {}).get("fallbacks", 0) for b in df.index])
    if args.csv:
        atomic_write_bytes(args.csv, df.to_csv(float_format="%.9g").encode(errors="backslashreplace"))
    if args.json:
        print(json_text(latency_table_dict(df, marks=bits)))
    else:
        print(format_latency_table(df, marks=bits))
        if args.csv:
            print(f"wrote {args.csv}")
    return 0


def _bit_options(text: str) -> str:
    """``--options``: widths from the supported set, separated by commas."""
    import argparse

    from archnet.bits import SUPPORTED_BITS
    items = [t.strip() for t in text.split(",")]
    bad = [t for t in items if t not in SUPPORTED_BITS]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, bad or [text]))}: choose from "
                                         f"{', '.join(SUPPORTED_BITS)}")
    return text


def add_commands(sub) -> None:
    """Mount ``latency-table`` on an argparse sub-parser collection."""
    p = sub.add_parser(
        "latency-table",
        help="per-block latency of a model's student on a chip at each bit width",
        description="Convert the teacher (of a teacher or student checkpoint) with every block at "
                    "each bit option, estimate it on the chip, and print each block's latency "
                    "(ms per image; the rows add up to the total) and fallback count. For a "
                    "student checkpoint, its own bits are marked '*' and its own latency is a "
                    "column.")
    p.add_argument("model", metavar="MODEL", help="teacher or student checkpoint (.pt)")
    p.add_argument("--chip", required=True, metavar="NAME",
                   help="chip profile name (chip_profiles/NAME.toml) or a profile file")
    p.add_argument("--options", metavar="LIST", type=_bit_options,
                   help="comma-separated bit options, e.g. 2w4a,4w4a,8w8a (default: those of "
                        "2w4a,4w4a,8w8a the chip runs)")
    p.add_argument("--recipe", choices=("resnet", "native", "paper"),
                   help="whose students: the hand-written ResNet lowering, or the chip-driven "
                        "converter's (default: the student's own recipe; native for a teacher)")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV (atomically)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=cmd_latency_table)


__all__ = ["add_commands", "cmd_latency_table", "load_model"]
