"""``archnet convert``: the command line of ``archnet.convert`` (torch imported in the handler)."""

from __future__ import annotations

import argparse


def cmd_convert(args) -> int:
    from archnet.convert import ConvertOptions, command_line, convert
    from archnet.distill.loop import DistillConfig
    opts = ConvertOptions(
        teacher=args.teacher, chip=args.chip, out=args.out, bits=args.bits,
        latency_budget_ms=args.latency_budget, dataset=args.dataset, data_path=args.data,
        max_images=args.max_images, calibration_images=args.calibration_images,
        keep_global_pool=args.keep_global_pool, resume=args.resume, threads=args.threads,
        command=command_line())
    cfg = DistillConfig(
        epochs_per_period=args.epochs_per_period, steps_per_period=args.steps_per_period,
        batch_size=args.batch_size, lr=args.lr, window=args.window, restarts=args.restarts,
        mixup_fraction=args.mixup, cosine_weight=args.cosine_weight,
        attention=not args.no_attention, simulator_in_loop=not args.no_simulator_in_loop,
        seed=args.seed, progress=args.progress)
    from archnet import distributed
    try:
        convert(opts, cfg, log=lambda line: print(line, flush=True) if distributed.is_main() else None)
    finally:
        distributed.shutdown()
    return 0


def add_commands(sub) -> None:
    c = sub.add_parser(
        "convert", help="teacher -> Arch-Net for a chip, by label-free blockwise distillation "
                        "with the simulator in the loop",
        description="Lower a ResNet teacher to a student made only of the chip's ops, quantize it "
                    "(one width or per-block widths under --latency-budget), distil it block by "
                    "block from unlabeled images with the simulator in the loop, and write "
                    "OUT/student.pt, OUT/model.program and OUT/convert.json. Labels are never read.")
    c.add_argument("teacher", help="teacher checkpoint (archnet teacher train)")
    c.add_argument("--chip", required=True, help="chip profile name or TOML file")
    c.add_argument("--out", required=True, metavar="DIR", help="run folder to write")
    c.add_argument("--bits", default="4w4a", help="weight/activation bits of every block: 2w4a, "
                   "4w4a, 8w8a (default 4w4a); ignored with --latency-budget")
    c.add_argument("--latency-budget", type=float, metavar="MS",
                   help="choose bits per block so the estimated latency fits MS milliseconds")
    c.add_argument("--dataset", help="data set of the unlabeled images (default: the teacher's)")
    c.add_argument("--data", metavar="PATH", help="folder of the data set's files (Fashion-MNIST "
                   "IDX), or a .npy of images (N, C, H, W)")
    c.add_argument("--max-images", type=int, help="use the first N training images")
    c.add_argument("--calibration-images", type=int, default=512)
    c.add_argument("--keep-global-pool", action="store_true",
                   help="keep global average pooling where the chip runs it")
    c.add_argument("--resume", action="store_true",
                   help="continue after the last complete period in OUT/checkpoints")
    c.add_argument("--epochs-per-period", type=float, default=1.0)
    c.add_argument("--steps-per-period", type=int, help="overrides --epochs-per-period")
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate")
    c.add_argument("--window", type=int, default=2,
                   help="blocks trained per period; older ones run on the simulator (default 2)")
    c.add_argument("--restarts", type=int, default=1, help="cosine cycles per period")
    c.add_argument("--mixup", type=float, default=0.25, help="fraction of mixup batches")
    c.add_argument("--cosine-weight", type=float, default=1.0, help="logit cosine loss weight")
    c.add_argument("--no-attention", action="store_true", help="plain MSE, no teacher attention")
    c.add_argument("--no-simulator-in-loop", action="store_true",
                   help="ablation: train later blocks on fake-quant outputs instead")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, help="torch threads")
    c.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: only on a terminal)")
    c.set_defaults(func=cmd_convert)
