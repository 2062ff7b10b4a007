"""``archnet plan MODEL --chip NAME``: what the converter would build for this chip, before any
training: per teacher node the rule that fired and why, and the teacher's and the student's
estimated latency. torch is imported inside the handler only."""

from __future__ import annotations

import argparse

from archnet.bits import SUPPORTED_BITS
from archnet.cli.convert import add_form_options, stream_bits
from simulator.argtypes import int_in


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected C,H,W such as 1,28,28") from None
    if not dims or any(d < 1 or d > 65536 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: dimensions must lie in 1..65536")
    return dims


def add_commands(sub) -> None:
    p = sub.add_parser(
        "plan", help="what the converter keeps and replaces for a chip (no training)",
        description="Captures MODEL (a teacher checkpoint, path/to/file.py:factory, or a text "
                    "teacher), asks the "
                    "chip profile which of each node's forms it runs (native first), and prints "
                    "the rule that fired per node and the estimated latency of teacher and "
                    "student. Exit 2 listing every node no rule can place.")
    p.add_argument("model", help="teacher checkpoint (.pt), path/to/file.py:factory, or a text "
                                 "teacher: minilm or a folder of a BERT-style encoder")
    p.add_argument("--chip", required=True, help="chip profile name or TOML path")
    p.add_argument("--bits", default="8w8a", choices=SUPPORTED_BITS)
    p.add_argument("--recipe", default="native", choices=("native", "paper"),
                   help="native (default): keep what the chip runs; paper: the paper's op set only")
    add_form_options(p)
    p.add_argument("--allow-fallback", action="store_true",
                   help="run nodes no rule places on the host instead of failing")
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                   help="the example input of a factory that gives none")
    p.add_argument("--max-len", type=int_in(3, 4096), default=64, metavar="N",
                   help="text teachers: the positions planned for (default 64)")
    p.add_argument("--all", action="store_true", help="list every node, not just the replaced")
    p.add_argument("--json", metavar="FILE.json", help="also write the plan as JSON")
    p.set_defaults(func=cmd_plan)


def _text_model(spec: str, max_len: int):
    """A text teacher as the converter captures it: token ids and a mask of ``max_len``."""
    import torch

    from archnet.jobs.convert import TokenEncoder
    from archnet.text.teacher import load_text_teacher
    teacher = load_text_teacher(spec)
    example = (torch.zeros(1, max_len, dtype=torch.long), torch.ones(1, max_len, dtype=torch.long))
    return (TokenEncoder(teacher.model.eval()).eval(), example,
            {"source": spec, "arch": teacher.name, "max_len": max_len})


def cmd_plan(args) -> int:
    from archnet.capture import capture
    from archnet.text.teacher import is_text_teacher
    from archnet.capture.sources import load_model
    from archnet.lowering.resnet import parse_bits
    from archnet.rules import plan_conversion
    from simulator.fileio import atomic_write_bytes
    from simulator.jsontext import json_text
    from simulator.outputs import check_file_outputs
    from simulator.profiles import load_profile

    check_file_outputs({"--json": args.json}, inputs=[args.model.split(":")[0], args.chip],
                       suffixes={"--json": (".json",)})
    profile = load_profile(args.chip)
    if is_text_teacher(args.model):   # minilm or a BERT folder: ids and a mask of --max-len
        model, example, meta = _text_model(args.model, args.max_len)
    else:
        model, example, meta = load_model(args.model, args.input_shape)
    graph = capture(model, example)
    plan = plan_conversion(graph, profile, parse_bits(args.bits), args.recipe,
                           args.allow_fallback, layer_norm=args.layer_norm,
                           stream_bits=stream_bits(args.stream_bits), embedding=args.embedding)
    print(plan.describe(args.all))
    if args.json:
        atomic_write_bytes(args.json, json_text({"model": meta, **plan.to_dict()}).encode())
    return 0
