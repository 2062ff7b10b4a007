"""Label-free blockwise distillation with the simulator in the loop (Arch-Net, progressive).

One *period* per student block. Period ``k`` trains a window of blocks ``first..k``
(``first = max(0, k - window + 1)``) against the teacher's features at their taps: MSE (plus the
teacher-attention weighted MSE) through training-only feature adapters, per-block weights
decaying by 0.8 towards older blocks (the paper's schedule); the head's period adds a cosine loss
on the logits. Blocks before the window are frozen: they are exported and run on the chip
profile's **simulator**, and the window trains on the simulator's integer outputs times their
step, so the blocks downstream learn what the integer hardware computes. The frozen prefix's
integers are kept from one period to the next, so each period runs only its newly frozen block
on the simulator (``FrozenPrefix``). With ``window`` equal to the number of blocks every period
trains from the image (the paper's pure progressive form; the simulator then only verifies);
``window=1`` is strictly blockwise. With ``final_steps`` a last period trains the last
``final_window`` blocks together on the head's loss alone (for a sentence encoder: the pooled
sentence embedding), without adapters: the output must be the teacher's as it is. Within a
run, the teacher's targets are kept per input where they fit (``KeptTargets``).

``chip_forward`` ("final" or "all") runs those periods' forward on the chip's integers: after
each block of the window, its fake-quant output is replaced, in value only, by archnet's integer
emulation of the block (equal to the simulator element for element, as every conversion checks),
while gradients flow through fake-quant (a straight-through estimator). The loss is then the loss
the chip's outputs have; where fake-quant and the integers part (requantize rounding, lookup
tables, the integer softmax), training follows the integers. It costs one integer forward of the
window per step.

No labels exist here: the data is an ``UnlabeledImages``. A fraction of batches is mixup of
two images (the period's batches and mixes are drawn up front, so that the simulator runs the
prefix on the mixed pixels ahead of the steps, in bulk: ``MixedPrefix``). Adam, with a
cosine schedule restarting ``restarts`` times per period (and at every period).

After each period a checkpoint (student, adapters, history) is written atomically to
``<run_dir>/checkpoints/period_NN.pt``. ``resume=True`` continues after the last complete one;
because every period derives its random stream from ``(seed, period)`` alone and starts from
the checkpointed state alone, a resumed run trains exactly the weights an uninterrupted run does.
Before the final period has run, a resumed run may change that period's own settings
(``final_steps``, ``final_window``, ``chip_forward`` between "none" and "final"): it then trains
what an uninterrupted run with the new settings does.
A loss that is not finite stops the run with ``DistillError`` and leaves the last good
checkpoint in place. Under ``torchrun`` the window is wrapped in DistributedDataParallel, each
rank takes its slice of every batch, the simulator's work is sharded, and only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from archnet import distributed as dist
from archnet.distill.adapters import adapt, build_adapters
from archnet.distill.checkpoint import load_checkpoint, save_atomic
from archnet.distill.hardware import FrozenPrefix, MixedPrefix
from archnet.distill.inputs import as_inputs
from archnet.distill.losses import block_weights, mixup_draw
from archnet.distill.taps import KeptTargets, TeacherTaps
from archnet.errors import ConversionError, DistillError
from archnet.quant.modules import QEmbedding
from archnet.quant.qtensor import QTensor
from archnet.student import ArchNetStudent
from archnet.student_io import student_from_payload, student_payload
from simulator.profiles import ChipProfile, load_profile

CHECKPOINT_FORMAT = "archnet-distill-checkpoint"
CHECKPOINT_VERSION = 1
_PERIOD_FILE = re.compile(r"period_(\d+)\.pt")


CHIP_FORWARD = ("none", "final", "all")


@dataclass
class DistillConfig:
    epochs_per_period: float = 1.0      # passes over the unlabeled set per period
    steps_per_period: int | None = None  # overrides epochs_per_period
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.0
    restarts: int = 1                   # cosine cycles per period
    window: int = 2                     # blocks trained per period (the newest and older ones)
    decay: float = 0.8                  # weight of each older block's loss relative to the next
    mixup_fraction: float = 0.25
    mixup_alpha: float = 0.4
    cosine_weight: float = 1.0          # weight of the logit cosine loss in the head's period
    attention: bool = True
    simulator_in_loop: bool = True      # False: train on fake-quant prefix outputs (ablation)
    sim_batch: int = 256
    backend: str = "kernels"
    seed: int = 0
    progress: bool | None = None        # tqdm bars (None: only on a terminal)
    final_steps: int = 0                # a last period on the head's loss alone (0: none)
    final_window: int | None = None     # blocks it trains (default: all but the first)
    chip_forward: str = "none"          # "final"/"all": forward on the chip's integers (STE)

    def check(self) -> "DistillConfig":
        bad = []
        if self.steps_per_period is None and not self.epochs_per_period > 0:
            bad.append(f"epochs_per_period {self.epochs_per_period} must be > 0")
        if self.steps_per_period is not None and self.steps_per_period < 1:
            bad.append(f"steps_per_period {self.steps_per_period} must be >= 1")
        if self.batch_size < 1 or self.batch_size % dist.world_size():
            bad.append(f"batch_size {self.batch_size} must be a positive multiple of the "
                       f"{dist.world_size()} processes")
        if not self.lr > 0:
            bad.append(f"lr {self.lr} must be > 0")
        if self.window < 1:
            bad.append(f"window {self.window} must be >= 1")
        if not 0 <= self.mixup_fraction <= 1:
            bad.append(f"mixup_fraction {self.mixup_fraction} outside [0, 1]")
        if self.restarts < 1:
            bad.append(f"restarts {self.restarts} must be >= 1")
        if self.final_steps < 0:
            bad.append(f"final_steps {self.final_steps} must be >= 0")
        if self.final_window is not None and self.final_window < 1:
            bad.append(f"final_window {self.final_window} must be >= 1")
        if self.chip_forward not in CHIP_FORWARD:
            bad.append(f"chip_forward {self.chip_forward!r} must be one of {', '.join(CHIP_FORWARD)}")
        elif self.chip_forward != "none" and not self.simulator_in_loop:
            bad.append("chip_forward needs the simulator in the loop (the frozen prefix's "
                       "integers are the window's input)")
        if bad:
            raise DistillError("distillation settings: " + "; ".join(bad))
        return self


@dataclass
class DistillResult:
    student: ArchNetStudent
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    simulator_seconds: float = 0.0
    resumed_from: int | None = None

    @property
    def simulator_share(self) -> float:
        return self.simulator_seconds / self.seconds if self.seconds > 0 else 0.0


def period_seed(seed: int, period: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * (period + 1)) % (2 ** 62)


def checkpoint_path(run_dir: Path, period: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"period_{period:02d}.pt"


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = Path(run_dir) / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in folder.glob("period_*.pt")
                   if (m := _PERIOD_FILE.fullmatch(p.name)))
    return found[-1][1] if found else None


class _PeriodNet(nn.Module):
    """The trainable window of one period and its loss; what DDP wraps."""

    def __init__(self, student: ArchNetStudent, adapters: nn.ModuleDict, first: int, last: int,
                 cfg: DistillConfig, data, final: bool = False, arith=None):
        super().__init__()
        self.student, self.adapters, self.data = student, adapters, data
        self.first, self.last, self.cfg = first, last, cfg
        self.arith = arith      # the chip's arithmetic: forward on its integers (None: fake-quant)
        self.head = len(student.blocks) - 1
        weights = block_weights(last, first, cfg.decay)
        if final:       # the last period: the head's loss alone (what the user measures)
            weights = torch.zeros_like(weights)
            weights[-1] = 1.0
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, images: torch.Tensor, x_in: torch.Tensor | None,
                targets: list[torch.Tensor], side: dict | None = None,
                q_in: QTensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x_in``/``q_in``: the frozen prefix's output as floats / as the chip's integers
        (``q_in`` only when the forward runs on the chip's integers)."""
        if self.first == 0:
            x = self.student.input(images)
        else:   # the simulator's integers come NCHW: once here, not in every conv reading them
            x = x_in.contiguous(memory_format=torch.channels_last) if x_in.dim() == 4 else x_in
        q = None
        if self.arith is not None:
            with torch.no_grad():
                q = self.student.input.integer_forward(images) if self.first == 0 else q_in
        total, parts = 0.0, []
        for j, i in enumerate(range(self.first, self.last + 1)):
            block = self.student.blocks[i]
            x = block(x, side=side)
            if q is not None:   # the chip's values forward, fake-quant's gradients backward
                with torch.no_grad():
                    q = block.integer_forward(q, self.arith, side)
                x = x + (q.dequantize().to(x.dtype) - x).detach()
            if self.weights[j] == 0:
                parts.append(torch.zeros(()))
                continue
            loss = self.data.block_loss(adapt(self.adapters, block.name, x), targets[i], side,
                                        i == self.head, self.cfg)
            parts.append(loss.detach())
            total = total + self.weights[j] * loss
        return total, parts


