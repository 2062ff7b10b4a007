"""Blockwise distillation of the text student from a tiny BERT, with the simulator in the loop:
it lowers the loss and lifts the sentence embedding's cosine, the student stays bit-exact, a run
killed (or whose last checkpoints are lost) and resumed trains exactly the weights of an
uninterrupted one, a resume with other settings is refused, and a NaN loss stops the run with
the last good checkpoint kept."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from archnet.errors import DistillError
from simulator.execute import execute
from simulator.profiles import load_profile

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from archnet.distill.checkpoint import load_checkpoint  # noqa: E402
from archnet.torchfile import save_torch  # noqa: E402
from archnet.text.distill import (SentenceBatches, SimulatorPrefix, TextDistillConfig,  # noqa: E402
                                  distill_text)
from archnet.text.lowering import lower_bert, student_config  # noqa: E402
from archnet.text.student import pooled, two_hot  # noqa: E402

CHIP = "ethos-u55-128"
MAX_LEN = 16
WORDS = ("the a cat dog sat on mat and ran far away quick brown fox jumps over lazy sleeps under "
         "tree").split()


def _sentences(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(3, 12)))) for _ in range(count)]


@pytest.fixture(scope="module")
def teacher(tiny_bert_dir):
    """This module's own copy of the tiny BERT: distillation must see the teacher exactly as
    loaded (eval mode, deterministic), whatever other tests did to the shared one."""
    from archnet.text.teacher import load_text_teacher
    return load_text_teacher(tiny_bert_dir)


@pytest.fixture(scope="module")
def corpus(teacher):
    tok = teacher.tokenize(_sentences(32), MAX_LEN)
    return torch.as_tensor(tok.input_ids), torch.as_tensor(tok.attention_mask)


@pytest.fixture(scope="module")
def chip():
    return load_profile(CHIP)


def _fresh(teacher, corpus, chip, bits: int = 8):
    """A newly lowered student, as a new process would make it."""
    ids, mask = corpus
    cfg = student_config(teacher.config, MAX_LEN, bits, bits, chip)
    return lower_bert(teacher, cfg, ids[:16], mask[:16])


def _cfg(**kw) -> TextDistillConfig:
    base = dict(steps_per_period=3, final_steps=3, batch_size=8, lr=1e-3, progress=False, seed=0)
    base.update(kw)
    return TextDistillConfig(**base)


def _quiet(_line: str) -> None:
    pass


def _simulated_last_block(student, chip, ids, mask) -> np.ndarray:
    n, t = ids.shape
    program = student.export(n, t)
    out = execute(program, chip, {"tokens": two_hot(ids.numpy(), student.cfg.vocab_size,
                                                    student.cfg.max_positions),
                                  "attention_mask": mask.numpy().astype(np.uint8)}, trace=False)
    emulated = student.integer_features(ids, mask, chip.arithmetic)
    for name, q in zip(program.outputs, emulated, strict=True):
        assert np.array_equal(out.outputs[name], q.value.numpy()), name
    return out.outputs[program.outputs[-1]]


def _chip_cosine(student, teacher, chip, ids, mask) -> float:
    """Mean cosine of the pooled sentence embedding the chip computes and the teacher's."""
    stream = _simulated_last_block(student, chip, ids, mask)
    x = torch.from_numpy(stream.astype(np.float64)) * float(student.stream_quant(student.num_blocks - 1).step())
    emb = pooled(x, mask)
    return float(torch.nn.functional.cosine_similarity(
        emb, teacher.forward(ids, mask).embedding.double()).mean())


