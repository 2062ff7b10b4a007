"""Supervised training of a teacher (a ResNet, MobileNetV2 or VGG): the only code in archnet
that trains on labels.

SGD with Nesterov momentum and a one-cycle learning-rate schedule (or AdamW + cosine), label
smoothing, light augmentation (random crop from a zero-padded image; horizontal flips for
Fashion-MNIST, none for digits), optional bfloat16 autocast (channels-last, CPU AMX), test
accuracy after every epoch in float32 eval mode, and an atomic checkpoint at the end.

Deterministic for a given seed, thread count and precision: parameters are initialised after
``torch.manual_seed(seed)``; shuffling and augmentation draw from their own ``torch.Generator``;
no worker processes.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from archnet.errors import TeacherError
from archnet.teachers import SMALL_ARCHS

SMALL_WIDTH = {"mobilenetv2": 16, "vgg": 32, "vit": 64}   # width where the command line gives none

# Per data set: the model and recipe used when the command line gives no value.
PRESETS: dict[str, dict] = {
    "digits": dict(arch="resnet8", width=16, stem_stride=1, stem_pool=False,
                   epochs=8, batch_size=16, lr=0.1, weight_decay=5e-4, crop_pad=2, flip=False),
    "fashion-mnist": dict(arch="resnet8", width=32, stem_stride=1, stem_pool=True,
                          epochs=15, batch_size=128, lr=0.1, weight_decay=5e-4, crop_pad=2,
                          flip=True),
}


@dataclass
class TrainConfig:
    dataset: str
    out: str
    data_path: str | None = None
    arch: str | None = None
    width: int | None = None
    stem_stride: int | None = None
    stem_pool: bool | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str = "sgd"
    label_smoothing: float = 0.1
    crop_pad: int | None = None
    flip: bool | None = None
    augment: bool = True
    bf16: bool = False
    seed: int = 0
    threads: int | None = None
    max_steps: int | None = None  # stop each epoch early after this many steps (tests, smoke runs)
    progress: bool | None = None  # None: tqdm bars only on a terminal

    def resolved(self) -> "TrainConfig":
        if self.dataset not in PRESETS:
            raise TeacherError(f"unknown data set {self.dataset!r} (known: {', '.join(PRESETS)})")
        cfg = TrainConfig(**asdict(self))
        if cfg.arch in SMALL_ARCHS and cfg.width is None:
            cfg.width = SMALL_WIDTH[cfg.arch]
        for key, value in PRESETS[self.dataset].items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if not cfg.augment:
            cfg.crop_pad, cfg.flip = 0, False
        return cfg

    def validate(self) -> None:
        checks = [
            ("--epochs", self.epochs, self.epochs >= 1, "at least 1"),
            ("--batch-size", self.batch_size, self.batch_size >= 2, "at least 2 (batch-norm)"),
            ("--lr", self.lr, self.lr > 0 and math.isfinite(self.lr), "a positive number"),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0, "zero or more"),
            ("--width", self.width, self.width >= 1, "at least 1"),
            ("--label-smoothing", self.label_smoothing, 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("--crop-pad", self.crop_pad, self.crop_pad >= 0, "zero or more"),
        ]
        if self.threads is not None:
            checks.append(("--threads", self.threads, self.threads >= 1, "at least 1"))
        if self.max_steps is not None:
            checks.append(("--max-steps", self.max_steps, self.max_steps >= 1, "at least 1"))
        for name, value, ok, want in checks:
            if not ok:
                raise TeacherError(f"{name} {value}: must be {want}")
        if self.optimizer not in ("sgd", "adamw"):
            raise TeacherError(f"--optimizer {self.optimizer!r}: sgd or adamw")
        out = Path(self.out)
        if out.is_dir():
            raise TeacherError(f"--out {out}: is a folder, give a file name such as {out / 'teacher.pt'}")
        parent = out.parent if str(out.parent) else Path(".")
        probe = parent
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise TeacherError(f"--out {out}: cannot write in {probe}")


def command_line(cfg: TrainConfig) -> str:
    """The fully explicit ``archnet teacher train`` command that reproduces ``cfg``."""
    parts = ["archnet", "teacher", "train", "--dataset", cfg.dataset]
    if cfg.data_path:
        parts += ["--data", str(cfg.data_path)]
    parts += ["--arch", cfg.arch, "--width", str(cfg.width)]
    if cfg.arch not in SMALL_ARCHS:
        parts += ["--stem-stride", str(cfg.stem_stride),
                  "--stem-pool" if cfg.stem_pool else "--no-stem-pool"]
    parts += ["--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
              "--lr", repr(cfg.lr), "--weight-decay", repr(cfg.weight_decay),
              "--optimizer", cfg.optimizer, "--label-smoothing", repr(cfg.label_smoothing),
              "--crop-pad", str(cfg.crop_pad), "--flip" if cfg.flip else "--no-flip",
              "--seed", str(cfg.seed)]
    if cfg.bf16:
        parts.append("--bf16")
    if cfg.threads is not None:
        parts += ["--threads", str(cfg.threads)]
    if cfg.max_steps is not None:
        parts += ["--max-steps", str(cfg.max_steps)]
    parts += ["--out", str(cfg.out)]
    return " ".join(parts)


def augment_batch(x, gen, crop_pad: int, flip: bool):
    """Random crop of each image from its zero-padded copy (shift by up to ``crop_pad`` pixels)
    and, when ``flip``, a horizontal flip with probability 1/2. Draws only from ``gen``."""
    import torch
    import torch.nn.functional as F
    n, c, h, w = x.shape
    if crop_pad > 0:
        padded = F.pad(x, (crop_pad, crop_pad, crop_pad, crop_pad))
        dy = torch.randint(0, 2 * crop_pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * crop_pad + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                   rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def evaluate(model, images, labels, batch_size: int = 1000) -> float:
    """Top-1 accuracy in float32 eval mode."""
    import torch
    was_training = model.training
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            pred = model(images[i:i + batch_size].contiguous()).argmax(1)
            correct += int((pred == labels[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / len(images)


def train_teacher(cfg: TrainConfig, log=print) -> dict:
    """Train, evaluate and save a teacher as ``cfg`` says; returns the checkpoint's metadata."""
    cfg = cfg.resolved()
    cfg.validate()
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from archnet.data import dataset_info, load_dataset
    from archnet.teachers import build_teacher, save_teacher

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    info = dataset_info(cfg.dataset)
    train = load_dataset(cfg.dataset, cfg.data_path, "train", labels=True)
    test = load_dataset(cfg.dataset, cfg.data_path, "test", labels=True)
    x_train, y_train = train.tensors
    x_test, y_test = test.tensors
    n = len(x_train)
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = n // batch_size  # drop the last partial batch: batch-norm wants full ones
    if cfg.max_steps is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
    total_steps = steps_per_epoch * cfg.epochs

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    kwargs = dict(in_channels=info["input_shape"][0], num_classes=info["num_classes"],
                  width=cfg.width)
    if cfg.arch in ("vgg", "vit"):
        kwargs["image_size"] = int(info["input_shape"][1])
    elif cfg.arch not in SMALL_ARCHS:
        kwargs.update(stem_stride=cfg.stem_stride, stem_pool=cfg.stem_pool)
    model = build_teacher(cfg.arch, **kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    memory_format = torch.channels_last if cfg.bf16 else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    decay = [p for name, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for name, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25,
            div_factor=10.0, final_div_factor=100.0)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)

    stem = "" if cfg.arch in SMALL_ARCHS else \
        f" stem 7x7/{cfg.stem_stride}{' + maxpool' if cfg.stem_pool else ''}"
    log(f"teacher: {cfg.arch} width {cfg.width}{stem}, {n_params:,} parameters; "
        f"{cfg.dataset} {n} train / {len(x_test)} test {tuple(info['input_shape'])}; "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps of {batch_size}; {threads} thread(s)"
        f"{', bf16 autocast' if cfg.bf16 else ''}")
    history = []
    t0 = time.perf_counter()
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        te = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", unit="step",
                   disable=None if cfg.progress is None else not cfg.progress,
                   leave=False, file=sys.stderr, dynamic_ncols=True)
        for step in bar:
            idx = perm[step * batch_size:(step + 1) * batch_size]
            xb, yb = x_train[idx], y_train[idx]
            xb = augment_batch(xb, gen, cfg.crop_pad, cfg.flip).contiguous(memory_format=memory_format)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise TeacherError(f"training diverged at epoch {epoch} step {step} (loss {loss.item()}): "
                                   f"lower --lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        acc = evaluate(model, x_test, y_test)
        rec = {"epoch": epoch, "train_loss": round(loss_sum / seen, 5),
               "train_accuracy": round(correct / seen, 5), "test_accuracy": acc,
               "seconds": round(time.perf_counter() - te, 2)}
        history.append(rec)
        log(f"epoch {epoch:>3}/{cfg.epochs}  loss {rec['train_loss']:.4f}  "
            f"train acc {rec['train_accuracy']:.4f}  test acc {acc:.4f}  {rec['seconds']:.1f} s")
    wall = time.perf_counter() - t0
    model = model.to(memory_format=torch.contiguous_format)
    test_acc = evaluate(model, x_test, y_test)

    metadata = {
        "arch": cfg.arch,
        "kwargs": kwargs,
        "dataset": cfg.dataset,
        "data_path": str(cfg.data_path) if cfg.data_path else None,
        "classes": info["classes"],
        "input_shape": info["input_shape"],
        "normalisation": info["normalisation"],
        "test_accuracy": test_acc,
        "test_samples": len(x_test),
        "train_samples": n,
        "num_parameters": n_params,
        "seed": cfg.seed,
        "command": command_line(cfg),
        "recipe": {"epochs": cfg.epochs, "batch_size": batch_size, "steps": total_steps,
                   "optimizer": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                   "schedule": "onecycle" if cfg.optimizer == "sgd" else "cosine",
                   "label_smoothing": cfg.label_smoothing, "crop_pad": cfg.crop_pad,
                   "flip": cfg.flip, "bf16_autocast": cfg.bf16},
        "history": history,
        "wall_seconds": round(wall, 2),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    path = save_teacher(cfg.out, model, metadata)
    size = path.stat().st_size
    log(f"test accuracy {test_acc:.4f} ({cfg.dataset}, {len(x_test)} images); "
        f"trained in {wall:.1f} s; wrote {path} ({size / 1e6:.2f} MB)")
    return metadata