def _trainable(student: ArchNetStudent, adapters: nn.ModuleDict, first: int, last: int) -> list:
    """Freeze everything, then open the window: its layers (weights, bias, batch-norm affine,
    weight steps; not the structural layers, whose 0/1 kernels are exact by construction), its
    adapters, and the activation grids only the window writes (a grid a frozen block writes is
    frozen with it: the simulator's cached outputs live on it)."""
    for p in list(student.parameters()) + list(adapters.parameters()):
        p.requires_grad_(False)
    frozen_grids = {s["quant"] for b in student.blocks[:first] for s in b.spec["steps"] if "quant" in s}
    fixed = {k for k, spec in student.config["quantizers"].items() if spec.get("step") is not None}
    params: list[nn.Parameter] = []
    grids: set[str] = set()
    for block in student.blocks[first:last + 1]:
        structural = {s["name"] for s in block.spec["steps"] if s.get("role") == "structural"}
        for name, m in block.mac_layers().items():
            if name in structural:
                continue
            params += [m.weight, m.bias, m.weight_quant.scale]
            if m.bn is not None:
                params += [m.bn.weight, m.bn.bias]
        params += [m.weight for m in block.layers.values() if isinstance(m, QEmbedding)]
        grids |= {s["quant"] for s in block.spec["steps"] if "quant" in s}
        key = block.name.replace(".", "_")
        if key in adapters:
            params += list(adapters[key].parameters())
    params += [student.quantizers[k].scale for k in sorted(grids - frozen_grids - fixed)]
    for p in params:
        p.requires_grad_(True)
    return params