def _period_files(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Teacher:
    """The teacher as distillation sees it, with a hook on each forward (the test's control)."""

    def __init__(self, teacher, on_forward):
        self._teacher, self._on_forward = teacher, on_forward
        self.fingerprint = teacher.fingerprint
        self.config = teacher.config
        self.calls = 0

    def forward(self, ids, mask):
        self.calls += 1
        return self._on_forward(self.calls, self._teacher.forward(ids, mask))

    __call__ = forward


# ----------------------------------------------------------------------------- quality

def test_distillation_lowers_the_loss_and_lifts_the_chip_embedding(teacher, corpus, chip,
                                                                  tmp_path):
    ids, mask = corpus
    student = _fresh(teacher, corpus, chip)
    before = _chip_cosine(student, teacher, chip, ids, mask)
    lines: list[str] = []
    result = distill_text(student, teacher, ids, mask, chip,
                          _cfg(steps_per_period=20, final_steps=20), tmp_path, log=lines.append)
    after = _chip_cosine(student, teacher, chip, ids, mask)   # also bit-exact, every block
    history = result.history
    assert [h["blocks"] for h in history] == [[0, 0], [0, 1], [1, 2], [1, 2]]
    assert [h["final"] for h in history] == [False, False, False, True]
    assert [h["period"] for h in history] == [1, 2, 3, 4]
    for h in history:
        assert np.isfinite(h["loss_first"]) and np.isfinite(h["loss_last"])
        assert h["loss_last"] < h["loss_first"], h
    assert history[0]["loss_last"] < 0.7 * history[0]["loss_first"], history[0]
    assert after >= before, (before, after)
    # window 2: the embedding block ran on the simulator for period 3, once
    assert sum("simulator: block embedding" in line for line in lines) == 1
    assert result.simulator_seconds > 0 and result.train_seconds > 0
    assert _period_files(tmp_path) == [f"period_{k:02d}.pt" for k in range(4)]
    assert not student.training
    assert all(p.requires_grad for p in student.parameters())


def test_without_the_simulator_in_the_loop(teacher, corpus, chip, tmp_path):
    """The ablation trains too; the two runs agree while no block is frozen, then the window
    reads the simulator's integers in one and the fake-quant prefix in the other."""
    ids, mask = corpus
    lines: list[str] = []
    plain = _fresh(teacher, corpus, chip)
    res = distill_text(plain, teacher, ids, mask, chip, _cfg(simulator_in_loop=False),
                       tmp_path / "plain", log=lines.append)
    assert res.simulator_seconds == 0
    assert not any("simulator:" in line for line in lines)
    assert len(res.history) == 4 and all(np.isfinite(h["loss_last"]) for h in res.history)
    _simulated_last_block(plain, chip, ids[:4], mask[:4])        # still bit-exact
    looped = _fresh(teacher, corpus, chip)
    distill_text(looped, teacher, ids, mask, chip, _cfg(), tmp_path / "loop", log=_quiet)
    for period, same in ((0, True), (1, True), (2, False)):
        a = load_checkpoint(tmp_path / "plain" / "checkpoints" / f"period_{period:02d}.pt")
        b = load_checkpoint(tmp_path / "loop" / "checkpoints" / f"period_{period:02d}.pt")
        assert _states_equal(a["state_dict"], b["state_dict"]) is same, period


# ----------------------------------------------------------------------------- resume

@pytest.fixture(scope="module")
def uninterrupted(teacher, corpus, chip, tmp_path_factory):
    run = tmp_path_factory.mktemp("full")
    student = _fresh(teacher, corpus, chip, bits=4)
    result = distill_text(student, teacher, *corpus, chip, _cfg(), run, log=_quiet)
    return run, student.state_dict(), result.history


def _same_history(a: list[dict], b: list[dict]) -> None:
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b]


def test_killed_mid_period_and_resumed_trains_the_same_weights(teacher, corpus, chip,
                                                             uninterrupted, tmp_path):
    full_dir, full_state, full_history = uninterrupted

    def kill(call, out):
        if call == 3 + 3 + 2:        # period 3, step 2
            raise KeyboardInterrupt
        return out
    with pytest.raises(KeyboardInterrupt):
        distill_text(_fresh(teacher, corpus, chip, bits=4), _Teacher(teacher, kill),
                     *corpus, chip, _cfg(), tmp_path, log=_quiet)
    assert _period_files(tmp_path) == ["period_00.pt", "period_01.pt"]

    lines: list[str] = []
    student = _fresh(teacher, corpus, chip, bits=4)     # nothing survives but the files
    result = distill_text(student, teacher, *corpus, chip, _cfg(), tmp_path, resume=True,
                          log=lines.append)
    assert any("resume: period 2 complete in period_01.pt" in line for line in lines)
    assert _states_equal(student.state_dict(), full_state)
    for period in range(4):
        name = f"period_{period:02d}.pt"
        a = load_checkpoint(full_dir / "checkpoints" / name)
        b = load_checkpoint(tmp_path / "checkpoints" / name)
        assert _states_equal(a["state_dict"], b["state_dict"]), name
    _same_history(result.history, full_history)


