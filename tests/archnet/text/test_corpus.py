"""Corpora (fortunes and text files), the held-out split, and fixed-length tokenization."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from archnet.errors import DataError
from archnet.text import corpus
from archnet.text.corpus import TruncationWarning, read_sentences, split_heldout, tokenize

HAS_FORTUNES = corpus.FORTUNES_DIR.is_dir()
needs_fortunes = pytest.mark.skipif(not HAS_FORTUNES, reason=f"Debian fortunes not installed "
                                    f"({corpus.FORTUNES_DIR}): apt-get install fortunes")


def _write(path, text: str | bytes):
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- text files

def test_text_file_one_sentence_a_line(tmp_path):
    path = _write(tmp_path / "s.txt", "  The cat   sat on\tthe mat.  \n\nToo short\n"
                                      "Ünïcode words stay intact.\nThe cat sat on the mat.\n"
                                      "The  cat sat on the mat.\r\nthree words here\n")
    assert read_sentences(path) == ["The cat sat on the mat.", "Ünïcode words stay intact.",
                                    "three words here"]
    assert read_sentences(str(path)) == read_sentences(path)


@pytest.mark.parametrize("make,expected", [
    (lambda d: d / "nope.txt", "no such corpus file"),
    (lambda d: d, "not a file"),
    (lambda d: _write(d / "latin1.txt", "caf\xe9 au lait ok\n".encode("latin-1")), "not UTF-8"),
    (lambda d: _write(d / "short.txt", "one two\n\nthree\n"),
     "is empty (no line with 3 or more words)"),
])
def test_text_file_errors_are_one_line_naming_the_file(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        read_sentences(path)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_empty_corpus_message(tmp_path):
    path = _write(tmp_path / "e.txt", "\n  \nhi there\n")
    with pytest.raises(DataError, match=rf"^corpus {path} is empty \(no line with 3 or more "
                                        rf"words\)$"):
        read_sentences(path)


# ----------------------------------------------------------------------------- fortunes

def test_fortune_files_parsed_in_name_order(tmp_path, monkeypatch):
    _write(tmp_path / "b", "Second file first entry here.\n%\nA multi-line\n   entry that "
                           "continues.\n%\nshort one\n%\n")
    _write(tmp_path / "a", "Alpha entry one.\n%\n%\nSecond file first entry here.\n")
    _write(tmp_path / "a.dat", b"\x00\x00\x00\x02 binary index")
    os.symlink("a", tmp_path / "a.u8")
    (tmp_path / "off").mkdir()
    _write(tmp_path / "off" / "offensive", "Never read from the off folder.\n")
    monkeypatch.setattr(corpus, "FORTUNES_DIR", tmp_path)
    expected = ["Alpha entry one.", "Second file first entry here.",
                "A multi-line entry that continues."]
    assert read_sentences() == expected
    assert read_sentences("fortunes") == expected


def test_missing_fortunes_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "FORTUNES_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match=r"apt-get install fortunes.*text file"):
        read_sentences()


@needs_fortunes
def test_debian_fortunes():
    sentences = read_sentences()
    assert len(sentences) > 1000
    assert len(set(sentences)) == len(sentences)
    assert all(len(s.split()) >= 3 and s == " ".join(s.split()) for s in sentences)
    assert not any(s == "%" for s in sentences)
    assert read_sentences("fortunes") == sentences  # deterministic


# ----------------------------------------------------------------------------- held-out split

SENTENCES = [f"sentence number {i} of the corpus" for i in range(2000)]


def test_heldout_split_is_stable_under_additions():
    train, heldout = split_heldout(SENTENCES, 0.1)
    assert sorted(train + heldout) == sorted(SENTENCES) and not set(train) & set(heldout)
    assert 150 < len(heldout) < 250
    assert train == [s for s in SENTENCES if s in set(train)]  # input order kept
    # a sentence's side does not depend on the others
    sub_train, sub_heldout = split_heldout(SENTENCES[::3], 0.1)
    assert set(sub_heldout) == set(heldout) & set(SENTENCES[::3])
    assert set(sub_train) == set(train) & set(SENTENCES[::3])
    # a larger fraction only adds to the held-out part
    assert set(heldout) <= set(split_heldout(SENTENCES, 0.2)[1])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_heldout_fraction_out_of_range(fraction):
    with pytest.raises(DataError, match="heldout_fraction"):
        split_heldout(SENTENCES, fraction)


def test_heldout_split_too_small():
    with pytest.raises(DataError, match="held-out part of 1 sentences is empty"):
        split_heldout([next(s for s in SENTENCES if s not in split_heldout(SENTENCES)[1])])


# ----------------------------------------------------------------------------- tokenize

def test_recorded_heldout_is_the_split_convert_made(tmp_path):
    """A run's held-out sentences: its corpus (as recorded, or relative to the run folder) split
    at its fraction; a corpus that is gone is one line naming it."""
    from archnet.text.corpus import recorded_heldout
    (tmp_path / "run").mkdir()
    path = _write(tmp_path / "run" / "c.txt", "\n".join(SENTENCES) + "\n")
    want = split_heldout(SENTENCES, 0.1)[1]
    info = {"corpus": "c.txt", "heldout_fraction": 0.1}
    picked, total, source = recorded_heldout(info, tmp_path / "run", 3)
    assert picked == want[:3] and total == len(want) and source == str(path)
    assert recorded_heldout({**info, "corpus": str(path)}, tmp_path, None)[0] == want
    with pytest.raises(DataError, match="gone.txt: the corpus convert used is gone"):
        recorded_heldout({**info, "corpus": "gone.txt"}, tmp_path / "run", None)


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_bert_dir, local_files_only=True)


def test_tokenize_pads_to_max_len(tokenizer):
    sents = ["the cat sat on the mat", "a dog ran far away"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing truncated: no warning
        tok = tokenize(tokenizer, sents, 10)
    assert tok.input_ids.dtype == np.int64 and tok.attention_mask.dtype == np.int64
    assert tok.input_ids.shape == tok.attention_mask.shape == (2, 10) and len(tok) == 2
    assert tok.lengths.tolist() == [8, 7] and tok.truncated == 0 and tok.max_len == 10
    for row, sent in enumerate(sents):
        ids = tokenizer(sent)["input_ids"]  # [CLS] ... [SEP] as the tokenizer writes them
        n = len(ids)
        assert tok.input_ids[row, :n].tolist() == ids
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert (tok.input_ids[row, n:] == tokenizer.pad_token_id).all()
        assert tok.attention_mask[row].tolist() == [1] * n + [0] * (10 - n)


def test_tokenize_truncates_with_one_warning(tokenizer):
    sents = ["the quick brown fox jumps over the lazy dog", "a cat sat",
             "the dog sleeps under the tree and the cat sat on the mat"]
    with pytest.warns(TruncationWarning) as record:
        tok = tokenize(tokenizer, sents, 8)
    assert len(record) == 1
    assert str(record[0].message) == "2 of 3 sentences were truncated to 8 positions"
    assert tok.truncated == 2 and tok.lengths.tolist() == [8, 5, 8]
    assert tok.input_ids[0, -1] == tokenizer.sep_token_id  # cut, then closed by [SEP]
    # the same arrays as the tokenizer's own padding and truncation
    own = tokenizer(sents, truncation=True, max_length=8, padding="max_length",
                    return_tensors="np")
    assert np.array_equal(tok.input_ids, own["input_ids"])
    assert np.array_equal(tok.attention_mask, own["attention_mask"])
    # a sentence of exactly max_len tokens is not truncated
    exact = tokenize(tokenizer, ["the quick brown fox jumps over"], 8)
    assert exact.truncated == 0 and exact.lengths.tolist() == [8]


def test_tokenize_limits(tokenizer):
    with pytest.raises(DataError, match="max_len 41 is above the model's 40 positions"):
        tokenize(tokenizer, ["the cat sat"], 41)
    with pytest.raises(DataError, match="above the model's 16 positions"):
        tokenize(tokenizer, ["the cat sat"], 17, max_positions=16)
    with pytest.raises(DataError, match="at least 3"):
        tokenize(tokenizer, ["the cat sat"], 2)
    with pytest.raises(DataError, match="no sentences"):
        tokenize(tokenizer, [], 8)