def _steps(cfg: DistillConfig, n: int, final: bool = False) -> int:
    if final:
        return cfg.final_steps
    if cfg.steps_per_period is not None:
        return cfg.steps_per_period
    return max(1, math.ceil(cfg.epochs_per_period * n / cfg.batch_size))


def _batches(n: int, batch: int, steps: int, gen: torch.Generator):
    """``steps`` index batches of size ``batch`` over epochs of fresh permutations (the last
    partial batch of an epoch is completed from the next permutation)."""
    pool = torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        while pool.numel() < batch:
            pool = torch.cat([pool, torch.randperm(n, generator=gen)])
        yield pool[:batch]
        pool = pool[batch:]


def _schedule(data, cfg, steps: int, gen: torch.Generator, lo: int, per_rank: int) -> list:
    """The period's batches drawn up front, in the order a step-by-step loop draws them (so the
    same stream gives the same batches and mixes): per step, this rank's slice of the indices
    and, for a mixed-up batch, its ``mixup_draw``, else None."""
    schedule = []
    for idx in _batches(len(data), cfg.batch_size, steps, gen):
        idx = idx[lo:lo + per_rank]
        draw = None
        if data.mixable and cfg.mixup_fraction > 0 and \
                float(torch.rand((), generator=gen)) < cfg.mixup_fraction:
            draw = mixup_draw(gen, len(idx), cfg.mixup_alpha)
        schedule.append((idx, draw))
    return schedule