def test_lost_last_checkpoints_are_retrained_the_same(teacher, corpus, chip, uninterrupted,
                                                     tmp_path):
    full_dir, full_state, full_history = uninterrupted
    student = _fresh(teacher, corpus, chip, bits=4)
    distill_text(student, teacher, *corpus, chip, _cfg(), tmp_path, log=_quiet)
    for period in (2, 3):                                     # a kill before they were written
        (tmp_path / "checkpoints" / f"period_{period:02d}.pt").unlink()
    student = _fresh(teacher, corpus, chip, bits=4)
    result = distill_text(student, teacher, *corpus, chip, _cfg(), tmp_path, resume=True,
                          log=_quiet)
    assert _states_equal(student.state_dict(), full_state)
    _same_history(result.history, full_history)
    # a resume of a finished run trains nothing and leaves the finished weights
    student = _fresh(teacher, corpus, chip, bits=4)
    result = distill_text(student, teacher, *corpus, chip, _cfg(), tmp_path, resume=True,
                          log=_quiet)
    assert _states_equal(student.state_dict(), full_state)
    assert result.simulator_seconds == 0
    _same_history(result.history, full_history)


def test_resume_with_other_settings_is_refused(teacher, corpus, chip, tmp_path):
    ids, mask = corpus
    cfg = _cfg(steps_per_period=1, final_steps=0)
    distill_text(_fresh(teacher, corpus, chip), teacher, ids, mask, chip, cfg, tmp_path,
                 log=_quiet)
    assert _period_files(tmp_path) == ["period_00.pt", "period_01.pt", "period_02.pt"]
    before = {p: _digest(tmp_path / "checkpoints" / p) for p in _period_files(tmp_path)}
    other_chip = load_profile("rk3588-npu-core")
    attempts = {
        "lr": lambda: distill_text(_fresh(teacher, corpus, chip), teacher, ids, mask,
                                   chip, _cfg(steps_per_period=1, final_steps=0, lr=5e-2),
                                   tmp_path, resume=True, log=_quiet),
        "seed": lambda: distill_text(_fresh(teacher, corpus, chip), teacher, ids, mask,
                                     chip, _cfg(steps_per_period=1, final_steps=0, seed=1),
                                     tmp_path, resume=True, log=_quiet),
        "data": lambda: distill_text(_fresh(teacher, corpus, chip), teacher, ids[:24],
                                     mask[:24], chip, cfg, tmp_path, resume=True, log=_quiet),
        "bits": lambda: distill_text(_fresh(teacher, corpus, chip, bits=4), teacher,
                                     ids, mask, chip, cfg, tmp_path, resume=True, log=_quiet),
        "chip": lambda: distill_text(_fresh(teacher, corpus, other_chip), teacher, ids,
                                     mask, other_chip, cfg, tmp_path, resume=True, log=_quiet),
    }
    for what, attempt in attempts.items():
        with pytest.raises(DistillError) as info:
            attempt()
        message = str(info.value)
        assert "period_02.pt" in message and "refusing to resume" in message, what
        assert "\n" not in message
    assert before == {p: _digest(tmp_path / "checkpoints" / p) for p in _period_files(tmp_path)}
    # the same settings resume (a finished run: nothing left to train)
    distill_text(_fresh(teacher, corpus, chip), teacher, ids, mask, chip, cfg, tmp_path,
                 resume=True, log=_quiet)


