"""Vision Transformers (Dosovitskiy et al. 2021): ViT-B/16 as torchvision builds it and DeiT-Tiny
(Touvron et al. 2021), which is the same network narrower (192 wide, 3 heads).

The module tree and ``state_dict`` keys are torchvision's ``VisionTransformer`` (``conv_proj``,
``class_token``, ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_{i}.ln_1``,
``.self_attention.in_proj_weight``, ``.mlp.0``/``.mlp.3``, ``encoder.ln``, ``heads.head``);
timm's DeiT names the same tensors differently (``cls_token``, ``blocks.{i}.attn.qkv``).
Attention is written out (one fused q/k/v projection, scaled dot product, softmax, output
projection) rather than calling ``nn.MultiheadAttention``, so the exported graph is the same
plain MatMul/Softmax ops whichever kernel that module would pick; the parameter names are
``nn.MultiheadAttention``'s, so torchvision's weights load.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from archnet.errors import TeacherError


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise TeacherError(f"attention width {dim} is not a multiple of {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5  # a Python float, so the export holds a constant
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # explicit reshape sizes: unflatten/flatten export as shape arithmetic with empty slices
        batch, tokens, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, tokens, head_dim)
        attention = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        return self.out_proj((attention @ v).transpose(1, 2).reshape(batch, tokens, dim))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = SelfAttention(dim, num_heads)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, dim), nn.Dropout(dropout))
        for linear in (self.mlp[0], self.mlp[3]):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_length: int, num_layers: int, num_heads: int, dim: int, mlp_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential()  # named encoder_layer_{i}, as torchvision's checkpoints
        for i in range(num_layers):
            self.layers.add_module(f"encoder_layer_{i}",
                                   EncoderBlock(dim, num_heads, mlp_dim, dropout))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """Non-overlapping p x p patches embedded by a p x p / p conv, a learned class token and
    learned positions, pre-norm encoder blocks, the class token's final state -> linear head."""

    def __init__(self, image_size: int, patch_size: int, num_layers: int, num_heads: int,
                 hidden_dim: int, mlp_dim: int, num_classes: int = 1000, dropout: float = 0.0,
                 in_channels: int = 3):
        super().__init__()
        if image_size % patch_size:
            raise TeacherError(f"image size {image_size} is not a multiple of patch {patch_size}")
        self.image_size = image_size
        self.hidden_dim = hidden_dim
        self.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        seq_length = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(hidden_dim, num_classes))
        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=fan_in ** -0.5)
        nn.init.zeros_(self.conv_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            # the learned positions fix the token count
            raise TeacherError(f"this ViT takes {self.image_size}x{self.image_size} images, "
                               f"got {x.shape[-2]}x{x.shape[-1]}")
        batch = x.shape[0]
        tokens = self.conv_proj(x).reshape(batch, self.hidden_dim, -1).transpose(1, 2)
        # at batch 1 (every export) no Expand, whose output shape ONNX inference cannot follow
        cls = self.class_token if batch == 1 else self.class_token.expand(batch, -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        return self.heads(self.encoder(tokens)[:, 0])


def vit_b_16(num_classes: int = 1000, image_size: int = 224,
             dropout: float = 0.0) -> VisionTransformer:
    return VisionTransformer(image_size, 16, 12, 12, 768, 3072, num_classes, dropout)


def deit_tiny(num_classes: int = 1000, image_size: int = 224,
              dropout: float = 0.0) -> VisionTransformer:
    """DeiT-Ti/16 without the distillation token (timm's ``deit_tiny_patch16_224``)."""
    return VisionTransformer(image_size, 16, 12, 3, 192, 768, num_classes, dropout)


def vit_small_images(num_classes: int = 10, in_channels: int = 1, width: int = 64,
                     image_size: int = 28) -> VisionTransformer:
    """The zoo's ViT for 28x28 images (``archnet teacher train --arch vit``): 4x4 patches (49
    tokens and the class token), 4 pre-norm blocks of 4 heads, MLP twice the width."""
    if width % 4:
        raise TeacherError(f"ViT width {width} is not a multiple of its 4 heads")
    return VisionTransformer(image_size, 4, 4, 4, width, 2 * width, num_classes, 0.0, in_channels)
