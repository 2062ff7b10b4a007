"""Distillation losses: per-block feature MSE (teacher-attention weighted), logit cosine, mixup;
for token rows, the same over the tokens a padding mask keeps and the cosine of mean-pooled
sentence embeddings."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def block_weights(period: int, first: int = 0, decay: float = 0.8) -> torch.Tensor:
    """Weights of blocks ``first``..``period``: the newest block 1, each older one ``decay``
    times less (Arch-Net's ``torch.logspace(base=0.8)``), so a period concentrates on its new
    block while the blocks before it keep adjusting to it."""
    return torch.tensor([decay ** (period - i) for i in range(first, period + 1)])


def teacher_attention(feature: torch.Tensor) -> torch.Tensor:
    """Spatial attention of a teacher feature map: mean of squares over channels, normalised
    to mean 1 per sample; where the teacher's activations are strong, errors cost more."""
    if feature.dim() != 4:
        return torch.ones_like(feature[:, :1])
    att = feature.detach().pow(2).mean(dim=1, keepdim=True)
    return att / att.mean(dim=(2, 3), keepdim=True).clamp_min(1e-12)


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, attention: bool = True,
                 relative: bool = True) -> torch.Tensor:
    """MSE to the teacher's feature, plus the attention-weighted MSE when asked. ``relative``
    divides by the teacher feature's mean square, so blocks of different magnitude (feature maps,
    logits) weigh as the schedule says, not as their units happen to be."""
    target = teacher.detach()
    err = (student - target).pow(2)
    loss = err.mean()
    if attention and student.dim() == 4:
        loss = loss + (err * teacher_attention(target)).mean()
    if relative:
        loss = loss / target.pow(2).mean().clamp_min(1e-12)
    return loss


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of flattened outputs (logits or embeddings), averaged over the batch."""
    return (1 - F.cosine_similarity(student.flatten(1), teacher.detach().flatten(1), dim=1)).mean()


def masked_token_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor
                      ) -> torch.Tensor:
    """``feature_loss`` over the tokens a padding mask keeps (``mask`` [N, T]): padded rows
    carry nothing the sentence needs, in the teacher or the student."""
    keep = (mask != 0).to(student.dtype)
    while keep.dim() < student.dim():
        keep = keep.unsqueeze(-1)
    target = teacher.detach()
    count = keep.expand_as(target).sum().clamp_min(1.0)
    err = ((student - target).pow(2) * keep).sum() / count
    return err / ((target.pow(2) * keep).sum() / count).clamp_min(1e-12)


def pooled_cosine_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor
                       ) -> torch.Tensor:
    """1 - cosine of the sentence embeddings: token rows [N, T, D] mean-pooled over the tokens
    the mask keeps (as sentence encoders pool)."""
    keep = (mask != 0).to(student.dtype).unsqueeze(-1)
    count = keep.sum(dim=1).clamp_min(1.0)
    return cosine_loss((student * keep).sum(dim=1) / count,
                       (teacher.detach() * keep).sum(dim=1) / count)


def mixup_draw(generator: torch.Generator, n: int, alpha: float = 0.4
               ) -> tuple[float, torch.Tensor]:
    """A mixup of n images drawn: its weight, Beta(alpha, alpha) from a NumPy stream seeded by
    ``generator`` (torch's Beta sampler only reads the global RNG, so a resumed run mixes the
    same images as an uninterrupted one), and the partner of each image."""
    seed = int(torch.randint(2 ** 31 - 1, (), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha)) if alpha > 0 else 1.0
    return lam, torch.randperm(n, generator=generator)


def mixup_apply(images: torch.Tensor, lam: float, order: torch.Tensor) -> torch.Tensor:
    """Label-free mixup: convex combinations of shuffled images (no targets involved)."""
    return lam * images + (1 - lam) * images[order]


def mixup(images: torch.Tensor, generator: torch.Generator, alpha: float = 0.4) -> torch.Tensor:
    """``mixup_apply`` of a fresh ``mixup_draw``."""
    return mixup_apply(images, *mixup_draw(generator, images.shape[0], alpha))
