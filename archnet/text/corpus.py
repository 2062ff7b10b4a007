"""Sentence corpora for distilling a text teacher, their held-out split, and fixed-length tokens.

Sources, both offline:

- ``"fortunes"`` (the default): every file of Debian's ``fortunes`` package in
  ``/usr/share/games/fortunes`` (entries separated by lines holding only ``%``; the ``.dat`` index
  and ``.u8`` link files and sub-folders are skipped), files in name order, entries in file order;
- a path to a UTF-8 text file: one sentence per non-empty line.

Each entry's whitespace (line breaks included) is collapsed to single spaces; entries of fewer
than 3 words are dropped, then duplicates (keeping the first). The result is deterministic.

``split_heldout`` is the train / held-out split every quality number of the text path is
measured on; ``tokenize`` turns sentences into padded ``[N, max_len]`` id and mask arrays.
Errors a user can cause are one-line ``archnet.errors.DataError``s naming the file at fault.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from archnet.errors import DataError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_HINT = "install it with `apt-get install fortunes` or pass a text file (one sentence a line)"
MIN_WORDS = 3
SKIPPED_SUFFIXES = (".dat", ".u8")   # strfile's index; .u8 are links to the same files


class TruncationWarning(UserWarning):
    """Some sentences had more tokens than ``max_len`` and lost their tail."""


# ----------------------------------------------------------------------------- reading

def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); convert it, "
                        f"e.g. with iconv -t utf-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _fortune_entries(text: str) -> list[str]:
    entries, lines = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append(" ".join(lines))
            lines = []
        else:
            lines.append(line)
    entries.append(" ".join(lines))
    return entries


def _fortunes(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"fortunes not found at {folder}: {FORTUNES_HINT}")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix not in SKIPPED_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no fortune files in it; {FORTUNES_HINT}")
    return [entry for p in files for entry in _fortune_entries(_read_text(p))]


def read_sentences(source: str | os.PathLike | None = None) -> list[str]:
    """Sentences of ``source`` (None or ``"fortunes"``: Debian's fortunes; else a text file),
    whitespace collapsed, at least 3 words each, duplicates dropped, in a fixed order.

    A file literally called ``fortunes`` in the working folder is read as ``./fortunes``.
    """
    if source is None or (isinstance(source, str) and source == "fortunes"):
        name, raw = f"fortunes ({FORTUNES_DIR})", _fortunes(FORTUNES_DIR)
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"{path}: no such corpus file (give a UTF-8 text file with one "
                            f"sentence a line, or 'fortunes')")
        if not path.is_file():
            raise DataError(f"{path}: not a file (give a UTF-8 text file with one sentence a "
                            f"line, or 'fortunes')")
        name, raw = str(path), _read_text(path).splitlines()
    seen: set[str] = set()
    out = []
    for entry in raw:
        words = entry.split()
        text = " ".join(words)
        if len(words) >= MIN_WORDS and text not in seen:
            seen.add(text)
            out.append(text)
    if not out:
        raise DataError(f"corpus {name} is empty (no line with {MIN_WORDS} or more words)")
    return out


# ----------------------------------------------------------------------------- held-out split

def _unit_hash(sentence: str) -> float:
    digest = hashlib.sha1(sentence.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_heldout(sentences: Sequence[str],
                  heldout_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """(train, held-out): the held-out part is the one every quality number is measured on.

    A sentence is held out when the first 8 bytes of its SHA-1, read as a fraction of 2**64, are
    below ``heldout_fraction``. Its side depends on its own text only, so adding or removing other
    sentences never moves it across the split (and no distilled student sees its held-out
    sentences in training, whatever corpus it was trained on). Both parts keep the input order.
    """
    fraction = float(heldout_fraction)
    if not 0.0 < fraction < 1.0:
        raise DataError(f"heldout_fraction must lie strictly between 0 and 1, got {heldout_fraction}")
    train, heldout = [], []
    for s in sentences:
        (heldout if _unit_hash(s) < fraction else train).append(s)
    if sentences and (not train or not heldout):
        empty = "held-out" if not heldout else "training"
        raise DataError(f"the {empty} part of {len(sentences)} sentences is empty at "
                        f"heldout_fraction {fraction}; give more sentences")
    return train, heldout


# ----------------------------------------------------------------------------- tokens

@dataclass(frozen=True)
class Tokenized:
    """Sentences as fixed-length rows: ``input_ids`` and ``attention_mask`` int64 [N, T] (mask 1
    on real tokens, [CLS] and [SEP] included, 0 on padding), ``lengths`` int64 [N] (real tokens
    per row), ``truncated`` the number of sentences cut to T."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray
    truncated: int

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.input_ids.shape[1])


# tokenizers that do not know their model's limit report this sentinel (transformers' own)
_NO_LIMIT = int(1e20)


