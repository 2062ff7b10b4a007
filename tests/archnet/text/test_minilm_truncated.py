"""The real all-MiniLM-L6-v2, truncated to its first layers and short sequences so that CI runs
it in seconds: lowered, distilled on fortunes with the simulator in the loop, bit-exact on the
simulator, and free of LayerNorm, Embedding and GELU ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from archnet.text.corpus import FORTUNES_DIR, read_sentences, split_heldout
from archnet.text.distill import TextDistillConfig, distill_text
from archnet.text.lowering import lower_bert, student_config
from archnet.text.student import two_hot
from simulator.constraints import place
from simulator.execute import execute
from simulator.profiles import load_profile

LAYERS, MAX_LEN = 2, 16
ALLOWED = {"fully_connected", "requantize", "matmul", "softmax", "lookup_table", "add", "reshape",
           "transpose"}


@pytest.fixture(scope="module")
def sentences():
    if not FORTUNES_DIR.is_dir():
        pytest.skip("Debian fortunes is not installed (apt-get install fortunes)")
    train, heldout = split_heldout(read_sentences())
    return train[:48], heldout[:8]


def test_truncated_minilm_distils_and_runs_bit_exact(minilm, sentences, tmp_path):
    chip = load_profile("ethos-u55-128")
    train, heldout = sentences
    with pytest.warns(UserWarning, match="truncated to 16 positions"):
        tok = minilm.tokenize(train, MAX_LEN)
    ids, mask = torch.as_tensor(tok.input_ids), torch.as_tensor(tok.attention_mask)
    cfg = student_config(minilm.config, MAX_LEN, 8, 8, chip, layers=LAYERS)
    student = lower_bert(minilm, cfg, ids[:32], mask[:32])
    result = distill_text(student, minilm, ids, mask, chip,
                          TextDistillConfig(steps_per_period=12, final_steps=4, batch_size=8,
                                            lr=2e-4, sim_batch=16, progress=False),
                          tmp_path, log=lambda _m: None)
    # every layer's period lowers its loss clearly
    for h in result.history[:-1]:
        assert h["loss_last"] < 0.9 * h["loss_first"], h

    with pytest.warns(UserWarning, match="truncated"):
        ev = minilm.tokenize(heldout, MAX_LEN)
    ev_ids, ev_mask = torch.as_tensor(ev.input_ids), torch.as_tensor(ev.attention_mask)
    program = student.export(len(heldout), MAX_LEN)
    kinds = {n.op.value for n in program.nodes}
    assert kinds <= ALLOWED and "lookup_table" in kinds, kinds
    assert not any(p.on_host for p in place(program, chip))
    sim = execute(program, chip, {"tokens": two_hot(ev.input_ids, cfg.vocab_size, MAX_LEN),
                                  "attention_mask": ev.attention_mask.astype(np.uint8)}).outputs
    emu = student.integer_features(ev_ids, ev_mask, chip.arithmetic)
    for name, q in zip(program.outputs, emu, strict=True):
        assert np.array_equal(sim[name], q.value.numpy()), name
