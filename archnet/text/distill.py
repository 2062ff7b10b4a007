"""Label-free blockwise distillation of the text student, with the simulator in the loop.

Period ``k`` (k = 0 .. blocks-1; block 0 is the embedding, block i+1 encoder layer i) trains a
window of blocks ``first..k`` (``first = max(0, k - window + 1)``) so that each block's output,
through a training-only identity-initialised linear adapter, matches the teacher's hidden state
at the same depth: MSE over the real tokens, relative to the teacher's mean square, plus (for
encoder blocks, ``attention_weight``) the KL from the teacher's attention maps to the student's,
as MiniLM itself was distilled; older blocks weighted down by ``decay``. A last period trains
every encoder layer (``final_window``) on the sentence embedding itself: cosine between the
mean-pooled, L2-normalised student and teacher outputs, plus the last block's MSE. It has no
adapters: the embedding must be the teacher's as it is, and the earlier blocks learnt the
teacher through adapters that are gone.

Blocks before the window are frozen; they run on the chip profile's **simulator** (their
Program, exported with the frozen grids), once per period over the distillation sentences, and
the window trains on the simulator's integers times their step. With ``chip_values`` the window
itself computes the chip's integers too (``TextStudent.features(arith=...)``: values from the
integer emulation, gradients from fake-quant), so the loss is the deployed student's loss.
Padding never changes a real token's value (keys are masked, everything else is per token), so
sentences are batched by length and each batch is cut to its longest sentence; the simulator
runs them the same way.

No labels: the data is unlabeled text. A checkpoint per period goes to
``<run_dir>/checkpoints/period_NN.pt`` atomically; ``resume`` continues after the last complete
one and refuses if the settings, teacher, data or student differ; every period draws its random
stream from ``(seed, period)`` only, so a resumed run trains the weights an uninterrupted one
does. A loss that is not finite stops with ``DistillError`` and keeps the last good checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archnet.distill.adapters import _identity_linear
from archnet.distill.checkpoint import load_checkpoint, save_atomic
from archnet.errors import DistillError
from archnet.text.student import TextStudent, pooled, two_hot
from simulator.execute import execute

CHECKPOINT_FORMAT = "archnet-text-distill-checkpoint"
_PERIOD_FILE = re.compile(r"period_(\d+)\.pt")


@dataclass
class TextDistillConfig:
    steps_per_period: int = 150
    final_steps: int = 200              # the sentence-embedding (cosine) period
    final_window: int | None = None     # blocks it trains (default: every encoder layer)
    batch_size: int = 32
    lr: float = 1e-4
    window: int = 2
    decay: float = 0.5
    cosine_weight: float = 10.0
    attention_weight: float = 0.0       # KL to the teacher's attention maps, per encoder block
    chip_values: bool = True            # train on the chip's integers (fake-quant gradients)
    simulator_in_loop: bool = True
    sim_batch: int = 32
    backend: str = "kernels"
    seed: int = 0
    progress: bool | None = None

    def check(self) -> "TextDistillConfig":
        bad = [f"{k} {getattr(self, k)} must be >= 1" for k in
               ("batch_size", "window", "sim_batch") if getattr(self, k) < 1]
        bad += [f"{k} {getattr(self, k)} must be >= 0" for k in
                ("steps_per_period", "final_steps", "attention_weight", "cosine_weight")
                if getattr(self, k) < 0]
        if self.final_window is not None and self.final_window < 1:
            bad.append(f"final_window {self.final_window} must be >= 1")
        if not self.lr > 0:
            bad.append(f"lr {self.lr} must be > 0")
        if bad:
            raise DistillError("distillation settings: " + "; ".join(bad))
        return self


@dataclass
class TextDistillResult:
    history: list[dict] = field(default_factory=list)
    simulator_seconds: float = 0.0
    train_seconds: float = 0.0


class SentenceBatches:
    """Token ids and masks [N, T] batched by length: each batch is cut to its longest sentence."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor):
        self.ids, self.mask = ids, mask
        self.lengths = mask.sum(1)
        self.order = torch.argsort(self.lengths, stable=True)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def chunks(self, size: int) -> list[torch.Tensor]:
        return list(self.order.split(size))

    def epoch(self, size: int, gen: torch.Generator) -> list[torch.Tensor]:
        chunks = self.chunks(size)
        return [chunks[i] for i in torch.randperm(len(chunks), generator=gen).tolist()]

    def cut(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        t = max(int(self.lengths[idx].max()), 1)
        return self.ids[idx, :t], self.mask[idx, :t], t


def _relative_mse(y: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    y, target = y[valid], target[valid]
    return (y - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-8)


def _fingerprint(cfg: TextDistillConfig, student: TextStudent, teacher_fingerprint: str,
                 data: SentenceBatches, chip_name: str) -> str:
    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "backend", "sim_batch")}
    h.update(json.dumps([settings, student.config, teacher_fingerprint, chip_name], sort_keys=True).encode())
    h.update(data.ids.numpy().tobytes())
    h.update(data.mask.numpy().tobytes())
    return h.hexdigest()