def tokenize(tokenizer, sentences: Sequence[str], max_len: int, *,
             max_positions: int | None = None) -> Tokenized:
    """Tokenize ``sentences`` as ``tokenizer`` does ([CLS] ... [SEP]), padded with its pad id to
    exactly ``max_len`` positions; longer ones are truncated (one ``TruncationWarning`` says how
    many). ``max_positions`` (default: the tokenizer's ``model_max_length``) bounds ``max_len``.
    """
    if isinstance(sentences, str):
        sentences = [sentences]  # a bare string would tokenize letter by letter
    sentences = list(sentences)
    if not sentences:
        raise DataError("no sentences to tokenize")
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 3:
        raise DataError(f"max_len must be an integer of at least 3 ([CLS], one token, [SEP]), "
                        f"got {max_len!r}")
    max_len = int(max_len)
    limit = max_positions if max_positions is not None else getattr(tokenizer, "model_max_length",
                                                                    None)
    if limit is not None and int(limit) < _NO_LIMIT and max_len > int(limit):
        raise DataError(f"max_len {max_len} is above the model's {int(limit)} positions")
    if getattr(tokenizer, "pad_token_id", None) is None:
        raise DataError(f"tokenizer {type(tokenizer).__name__} has no pad token")
    # one position more than kept: a row that fills it had more than max_len tokens; only those
    # rows are tokenized again (tokenizing is the slow part: seconds for the fortunes corpus)
    rows = list(tokenizer(sentences, truncation=True, max_length=max_len + 1,
                          padding=False)["input_ids"])
    long = [i for i, r in enumerate(rows) if len(r) > max_len]
    if long:
        again = tokenizer([sentences[i] for i in long], truncation=True, max_length=max_len,
                          padding=False)["input_ids"]
        for i, r in zip(long, again):
            rows[i] = r
    truncated = len(long)
    ids = np.full((len(sentences), max_len), int(tokenizer.pad_token_id), dtype=np.int64)
    mask = np.zeros((len(sentences), max_len), dtype=np.int64)
    # always right-padded, whatever the tokenizer's padding_side: position j is the j-th token
    # (BERT's position ids count from the left) and a batch cut to its longest sentence keeps
    # every real token
    for i, r in enumerate(rows):
        if not 0 < len(r) <= max_len:
            raise DataError(f"tokenizer {type(tokenizer).__name__} gave {len(r)} tokens for "
                            f"sentence {i} at max_len {max_len}")
        span = slice(0, len(r))
        ids[i, span] = r
        mask[i, span] = 1
    if truncated:
        warnings.warn(f"{truncated} of {len(sentences)} sentences were truncated to {max_len} "
                      f"positions", TruncationWarning, stacklevel=2)
    return Tokenized(ids, mask, mask.sum(axis=1), int(truncated))


def distillation_corpus(teacher, corpus, heldout_fraction: float, max_sentences, max_len: int,
                        seed: int):
    """(train Tokenized, train sentences, held-out sentences) of ``corpus`` (None: Debian's
    fortunes): the held-out split by hash, the training sentences a seeded sample of at most
    ``max_sentences``, tokenized to ``max_len`` with the teacher's tokenizer."""
    sentences = read_sentences(corpus)
    try:
        train, heldout = split_heldout(sentences, heldout_fraction)
    except DataError as exc:
        raise DataError(f"corpus {corpus or 'fortunes'}: {exc}") from None
    if max_sentences is not None and len(train) > max_sentences:
        pick = np.random.default_rng(seed).permutation(len(train))[:max_sentences]
        train = [train[i] for i in sorted(pick)]
    return teacher.tokenize(train, max_len), train, heldout


def recorded_split(info: dict, folder) -> tuple[list[str], list[str], str]:
    """A run's corpus split as convert made it (``info``: its convert.json, which records
    ``corpus`` and ``heldout_fraction``; a corpus path as given or relative to the run
    ``folder`` or a parent): (training sentences, held-out sentences, the corpus read)."""
    from archnet.runs import SUMMARY_FILE, resolve_recorded
    folder = Path(folder)
    corpus = info.get("corpus") or "fortunes"
    source = corpus
    if corpus != "fortunes":
        found = resolve_recorded(str(corpus), folder)
        if found is None:
            raise DataError(f"{corpus}: the corpus convert used is gone (named by "
                            f"{folder / SUMMARY_FILE}; looked there and relative to {folder} and its parents)")
        source = str(found)
    train, heldout = split_heldout(read_sentences(source), float(info["heldout_fraction"]))
    return train, heldout, source


def recorded_heldout(info: dict, folder, max_sentences: int | None
                     ) -> tuple[list[str], int, str]:
    """The held-out sentences of a run as convert split them (``recorded_split``): (the first
    ``max_sentences`` of them, None: all; how many are held out; the corpus read)."""
    _train, heldout, source = recorded_split(info, folder)
    picked = heldout if max_sentences is None else heldout[:max_sentences]
    return picked, len(heldout), source


__all__ = ["FORTUNES_DIR", "Tokenized", "TruncationWarning", "distillation_corpus",
           "read_sentences", "recorded_heldout", "recorded_split", "split_heldout", "tokenize"]
