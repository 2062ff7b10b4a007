"""What distillation reads, per batch: the student's inputs (its encoding and side inputs) and
the teacher's. The one place images and text differ in the loop.

- ``ImageInputs``: float images [N, C, H, W] in [0, 1]; the student reads them as pixels, the
  teacher as they are; batches may be mixed up (label-free mixup).
- ``TokenInputs``: token ids [N, T] and a padding mask [N, T] (1 keeps a token); the student reads
  one-hot token rows (made per batch: a corpus' one-hot rows would not fit in memory) and the
  mask as its side input, the teacher reads the ids and the mask; no mixup (a mix of two
  sentences is no sentence).
"""

from __future__ import annotations

import torch

from archnet.data import unlabeled
from archnet.errors import DataError


class ImageInputs:
    mixable = True

    def __init__(self, images):
        self.images = unlabeled(images).images.float().contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "ImageInputs":
        return ImageInputs(self.images[idx])

    def student(self, idx) -> tuple[torch.Tensor, dict]:
        return self.images[idx], {}

    def teacher(self, idx) -> tuple[torch.Tensor, ...]:
        return (self.images[idx],)

    def token_mask(self, idx) -> None:
        return None

    def mix(self, x: torch.Tensor, draw: tuple[float, torch.Tensor]) -> torch.Tensor:
        """The batch x mixed up as ``losses.mixup_draw`` drew it."""
        from archnet.distill.losses import mixup_apply
        return mixup_apply(x, *draw)

    @staticmethod
    def block_loss(x, target, side: dict, head: bool, cfg) -> torch.Tensor:
        """A block's loss against its teacher feature; the head adds the logits' cosine."""
        from archnet.distill.losses import cosine_loss, feature_loss
        loss = feature_loss(x, target, cfg.attention)
        return loss + cfg.cosine_weight * cosine_loss(x, target) if head else loss

    def fingerprint(self) -> dict:
        return {"images": int(self.images.shape[0]),
                "image_sum": round(float(self.images[: min(1024, len(self.images))].double().sum()), 6)}


class TokenInputs:
    mixable = False

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, vocab: int, mask_name: str):
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise DataError(f"token inputs: ids {tuple(ids.shape)} and mask {tuple(mask.shape)} "
                            f"must both be [sentences, tokens]")
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise DataError(f"token inputs: ids outside the vocabulary of {vocab}")
        self.ids, self.mask = ids.long().contiguous(), mask.long().contiguous()
        self.vocab, self.mask_name = int(vocab), mask_name

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx) -> "TokenInputs":
        return TokenInputs(self.ids[idx], self.mask[idx], self.vocab, self.mask_name)

    def student(self, idx) -> tuple[torch.Tensor, dict]:
        """The token ids (the student's input layer reads them as their one-hot rows) and the
        mask side input."""
        return self.ids[idx], {self.mask_name: self.mask[idx].float()}

    def teacher(self, idx) -> tuple[torch.Tensor, ...]:
        return self.ids[idx], self.mask[idx]

    def token_mask(self, idx) -> torch.Tensor:
        """Which tokens are real (1) or padding (0), [sentences, tokens]."""
        return self.mask[idx]

    def mix(self, x, draw):
        raise DataError("token inputs cannot be mixed up")

    def block_loss(self, x, target, side: dict, head: bool, cfg) -> torch.Tensor:
        """Over the tokens the mask keeps; the head (the token embeddings) adds the cosine of
        the mean-pooled sentence embeddings."""
        from archnet.distill.losses import masked_token_loss, pooled_cosine_loss
        mask = side[self.mask_name]
        if x.dim() != 3:        # not token rows (a pooled head): as images
            return ImageInputs.block_loss(x, target, side, head, cfg)
        loss = masked_token_loss(x, target, mask)
        return loss + cfg.cosine_weight * pooled_cosine_loss(x, target, mask) if head else loss

    def fingerprint(self) -> dict:
        return {"images": int(self.ids.shape[0]),
                "image_sum": int(self.ids[: min(1024, len(self.ids))].sum()) +
                int(self.mask[: min(1024, len(self.mask))].sum())}


def as_inputs(data):
    """``data`` as distillation inputs: ``ImageInputs``/``TokenInputs`` as given, anything else
    as images."""
    return data if isinstance(data, (ImageInputs, TokenInputs)) else ImageInputs(data)


__all__ = ["ImageInputs", "TokenInputs", "as_inputs"]