class SimulatorPrefix:
    """The frozen blocks' outputs as the chip computes them, for every distillation sentence:
    a cache of int8 streams [N, T, H], advanced one block at a time on the simulator."""

    def __init__(self, student: TextStudent, chip, data: SentenceBatches, cfg: TextDistillConfig,
                 log: Callable[[str], None]):
        self.student, self.chip, self.data, self.cfg, self.log = student, chip, data, cfg, log
        self.block = -1          # the last block whose output is cached
        self.stream: np.ndarray | None = None
        self.seconds = 0.0

    def advance_to(self, block: int) -> None:
        if block < self.block:
            # a period that starts lower down than the last one (the sentence-embedding period
            # after the windows): the cache holds a later block, so run again from the tokens
            self.block, self.stream = -1, None
        while self.block < block:
            self._run(self.block + 1)

    def _run(self, b: int) -> None:
        s = self.student
        n, t_max = self.data.ids.shape
        out = np.zeros((n, t_max, s.cfg.hidden), np.int8)
        start = time.perf_counter()
        chunks = self.data.chunks(self.cfg.sim_batch)
        bar = _bar(len(chunks), f"simulator {s.block_names()[b]}", self.cfg.progress)
        for idx in chunks:
            ids, mask, t = self.data.cut(idx)
            prog = s.export(len(idx), t, start=b, stop=b + 1)
            inputs = {"attention_mask": mask.numpy().astype(np.uint8)}
            if b == 0:
                inputs["tokens"] = two_hot(ids.numpy(), s.cfg.vocab_size, s.cfg.max_positions)
            else:
                inputs["stream"] = self.stream[idx.numpy(), :t].reshape(len(idx) * t, -1)
            res = execute(prog, self.chip, inputs, backend=self.cfg.backend, trace=False)
            out[idx.numpy(), :t] = res.outputs[prog.outputs[-1]].reshape(len(idx), t, -1)
            bar.update(1)
        bar.close()
        self.stream, self.block = out, b
        took = time.perf_counter() - start
        self.seconds += took
        self.log(f"  simulator: block {s.block_names()[b]} on {n} sentences in {took:.1f}s")

    def inputs(self, idx: torch.Tensor, t: int) -> torch.Tensor:
        q = self.student.stream_quant(self.block)
        x = torch.from_numpy(self.stream[idx.numpy(), :t].astype(np.float32))
        return x * q.step()