def test_a_checkpoint_of_another_kind_is_refused(teacher, corpus, chip, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    save_torch({"format": "archnet-distill-checkpoint", "period": 0},
               tmp_path / "checkpoints" / "period_00.pt")
    with pytest.raises(DistillError, match="not a text distillation checkpoint"):
        distill_text(_fresh(teacher, corpus, chip), teacher, *corpus, chip, _cfg(),
                     tmp_path, resume=True, log=_quiet)


# ----------------------------------------------------------------------------- NaN

def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(teacher, corpus, chip, tmp_path):
    kept_file = tmp_path / "checkpoints" / "period_01.pt"
    digest_before = []

    def poison(call, out):
        if call == 3 + 3 + 1:                       # period 3 begins: period 2's file is final
            digest_before.append(_digest(kept_file))
        # layer 1's hidden state: a target of period 3 only (periods 1-2 train blocks 0..1)
        hidden = list(out.hidden_states)
        hidden[2] = torch.full_like(hidden[2], float("nan"))
        return type(out)(tuple(hidden), out.attentions, out.embedding)
    ids, mask = corpus
    with pytest.raises(DistillError) as info:
        distill_text(_fresh(teacher, corpus, chip), _Teacher(teacher, poison), ids, mask,
                     chip, _cfg(), tmp_path, log=_quiet)
    message = str(info.value)
    assert message.startswith("period 3, step 1: loss is nan") and "\n" not in message
    assert _period_files(tmp_path) == ["period_00.pt", "period_01.pt"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert digest_before == [_digest(kept_file)]    # untouched by the failed period
    kept = load_checkpoint(kept_file)
    assert kept["period"] == 1 and [h["period"] for h in kept["history"]] == [1, 2]
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    # the kept checkpoint is the run's: resuming with a sound teacher finishes it, and trains
    # what an uninterrupted run trains
    resumed = _fresh(teacher, corpus, chip)
    distill_text(resumed, teacher, ids, mask, chip, _cfg(), tmp_path, resume=True, log=_quiet)
    full = _fresh(teacher, corpus, chip)
    distill_text(full, teacher, ids, mask, chip, _cfg(), tmp_path / "full", log=_quiet)
    assert _states_equal(resumed.state_dict(), full.state_dict())


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("change, needle", [
    ({"batch_size": 0}, "batch_size 0 must be >= 1"),
    ({"window": 0}, "window 0 must be >= 1"),
    ({"steps_per_period": -1}, "steps_per_period -1 must be >= 0"),
    ({"lr": 0.0}, "lr 0.0 must be > 0"),
])
def test_bad_settings_name_the_field(change, needle):
    with pytest.raises(DistillError) as info:
        TextDistillConfig(**change).check()
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_fewer_sentences_than_a_batch_is_refused(teacher, corpus, chip, tmp_path):
    ids, mask = corpus
    with pytest.raises(DistillError, match="4 distillation sentences < batch size 8"):
        distill_text(_fresh(teacher, corpus, chip), teacher, ids[:4], mask[:4], chip,
                     _cfg(), tmp_path, log=_quiet)


# ----------------------------------------------------------------------------- teacher mode

def test_the_teacher_stays_in_eval_mode_so_its_targets_are_fixed(tiny_bert_dir, corpus, chip,
                                                                 tmp_path):
    """Distillation targets come from the teacher in eval mode (BERT's dropout off): the same
    batch gives the same hidden states every time, before and after anything else archnet does
    with the teacher (costing its float graph, lowering, distilling)."""
    from archnet.text.teacher import load_text_teacher
    from archnet.text.teacher_graph import teacher_program
    own = load_text_teacher(tiny_bert_dir)
    ids, mask = corpus[0][:4], corpus[1][:4]
    first = own.forward(ids, mask).hidden_states
    distill_text(_fresh(own, corpus, chip), own, *corpus, chip,
                 _cfg(steps_per_period=1, final_steps=1), tmp_path, log=_quiet)
    assert not own.model.training
    teacher_program(own, MAX_LEN)
    assert not own.model.training, "costing the teacher's graph left it in training mode"
    again = own.forward(ids, mask).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


# ----------------------------------------------------------------------------- padding side

@pytest.fixture(scope="module")
def left_padding_teacher(tiny_bert_dir, tmp_path_factory):
    """The tiny BERT with a tokenizer that pads on the left (``archnet.text.corpus.tokenize``
    honours ``padding_side``: real tokens at the end of each row)."""
    from archnet.text.teacher import load_text_teacher
    folder = shutil.copytree(tiny_bert_dir, tmp_path_factory.mktemp("left") / "bert")
    config_file = folder / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "padding_side": "left"}))
    return load_text_teacher(folder)


def test_a_left_padding_tokenizer_loses_no_real_token(left_padding_teacher, chip, tmp_path):
    tok = left_padding_teacher.tokenize(_sentences(16), MAX_LEN)
    ids, mask = torch.as_tensor(tok.input_ids), torch.as_tensor(tok.attention_mask)
    # right-padded whatever the tokenizer's padding_side (positions count from the first token)
    assert bool(mask[:, 0].all()) and not bool(mask[:, -1].all())
    batches = SentenceBatches(ids, mask)
    for idx in batches.chunks(8):
        cut_ids, cut_mask, t = batches.cut(idx)
        assert int(cut_mask.sum()) == int(mask[idx].sum()), \
            f"a batch cut to {t} positions keeps {int(cut_mask.sum())} of {int(mask[idx].sum())} real tokens"
    cfg = student_config(left_padding_teacher.config, MAX_LEN, 8, 8, chip)
    student = lower_bert(left_padding_teacher, cfg, ids, mask)
    result = distill_text(student, left_padding_teacher, ids, mask, chip, _cfg(), tmp_path,
                          log=_quiet)
    assert all(np.isfinite(h["loss_last"]) for h in result.history)


# ----------------------------------------------------------------------------- attention maps