def _fingerprint(student, teacher, data, profile, cfg) -> dict:
    """What a resumed run must share with the run it resumes (else it would train other weights)."""
    t_sum = float(sum(p.detach().double().sum() for p in teacher.state_dict().values()
                      if p.is_floating_point()))
    arch = hashlib.sha256(json.dumps(student.config, sort_keys=True).encode()).hexdigest()[:16]
    return {"blocks": student.block_names, "student_config": arch, **data.fingerprint(),
            "teacher_sum": round(t_sum, 6), "profile": profile.name,
            "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
            "world_size": dist.world_size()}


def _settings_of_done_periods(config: dict, final_done: bool) -> dict:
    """The distillation settings that shaped the periods a checkpoint holds: while the final
    period is still to run, its own settings drop out (a resumed run may try another one)."""
    config = {"chip_forward": "none", **config}
    if not final_done:
        config = {k: v for k, v in config.items() if k not in ("final_steps", "final_window")}
        config["chip_forward"] = config["chip_forward"] == "all"
    return config


def distill(student: ArchNetStudent, teacher: nn.Module, images, profile: ChipProfile | str,
            cfg: DistillConfig, run_dir: str | Path, *, resume: bool = False,
            log: Callable[[str], None] = print,
            step_callback: Callable[[int, int, float], None] | None = None,
            metadata: dict | None = None, taps=None) -> DistillResult:
    """Distil ``teacher`` into ``student`` on unlabeled ``images`` for ``profile``; returns the
    trained student (the same object, updated) and the per-period history. ``taps``: where the
    teacher's features come from (default: forward hooks at ``student.block_taps`` module paths;
    ``GraphTaps`` for a captured teacher)."""
    cfg.check()
    profile = load_profile(profile) if isinstance(profile, str) else profile
    data = as_inputs(images)
    run_dir = Path(run_dir)
    n_blocks = len(student.blocks)
    taps = taps if taps is not None else TeacherTaps(teacher, student.block_taps)
    probe = torch.arange(min(8, len(data)))
    targets = taps.features(*data.teacher(probe))
    with torch.no_grad():
        x, side = data.student(probe)
        outs = student.features(x, side=side)
    for name, s, t in zip(student.block_names, outs, targets, strict=True):
        if tuple(s.shape) != tuple(t.shape):
            raise ConversionError(f"student block {name!r} gives {tuple(s.shape[1:])} but its "
                                  f"teacher tap gives {tuple(t.shape[1:])}")
    adapters = build_adapters(student.block_names, targets, n_blocks - 1)
    fingerprint = _fingerprint(student, teacher, data, profile, cfg)
    history: list[dict] = []
    start, resumed_from = 0, None
    if resume:
        path = latest_checkpoint(run_dir)
        if path is None:
            log(f"resume: no complete period in {run_dir / 'checkpoints'}; starting at period 0")
        else:
            ck = load_checkpoint(path)
            if ck.get("format") != CHECKPOINT_FORMAT or ck.get("version") != CHECKPOINT_VERSION:
                raise DistillError(f"{path}: not an archnet distillation checkpoint")
            final_done = int(ck["period"]) >= n_blocks
            for key, value in fingerprint.items():
                was = ck["fingerprint"].get(key)
                if key == "config":
                    was, value = (_settings_of_done_periods(c, final_done) for c in (was or {}, value))
                if was != value:
                    raise DistillError(f"{path}: cannot resume, {key} differs from the run it "
                                       f"resumes ({was!r} != {value!r})")
            saved, _ = student_from_payload(ck["student"], str(path))
            student.load_state_dict(saved.state_dict(), strict=True)
            adapters.load_state_dict(ck["adapters"], strict=True)
            history = list(ck["history"])
            start = resumed_from = int(ck["period"]) + 1
            log(f"resume: continuing after period {start - 1} ({path.name})")
    sim_seconds = sum(h.get("simulator_seconds", 0.0) for h in history)
    frozen = FrozenPrefix(student, profile, data, cfg.backend, cfg.sim_batch, cfg.progress) \
        if cfg.simulator_in_loop else None
    kept = KeptTargets(taps, data)
    with _channels_last(student, adapters, teacher):
        for period in range(start, n_blocks + (1 if cfg.final_steps else 0)):
            entry = _run_period(student, adapters, taps, data, profile, cfg, period, log,
                                step_callback, frozen, kept)
            sim_seconds += entry["simulator_seconds"]
            history.append(entry)
            if dist.is_main():
                save_atomic({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                             "period": period, "fingerprint": fingerprint,
                             "student": student_payload(student, metadata),
                             "adapters": {k: v.clone() for k, v in adapters.state_dict().items()},
                             "history": history},
                            checkpoint_path(run_dir, period))
            dist.barrier()
    seconds = sum(h["seconds"] for h in history)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    return DistillResult(student, history, seconds, sim_seconds, resumed_from)


