"""``archnet teacher train|eval``: train a teacher ResNet on labelled images; check a checkpoint.

torch is imported inside the command functions only, so ``archnet --help`` stays fast.
"""

from __future__ import annotations

import argparse

from archnet.teachers import ARCHS, CHECKPOINT_FORMAT, SMALL_ARCHS  # torch-free: imports torch lazily
from simulator.argtypes import float_in, int_in, positive_int, seed, threads
from simulator.jsontext import json_text


def _check_teacher_output(args) -> None:
    """``--out``: a ``.pt`` name, not the data, and not a file other than a teacher."""
    from pathlib import Path

    from archnet.errors import CheckpointError
    from archnet.torchfile import load_torch
    from simulator.errors import OutputError
    from simulator.outputs import check_file_outputs
    check_file_outputs({"--out": args.out}, inputs=[args.data], suffixes={"--out": (".pt",)})
    if Path(args.out).exists():
        try:
            kind = load_torch(args.out, "checkpoint").get("format")
        except CheckpointError:
            kind = None
        if kind != CHECKPOINT_FORMAT:
            raise OutputError(f"--out {args.out}: exists and is not a teacher checkpoint; "
                              f"choose another name")


def cmd_teacher_train(args) -> int:
    from archnet.teachers.train import TrainConfig, train_teacher
    _check_teacher_output(args)
    cfg = TrainConfig(
        dataset=args.dataset, out=args.out, data_path=args.data, arch=args.arch, width=args.width,
        stem_stride=args.stem_stride, stem_pool=args.stem_pool, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        optimizer=args.optimizer, label_smoothing=args.label_smoothing, crop_pad=args.crop_pad,
        flip=args.flip, augment=not args.no_augment, bf16=args.bf16, seed=args.seed,
        threads=args.threads, max_steps=args.max_steps, progress=args.progress)
    train_teacher(cfg, log=lambda line: print(line, flush=True))
    return 0


def cmd_teacher_eval(args) -> int:
    import torch

    from archnet.data import load_dataset
    from archnet.errors import CheckpointError
    from archnet.teachers import load_teacher
    from archnet.teachers.train import evaluate
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, meta = load_teacher(args.checkpoint)
    dataset = meta.get("dataset")
    if not isinstance(dataset, str):
        raise CheckpointError(f"{args.checkpoint}: metadata names no data set")
    test = load_dataset(dataset, args.data, "test", labels=True)
    images, labels = test.tensors
    if list(images.shape[1:]) != list(meta.get("input_shape", [])):
        raise CheckpointError(f"{args.checkpoint}: input shape {meta.get('input_shape')} does not "
                              f"match {dataset} images {list(images.shape[1:])}")
    acc = evaluate(model, images, labels)
    summary = {"checkpoint": str(args.checkpoint), "arch": meta["arch"], "dataset": dataset,
               "test_accuracy": acc, "recorded_test_accuracy": meta.get("test_accuracy"),
               "test_samples": len(images)}
    if args.json:
        print(json_text(summary))
    else:
        print(f"{args.checkpoint}: {meta['arch']} on {dataset}: test accuracy {acc:.4f} "
              f"({len(images)} images; recorded {meta.get('test_accuracy')})")
    return 0


def add_teacher_commands(sub) -> None:
    """Mount ``teacher train`` and ``teacher eval`` on an argparse sub-parser collection."""
    p = sub.add_parser("teacher", help="train or evaluate a teacher (the only command that trains on labels)")
    tsub = p.add_subparsers(dest="teacher_command", metavar="ACTION")
    p.set_defaults(func=lambda args, _p=p: (_p.print_help(), 2)[1])

    t = tsub.add_parser(
        "train", help="supervised training of a teacher: a ResNet (7x7 stem, 1x1 shortcuts, "
                      "residual adds, global average pooling), MobileNetV2 or VGG",
        description="Train a torchvision-style ResNet, or the small MobileNetV2 or VGG "
                    "(archnet.teachers.small), on labelled images and write an atomic "
                    "checkpoint with its metadata. Values not given come from the data set's "
                    "preset (archnet.teachers.train.PRESETS).")
    t.add_argument("--dataset", required=True, choices=["fashion-mnist", "digits"])
    t.add_argument("--data", metavar="PATH",
                   help="folder with the Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)")
    t.add_argument("--out", required=True, metavar="FILE", help="checkpoint to write, e.g. teacher.pt")
    t.add_argument("--arch", choices=[*ARCHS, *SMALL_ARCHS],
                   help="a ResNet, mobilenetv2 or vgg (default: the data set's preset)")
    t.add_argument("--width", type=int_in(1, 4096), help="channels of the stem and first stage "
                   "(mobilenetv2: 16, vgg: 32 unless given)")
    t.add_argument("--stem-stride", type=int, choices=[1, 2], help="stride of the ResNet's 7x7 stem conv")
    t.add_argument("--stem-pool", action=argparse.BooleanOptionalAction, default=None,
                   help="3x3 stride-2 max-pool after the stem (torchvision's)")
    t.add_argument("--epochs", type=int_in(1, 100_000))
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--lr", type=float_in(0.0, 10.0, above=True), help="peak learning rate")
    t.add_argument("--weight-decay", type=float_in(0.0, 1.0))
    t.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                   help="sgd: Nesterov + one-cycle (default); adamw: cosine")
    t.add_argument("--label-smoothing", type=float_in(0.0, 1.0, below=True), default=0.1)
    t.add_argument("--crop-pad", type=int_in(0, 64), help="random-crop shift in pixels (zero padding)")
    t.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips")
    t.add_argument("--no-augment", action="store_true", help="no crop, no flip")
    t.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast, channels-last (fast on CPUs with AMX/AVX512-BF16); "
                        "evaluation stays float32")
    t.add_argument("--seed", type=seed, default=0)
    t.add_argument("--threads", type=threads, help="torch threads (default: torch's choice)")
    t.add_argument("--max-steps", type=positive_int,
                   help="at most this many steps per epoch (smoke runs)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm progress bars (default: only on a terminal)")
    t.set_defaults(func=cmd_teacher_train)

    e = tsub.add_parser("eval", help="test accuracy of a teacher checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--data", metavar="PATH", help="folder with the Fashion-MNIST IDX files")
    e.add_argument("--threads", type=threads)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_teacher_eval)