def test_attention_kl_is_zero_on_the_teachers_map_and_ignores_padding():
    from archnet.text.distill import _attention_kl
    from archnet.text.modules import attention_log_probs
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 5, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    keys = mask[:, None, None, :]
    teacher_map = torch.softmax(scores.masked_fill(keys == 0, float("-inf")), dim=-1)
    valid = mask.bool()
    same = _attention_kl(attention_log_probs(scores, keys), teacher_map, valid)
    assert torch.isfinite(same) and abs(float(same)) < 1e-6     # teacher zeros on padded keys
    other = _attention_kl(attention_log_probs(scores.flip(-1), keys), teacher_map, valid)
    assert float(other) > 0.01
    # padded query rows are not averaged in: changing their scores changes nothing
    changed = scores.clone()
    changed[1, :, 3:] = 100.0
    assert torch.equal(_attention_kl(attention_log_probs(changed, keys), teacher_map, valid), same)


def test_teacher_runs_once_per_batch_per_period_and_maps_are_distilled(teacher, corpus, chip,
                                                                        tmp_path):
    """32 sentences in 4 batches, 8 steps a period: 2 epochs, 4 teacher calls, not 8. The KL
    to the teacher's attention maps is in an encoder block's loss, not the embedding's."""
    ids, mask = corpus
    counted = _Teacher(teacher, lambda call, out: out)
    cfg = dict(steps_per_period=8, final_steps=0, simulator_in_loop=False)
    with_maps = distill_text(_fresh(teacher, corpus, chip), counted, ids, mask, chip,
                             _cfg(attention_weight=1.0, **cfg), tmp_path / "maps", log=_quiet)
    periods = len(with_maps.history)
    assert counted.calls == 4 * periods
    plain = distill_text(_fresh(teacher, corpus, chip), teacher, ids, mask, chip,
                         _cfg(attention_weight=0.0, **cfg), tmp_path / "plain", log=_quiet)
    first_maps = [h["loss_first"] for h in with_maps.history]
    first_plain = [h["loss_first"] for h in plain.history]
    assert first_maps[0] == first_plain[0]                          # the embedding period
    assert first_maps[1] > first_plain[1]     # layer 0, from the same start: MSE + KL > MSE


# ----------------------------------------------------------------------------- simulator prefix

def test_a_period_starting_lower_down_reruns_the_prefix_from_the_tokens(teacher, corpus, chip):
    """The sentence-embedding period starts at layer 0 after windows that ended higher up: it
    must be fed the embedding's output, not the cached output of a later block."""
    student = _fresh(teacher, corpus, chip)
    data = SentenceBatches(*corpus)
    lines: list[str] = []
    prefix = SimulatorPrefix(student, chip, data, _cfg(), lines.append)
    prefix.advance_to(1)
    assert prefix.block == 1
    prefix.advance_to(0)
    fresh = SimulatorPrefix(student, chip, data, _cfg(), _quiet)
    fresh.advance_to(0)
    assert prefix.block == 0 and np.array_equal(prefix.stream, fresh.stream)
    assert [line.split(" on ")[0] for line in lines] == [
        "  simulator: block embedding", "  simulator: block layer0", "  simulator: block embedding"]


def test_every_period_reads_the_simulator_output_of_the_block_before_it(teacher, corpus, chip,
                                                                         tmp_path):
    """Windows of one block, then the sentence-embedding period from layer 0: the log names the
    block the simulator ran for each period, in order."""
    ids, mask = corpus
    lines: list[str] = []
    distill_text(_fresh(teacher, corpus, chip), teacher, ids, mask, chip, _cfg(window=1),
                 tmp_path, log=lines.append)
    ran = [line.split("block ")[1].split(" on ")[0] for line in lines if "simulator:" in line]
    assert ran == ["embedding", "layer0", "embedding"]


def test_chip_values_change_what_the_window_trains_on(teacher, corpus, chip, tmp_path):
    """``chip_values`` reaches the trained blocks: with it the first encoder period trains on the
    chip's integers (TFLite's double rounding) and ends at other weights than without it."""
    ids, mask = corpus
    cfg = dict(final_steps=0, simulator_in_loop=False)
    for name, on in (("chip", True), ("float", False)):
        distill_text(_fresh(teacher, corpus, chip, bits=4), teacher, ids, mask, chip,
                     _cfg(chip_values=on, **cfg), tmp_path / name, log=_quiet)
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "period_01.pt")["state_dict"]
            for name in ("chip", "float"))
    assert not _states_equal(a, b)