class _Laps:
    """Seconds per phase of a loop: ``lap(name)`` adds the time since the last mark to name."""

    def __init__(self, *names: str):
        self.seconds = dict.fromkeys(names, 0.0)
        self.mark = time.perf_counter()

    def start(self) -> None:
        self.mark = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] += now - self.mark
        self.mark = now


@contextmanager
def _channels_last(*modules: nn.Module):
    """Train with 4-D weights channels-last (NHWC), then give them back in the standard layout:
    oneDNN's convolutions and PyTorch's max-pooling run several times faster on CPU in it (the
    conv after a one-channel image too: a conv's output follows its weight's layout). Only the
    layout changes; the values are the same."""
    for m in modules:
        m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m in modules:
            m.to(memory_format=torch.contiguous_format)


def _run_period(student, adapters, taps, data, profile, cfg, period, log, step_callback,
                frozen: FrozenPrefix | None, kept: KeptTargets) -> dict:
    from tqdm import tqdm
    n_blocks = len(student.blocks)
    periods = n_blocks + (1 if cfg.final_steps else 0)
    final = period >= n_blocks
    if final:       # after the blockwise periods: the last blocks together, on the head's loss
        first, period = max(0, n_blocks - (cfg.final_window or max(n_blocks - 1, 1))), n_blocks - 1
    else:
        first = max(0, period - cfg.window + 1)
    names = student.block_names
    label = (f"period {periods}/{periods} (final: {names[first]}..{names[period]})" if final else
             f"period {period + 1}/{periods} ({'+'.join(names[first:period + 1])})")
    t0 = time.perf_counter()
    cache, rescale = None, None
    sim_before = (frozen.seconds, frozen.images_run) if frozen else (0.0, 0)
    if first > 0:
        if frozen is not None:
            cache = frozen.outputs(first, desc=f"{label}: simulator")
            rescale = frozen.rescale
        else:  # ablation: the prefix's fake-quant float outputs
            with torch.no_grad():
                cache = torch.cat([
                    _prefix_float(student, *data.student(torch.arange(i, min(i + cfg.sim_batch,
                                                                              len(data)))), first)
                    for i in range(0, len(data), cfg.sim_batch)])
            rescale = lambda v: v  # noqa: E731
    sim_prefix = frozen.seconds - sim_before[0] if frozen else 0.0
    params = _trainable(student, adapters, first, period)
    student.train()
    chip_forward = cfg.chip_forward == "all" or (cfg.chip_forward == "final" and final)
    net = _PeriodNet(student, adapters, first, period, cfg, data, final,
                     profile.arithmetic if chip_forward else None)
    model = net
    if dist.active():
        model = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = _steps(cfg, len(data), final)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=max(1, steps // cfg.restarts), eta_min=cfg.lr * 0.01)
    gen = torch.Generator().manual_seed(period_seed(cfg.seed, n_blocks if final else period))
    blocks = [period] if final else list(range(first, period + 1))
    per_rank = cfg.batch_size // dist.world_size()
    lo = dist.rank() * per_rank
    bar = tqdm(total=steps, desc=label, unit="step", leave=False,
               disable=(not dist.is_main()) or (None if cfg.progress is None else not cfg.progress))
    schedule = _schedule(data, cfg, steps, gen, lo, per_rank)
    mixed = sum(draw is not None for _, draw in schedule)
    ahead = MixedPrefix(student, first, profile, cfg.backend, cfg.sim_batch, data, schedule) \
        if first > 0 and frozen is not None and mixed else None
    losses, part_sums = [], None
    laps = _Laps("teacher", "student_forward", "backward", "optimizer")
    for step, (idx, draw) in enumerate(schedule):
        batch, side = data.student(idx)
        teacher_in = data.teacher(idx)
        x_in, q_in = None, None
        if draw is not None:
            batch = data.mix(batch, draw)
            teacher_in = (batch,)
            if ahead is not None:
                # the mixed pixels have no kept integers: the whole prefix runs on them
                ints = ahead.outputs(step)
                x_in = rescale(ints)
                if chip_forward:
                    q_in = ahead.qtensor(ints)
            elif first > 0:
                x_in = _prefix_float(student, batch, side, first)
        elif first > 0:
            x_in = rescale(cache[idx])
            if chip_forward:
                q_in = frozen.qtensor(cache[idx])
        laps.start()
        targets = taps.features(*teacher_in, blocks=blocks) if draw is not None else \
            kept.features(idx, blocks)
        laps.lap("teacher")
        loss, parts = model(batch, x_in, targets, side, q_in)
        value = float(loss.detach())
        laps.lap("student_forward")
        if not math.isfinite(value):
            bar.close()
            raise DistillError(f"{label} step {step}: loss is {value}; stopped. The last good "
                               f"checkpoint is kept (lower --lr, or check the data for NaN)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        laps.lap("backward")
        opt.step()
        sched.step()
        laps.lap("optimizer")
        losses.append(value)
        stacked = torch.stack(parts)
        part_sums = stacked if part_sums is None else part_sums + stacked
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{value:.4f}")
        if step_callback is not None:
            step_callback(period, step, value)
    bar.close()
    student.eval()
    on_chip = frozen is not None and first > 0
    sim_seconds = sim_prefix + (ahead.seconds if ahead else 0.0)
    sim_images = (frozen.images_run - sim_before[1] if frozen else 0) + \
        (ahead.images_run if ahead else 0)
    tail = losses[-max(1, len(losses) // 10):]
    entry = {
        "period": n_blocks if final else period, "final": final,
        "blocks": names[first:period + 1], "new_block": names[period],
        "steps": steps, "mixup_batches": mixed, "batch_size": cfg.batch_size,
        "loss_first": losses[0], "loss_last": sum(tail) / len(tail),
        "block_losses": {names[first + j]: float(v) / steps for j, v in enumerate(part_sums)},
        "simulator_in_loop": on_chip, "simulator_prefix_blocks": first if on_chip else 0,
        "chip_forward": chip_forward,
        "simulator_images": sim_images,
        "simulator_seconds": round(sim_seconds, 3),
        "simulator_prefix_seconds": round(sim_prefix, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    # where the period's time went: the rest (batches, mixup, the loss's bookkeeping) is "other"
    phases = {**laps.seconds, "simulator": sim_seconds}
    phases["other"] = max(0.0, entry["seconds"] - sum(phases.values()))
    entry["phase_seconds"] = {k: round(v, 3) for k, v in phases.items()}
    if dist.is_main():
        split = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in phases.items()
                          if k != "simulator")
        log(f"{label}: loss {entry['loss_first']:.4f} -> {entry['loss_last']:.4f} in {steps} steps, "
            f"{entry['seconds']:.1f} s (simulator {sim_seconds:.1f} s on "
            f"{entry['simulator_images']} images; {split} s)")
    return entry


def _prefix_float(student: ArchNetStudent, images: torch.Tensor, side: dict,
                  n_blocks: int) -> torch.Tensor:
    with torch.no_grad():
        x = student.input(images)
        for block in student.blocks[:n_blocks]:
            x = block(x, side=side)
    return x