class TeacherTargets:
    """The teacher's hidden states (and attention maps) at the blocks a period compares,
    computed the first time a batch is drawn and kept for the rest of the period: a period of
    several epochs calls the teacher once per sentence, not once per step. Batches are the
    fixed length-sorted chunks, so a kept target is the one a fresh teacher call would give.
    Kept as float16: its rounding (2^-11 relative) is far below any distillation loss."""

    def __init__(self, teacher, blocks: list[int], attention_blocks: list[int]):
        self.teacher, self.blocks, self.attention_blocks = teacher, blocks, attention_blocks
        self.kept: dict[int, tuple[dict, dict]] = {}

    def _get(self, idx: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[dict, dict]:
        key = int(idx[0])          # chunks are disjoint: their first sentence names them
        if key not in self.kept:
            out = self.teacher.forward(ids, mask)
            # block i >= 1 is encoder layer i - 1, whose map is attentions[i - 1]
            self.kept[key] = ({b: out.hidden_states[b].to(torch.float16) for b in self.blocks},
                              {b: out.attentions[b - 1].to(torch.float16) for b in self.attention_blocks})
        return self.kept[key]

    def hidden(self, block: int, idx, ids, mask) -> torch.Tensor:
        return self._get(idx, ids, mask)[0][block].to(torch.float32)

    def attention(self, block: int, idx, ids, mask) -> torch.Tensor:
        return self._get(idx, ids, mask)[1][block].to(torch.float32)


def _attention_kl(log_probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the attention maps [N, heads, T, T], summed over keys and
    averaged over heads and real query tokens (MiniLM's own self-attention distillation)."""
    rows = (torch.xlogy(target, target) - target * log_probs).sum(-1).mean(1)
    return rows[valid].mean()


def _bar(total: int, desc: str, progress: bool | None):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=None if progress is None else not progress,
                dynamic_ncols=True)


def _period_blocks(period: int, blocks: int, window: int, final_window: int | None
                   ) -> tuple[int, int, bool]:
    """(first, last, final) blocks trained in ``period``; the last period is the sentence
    embedding's, over ``final_window`` blocks (default every encoder layer: the embedding table
    stays frozen and runs on the simulator)."""
    if period < blocks:
        return max(0, period - window + 1), period, False
    return max(0, blocks - (final_window or max(blocks - 1, 1))), blocks - 1, True


def _set_trainable(student: TextStudent, first: int, last: int) -> list[nn.Parameter]:
    params = []
    for i in range(student.num_blocks):
        train = first <= i <= last
        for p in student.block(i).parameters():
            p.requires_grad_(train)
            if train:
                params.append(p)
    # the stream grid the window reads was written by the frozen simulator prefix: frozen with it
    if first > 0:
        student.stream_quant(first - 1).scale.requires_grad_(False)
        params = [p for p in params if p is not student.stream_quant(first - 1).scale]
    return params


def distill_text(student: TextStudent, teacher, ids: torch.Tensor, mask: torch.Tensor, chip,
                 cfg: TextDistillConfig, run_dir: str | Path, resume: bool = False,
                 log: Callable[[str], None] = print) -> TextDistillResult:
    """Distil ``student`` from ``teacher`` (a TextTeacher) on token ids/masks [N, T]; see the
    module doc. Returns the per-period history; the student is left trained, in eval mode."""
    cfg.check()
    data = SentenceBatches(ids, mask)
    if len(data) < cfg.batch_size:
        raise DistillError(f"{len(data)} distillation sentences < batch size {cfg.batch_size}")
    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(cfg, student, teacher.fingerprint, data, chip.name)
    result = TextDistillResult()
    periods = student.num_blocks + (1 if cfg.final_steps > 0 else 0)
    start_period = 0
    if resume:
        start_period = _resume(student, ckpt_dir, fingerprint, result, log)
    prefix = SimulatorPrefix(student, chip, data, cfg, log)
    for period in range(start_period, periods):
        first, last, final = _period_blocks(period, student.num_blocks, cfg.window, cfg.final_window)
        steps = cfg.final_steps if final else cfg.steps_per_period
        names = student.block_names()
        log(f"period {period + 1}/{periods}: {'sentence embedding, ' if final else ''}"
            f"blocks {names[first]}..{names[last]}, {steps} steps")
        if first > 0 and cfg.simulator_in_loop:
            prefix.advance_to(first - 1)
        record = _train_period(student, teacher, data, prefix, first, last, final, steps, period, cfg,
                               chip.arithmetic if cfg.chip_values else None)
        result.history.append(record)
        result.train_seconds += record["seconds"]
        log(f"  loss {record['loss_first']:.4f} -> {record['loss_last']:.4f} in {record['seconds']:.0f}s")
        save_atomic({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "period": period,
                     "state_dict": {k: v.detach().clone() for k, v in student.state_dict().items()},
                     "history": result.history}, ckpt_dir / f"period_{period:02d}.pt")
    result.simulator_seconds = prefix.seconds
    for p in student.parameters():
        p.requires_grad_(True)
    return result


def _resume(student, ckpt_dir: Path, fingerprint: str, result: TextDistillResult, log) -> int:
    found = sorted((int(m.group(1)), p) for p in ckpt_dir.glob("period_*.pt")
                   if (m := _PERIOD_FILE.fullmatch(p.name)))
    if not found:
        log(f"resume: no checkpoint in {ckpt_dir}; starting at period 1")
        return 0
    period, path = found[-1]
    ck = load_checkpoint(path)
    if ck.get("format") != CHECKPOINT_FORMAT:
        raise DistillError(f"{path}: not a text distillation checkpoint")
    if ck.get("fingerprint") != fingerprint:
        raise DistillError(f"{path}: made with other settings, teacher, data or student; "
                           f"refusing to resume (use a new run directory)")
    student.load_state_dict(ck["state_dict"])
    result.history = list(ck.get("history", []))
    log(f"resume: period {period + 1} complete in {path.name}; continuing")
    return period + 1


def _train_period(student, teacher, data, prefix, first, last, final, steps, period, cfg,
                  arith=None) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + period)
    torch.manual_seed(cfg.seed * 1000 + period)
    params = _set_trainable(student, first, last)
    adapters = nn.ModuleDict({} if final else
                             {str(i): _identity_linear(student.cfg.hidden) for i in range(first, last + 1)})
    opt = torch.optim.Adam([{"params": params}, {"params": list(adapters.parameters())}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    weights = [cfg.decay ** (last - i) for i in range(first, last + 1)]
    compared = [last] if final else list(range(first, last + 1))
    with_maps = [i for i in compared if i >= 1] if cfg.attention_weight > 0 and not final else []
    targets = TeacherTargets(teacher, compared, with_maps)
    student.train()
    losses, start, batches = [], time.perf_counter(), []
    bar = _bar(steps, f"period {period + 1}", cfg.progress)
    for step in range(steps):
        if not batches:
            batches = data.epoch(cfg.batch_size, gen)
        idx = batches.pop()
        ids, mask, t = data.cut(idx)
        stream = None
        if first > 0:
            stream = prefix.inputs(idx, t) if cfg.simulator_in_loop else \
                student.features(ids, mask, stop=first, arith=arith)[-1].detach()
        maps = {} if with_maps else None
        feats = student.features(ids if first == 0 else None, mask, start=first, stop=last + 1,
                                 stream=stream, attention=maps, arith=arith)
        valid = mask.bool()
        loss = torch.zeros(())
        for w, i, y in zip(weights, range(first, last + 1), feats):
            if final and i != last:
                # earlier blocks learnt the teacher through adapters that are gone: asking a
                # fresh identity adapter for the teacher again would pull them off the chain
                continue
            key = str(i)
            y_ad = adapters[key](y) if key in adapters else y
            loss = loss + w * _relative_mse(y_ad, targets.hidden(i, idx, ids, mask), valid)
            if i in with_maps:
                kl = _attention_kl(maps[i], targets.attention(i, idx, ids, mask), valid)
                loss = loss + w * cfg.attention_weight * kl
        if final:
            # the teacher's pooled state at the student's depth: its sentence embedding, or a
            # truncated teacher's
            target = targets.hidden(last, idx, ids, mask)
            cos = F.cosine_similarity(pooled(feats[-1], mask), pooled(target, mask)).mean()
            loss = loss + cfg.cosine_weight * (1 - cos)
        if not torch.isfinite(loss):
            bar.close()
            raise DistillError(f"period {period + 1}, step {step + 1}: loss is {loss.item()}; "
                               f"the last complete period's checkpoint is kept")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    student.eval()
    k = max(1, min(10, len(losses) // 3))   # disjoint ends, even for a short period
    head, tail = losses[:k], losses[-k:]
    return {"period": period + 1, "blocks": [first, last], "final": final, "steps": steps,
            "loss_first": float(np.mean(head)) if losses else float("nan"),
            "loss_last": float(np.mean(tail)) if losses else float("nan"),
            "seconds": time.perf_counter() - start}
