"""Sentence-embedding quality: hand-checkable cases for every number of ``embedding_quality``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from archnet.errors import ArchnetError
from archnet.text.quality import average_ranks, embedding_quality, spearman


def _unit(degrees) -> np.ndarray:
    a = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def test_identical_embeddings_score_one_everywhere():
    x = np.random.default_rng(0).normal(size=(12, 8))
    q = embedding_quality(x, x.copy())
    assert q["sentences"] == 12 and q["pairs"] == 66
    for key in ("mean_cosine", "median_cosine", "min_cosine", "nn_agreement", "spearman"):
        assert q[key] == pytest.approx(1.0, abs=1e-12), key


def test_rows_are_normalised_first():
    x = np.random.default_rng(1).normal(size=(6, 4))
    q = embedding_quality(x * np.arange(1, 7)[:, None], x)   # lengths differ, directions equal
    assert q["min_cosine"] == pytest.approx(1.0) and q["spearman"] == pytest.approx(1.0)


def test_three_sentences_by_hand():
    """Teacher at 0, 30, 90 degrees; student at 0, 60, 90.

    Per-sentence cosines: 1, cos 30, 1. Pair similarities (01, 02, 12): teacher (cos 30, 0,
    cos 60) ranked (3, 1, 2); student (cos 60, 0, cos 30) ranked (2, 1, 3): Pearson of the ranks
    is 1 / 2. Nearest other sentence: teacher 0->1, 1->0, 2->1; student 0->1, 1->2, 2->1."""
    q = embedding_quality(_unit([0, 60, 90]), _unit([0, 30, 90]))
    c30 = math.cos(math.radians(30))
    assert q["mean_cosine"] == pytest.approx((2 + c30) / 3)
    assert q["median_cosine"] == pytest.approx(1.0)
    assert q["min_cosine"] == pytest.approx(c30)
    assert q["nn_agreement"] == pytest.approx(2 / 3)
    assert q["spearman"] == pytest.approx(0.5)


def test_nearest_neighbour_agreement_under_a_permutation():
    """Two tight pairs (0, 1) and (2, 3). Permuting both sides alike changes nothing; swapping
    rows 1 and 3 of the student alone pairs 0 with 3 and 1 with 2: no neighbour agrees (and
    rows 1 and 3 become orthogonal to the teacher's: cosines 1, 0, 1, 0)."""
    eps = 0.05
    t = np.array([[1, 0, 0, 0], [1, eps, 0, 0], [0, 0, 1, 0], [0, 0, 1, eps]], np.float64)
    swapped = t[[0, 3, 2, 1]]
    q = embedding_quality(swapped, t)
    assert q["nn_agreement"] == 0.0
    assert q["mean_cosine"] == pytest.approx(0.5)
    assert q["min_cosine"] == pytest.approx(0.0, abs=1e-12)
    perm = np.array([2, 0, 3, 1])
    assert embedding_quality(swapped[perm], t[perm]) == pytest.approx(q)
    assert embedding_quality(t[perm], t[perm])["nn_agreement"] == 1.0


def test_spearman_known_value_with_ties():
    """x = 1..5 ranks 1..5; y = (5, 6, 7, 8, 7) ranks (1, 2, 3.5, 5, 3.5). Deviations from the
    mean rank 3: (-2, -1, 0, 1, 2) and (-2, -1, .5, 2, .5): r = 8 / sqrt(10 * 9.5)."""
    x = np.array([1.0, 2, 3, 4, 5])
    y = np.array([5.0, 6, 7, 8, 7])
    assert average_ranks(y).tolist() == [1.0, 2.0, 3.5, 5.0, 3.5]
    assert spearman(x, y) == pytest.approx(8 / math.sqrt(95))
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, np.ones(5)))   # no ranking to correlate


def test_reversed_pair_ranking_gives_minus_one():
    """Pairs (01, 02, 12): the teacher's angles (10, 30, 20) rank the similarities (3, 1, 2);
    a student with angles (30, 50, 20) ranks them (2, 1, 3) (Spearman 1/2, as above), one with
    (35, 15, 20) ranks them (1, 3, 2), exactly reversed."""
    t = _unit([0, 10, 30])               # pair angles 10, 30, 20 -> similarity ranks 3, 1, 2
    s = _unit([0, 30, 50])               # pair angles 30, 50, 20 -> similarity ranks 2, 1, 3
    assert embedding_quality(s, t)["spearman"] == pytest.approx(0.5)
    s = _unit([0, 35, 15])               # pair angles 35, 15, 20 -> similarity ranks 1, 3, 2
    assert embedding_quality(s, t)["spearman"] == pytest.approx(-1.0)


@pytest.mark.parametrize("student,teacher,match", [
    (np.ones((2, 4)), np.ones((2, 4)), "at least 3 sentences"),
    (np.ones((4, 4)), np.ones((4, 5)), "differ in shape"),
    (np.ones(4), np.ones(4), "expected \\[sentences, features\\]"),
    (np.full((4, 2), np.nan), np.ones((4, 2)), "NaN"),
])
def test_bad_input_is_a_clear_error(student, teacher, match):
    with pytest.raises(ArchnetError, match=match) as err:
        embedding_quality(student, teacher)
    assert "\n" not in str(err.value)


def test_pooled_is_the_mean_over_real_tokens_normalised():
    """The sentence embedding of token rows: padding rows never count, the result has unit
    length, float64 stays float64, and a sentence with no real token is zeros, not NaN."""
    torch = pytest.importorskip("torch")
    from archnet.text.quality import pooled
    rows = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2) + 1
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    got = pooled(rows, mask)
    mean = rows[0, :2].mean(0)
    assert got.dtype == torch.float64 and torch.allclose(got[0], mean / mean.norm())
    assert torch.equal(got[1], torch.zeros(2, dtype=torch.float64))
    padded = rows.clone()
    padded[0, 2] = 1e6                                  # a padding row changes nothing
    assert torch.equal(pooled(padded, mask), got)
    flat = pooled(rows.reshape(6, 2).float(), mask)     # [N*T, H] rows, float32
    assert flat.dtype == torch.float32 and torch.allclose(flat.double(), got, atol=1e-6)
