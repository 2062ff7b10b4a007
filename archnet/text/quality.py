"""How close a student's sentence embeddings are to the teacher's, on the same sentences.

``embedding_quality(student, teacher)`` compares two [N, H] arrays of sentence embeddings row by
row (sentence i of one with sentence i of the other):

- ``mean_cosine``, ``median_cosine``, ``min_cosine``: the cosine between the two embeddings of
  each sentence;
- ``nn_agreement``: the share of sentences whose most similar *other* sentence (highest cosine,
  the sentence itself excluded; the first on a tie) is the same under both — what a search over
  the sentences would return;
- ``spearman``: Spearman's rank correlation between the N(N-1)/2 pairwise cosine similarities of
  the student and those of the teacher (average ranks for ties) — whether the student orders
  sentence pairs by similarity as the teacher does. NaN when either side's similarities are all
  equal (no ranking to correlate).

Rows are L2-normalised here, so any embeddings may be given; sentence-transformers' are already.
NumPy only (no scipy); ``pooled``, the sentence embedding of a stream of token rows, takes torch
tensors.
"""

from __future__ import annotations

import numpy as np

from archnet.errors import ArchnetError

MIN_SENTENCES = 3   # two sentences have one pair: no ranking to correlate, one neighbour each


def _normalised(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (1-D), tied values sharing the mean of the ranks they span."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(xs)]
    run = np.cumsum(first) - 1
    ranks = np.empty(len(x), np.float64)
    ranks[order] = ((starts + ends - 1) / 2.0 + 1.0)[run]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equally long 1-D arrays: the Pearson correlation of
    their average ranks; NaN when either is constant."""
    ra, rb = average_ranks(np.ravel(a)), average_ranks(np.ravel(b))
    if len(ra) != len(rb):
        raise ArchnetError(f"spearman: {len(ra)} and {len(rb)} values; they must pair up")
    da, db = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((da * da).sum() * (db * db).sum()))
    return float((da * db).sum() / denom) if denom > 0 else float("nan")


def _check(name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ArchnetError(f"embedding quality: {name} embeddings have shape {list(x.shape)}; "
                           f"expected [sentences, features]")
    if not np.isfinite(x).all():
        raise ArchnetError(f"embedding quality: {name} embeddings hold NaN or infinite values")
    return x


def embedding_quality(student: np.ndarray, teacher: np.ndarray) -> dict:
    """Compare sentence embeddings [N, H] of the same N sentences (see the module doc).

    Returns ``{"sentences", "pairs", "mean_cosine", "median_cosine", "min_cosine",
    "nn_agreement", "spearman"}`` (plain Python numbers). Raises ``ArchnetError`` when the shapes
    differ or N < 3.
    """
    s, t = _check("student", student), _check("teacher", teacher)
    if s.shape != t.shape:
        raise ArchnetError(f"embedding quality: student embeddings {list(s.shape)} and teacher "
                           f"embeddings {list(t.shape)} differ in shape")
    n = s.shape[0]
    if n < MIN_SENTENCES:
        raise ArchnetError(f"embedding quality needs at least {MIN_SENTENCES} sentences "
                           f"(nearest neighbours and pairwise rankings), got {n}")
    s, t = _normalised(s), _normalised(t)
    cos = (s * t).sum(axis=1)
    sim_s, sim_t = s @ s.T, t @ t.T
    # a sentence is always its own nearest neighbour; the question is the nearest other one
    eye = np.eye(n, dtype=bool)
    nn_s = np.where(eye, -np.inf, sim_s).argmax(axis=1)
    nn_t = np.where(eye, -np.inf, sim_t).argmax(axis=1)
    upper = np.triu_indices(n, k=1)
    return {
        "sentences": int(n),
        "pairs": int(n * (n - 1) // 2),
        "mean_cosine": float(cos.mean()),
        "median_cosine": float(np.median(cos)),
        "min_cosine": float(cos.min()),
        "nn_agreement": float((nn_s == nn_t).mean()),
        "spearman": spearman(sim_s[upper], sim_t[upper]),
    }


QUALITY_KEYS = ("mean_cosine", "median_cosine", "min_cosine", "nn_agreement", "spearman")


def pooled(stream, mask):
    """The sentence embedding of token rows ``stream`` [N, T, H] (or [N*T, H]) under the padding
    ``mask`` [N, T] (1 keeps a token): the mean over the kept tokens, L2-normalised, computed on
    the host as sentence-transformers does after the encoder. torch tensors in and out (float64
    stays float64, anything else is computed in float32)."""
    import torch
    import torch.nn.functional as F
    n, t = mask.shape
    x = stream.reshape(n, t, -1).to(torch.float64 if stream.dtype == torch.float64 else torch.float32)
    m = mask.to(x.dtype).unsqueeze(-1)
    mean = (x * m).sum(1) / m.sum(1).clamp_min(1)
    return F.normalize(mean, dim=-1)


def verify_quality(embeddings: dict[str, list[np.ndarray]]) -> dict:
    """What a text verify reports from its chunks' sentence embeddings (``simulator``,
    ``emulation``, ``fake_quant``, ``teacher``): each of the first three against the teacher,
    and the simulator against the fake-quant student."""
    e = {k: np.concatenate(v) for k, v in embeddings.items()}
    return {"simulator_vs_teacher": embedding_quality(e["simulator"], e["teacher"]),
            "fake_quant_vs_teacher": embedding_quality(e["fake_quant"], e["teacher"]),
            "emulation_vs_teacher": embedding_quality(e["emulation"], e["teacher"]),
            "simulator_vs_fake_quant": embedding_quality(e["simulator"], e["fake_quant"])}


__all__ = ["MIN_SENTENCES", "QUALITY_KEYS", "average_ranks", "embedding_quality", "pooled",
           "spearman", "verify_quality"]
