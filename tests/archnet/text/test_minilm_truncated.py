"""The real all-MiniLM-L6-v2, truncated to its first layers (``--layers``) and short sequences so
that CI runs it in seconds: converted by the shared pipeline on fortunes with the simulator in
the loop, bit-exact on the simulator on held-out sentences, nothing on the host, and free of
LayerNorm, Embedding and GELU ops."""

from __future__ import annotations

import json

import pytest

from archnet.cli import main
from archnet.text.corpus import FORTUNES_DIR
from simulator.constraints import place
from simulator.ir.program import load_program
from simulator.profiles import load_profile

LAYERS, MAX_LEN = 2, 16
CHIP = "ethos-u55-128"
ALLOWED = {"fully_connected", "conv2d", "requantize", "matmul", "softmax", "lookup_table", "add",
           "reshape", "transpose",
           "mean", "sub", "mul", "minimum",      # LayerNorm per token (layer_norm.per_token)
           "gather"}                             # the embedding's rows, looked up by the host


def test_truncated_minilm_converts_and_verifies_bit_exact(minilm, tmp_path, capsys):
    if not FORTUNES_DIR.is_dir():
        pytest.skip("Debian fortunes is not installed (apt-get install fortunes)")
    out = tmp_path / "run"
    assert main(["convert", "minilm", "--chip", CHIP, "--out", str(out), "--layers", str(LAYERS),
                 "--max-len", str(MAX_LEN), "--max-sentences", "48", "--steps-per-period", "24",
                 "--final-steps", "4", "--batch-size", "8", "--lr", "2e-4", "--threads", "1",
                 "--no-progress"]) == 0
    assert "truncated to 16 positions" in capsys.readouterr().out
    summary = json.loads((out / "convert.json").read_text())
    assert summary["teacher_layers"] == LAYERS and summary["fallbacks"] == 0
    assert summary["emulation_vs_simulator"]["agreement"] == 1.0
    assert [b["block"] for b in summary["blocks"]] == \
        ["model.embeddings", *[f"model.encoder.layer.{i}" for i in range(LAYERS)]]
    # every block's period lowers its loss (the last, sentence-embedding period is 4 steps),
    # but one that starts at the teacher already (the embedding looked up on the 16-bit
    # stream's grid, its LayerNorm fitted: 4e-5) has nothing to lower
    for h in summary["history"][:-1]:
        assert h["loss_last"] < h["loss_first"] or h["loss_first"] < 1e-4, h

    program = load_program(out / "model.program")
    kinds = {n.op.value for n in program.nodes}
    assert kinds <= ALLOWED and "lookup_table" in kinds, kinds
    chip = load_profile(CHIP)
    assert all(p.fallback_reason is None for p in place(program, chip))   # boundary work only

    record = tmp_path / "verify.json"
    assert main(["verify", str(out / "model.program"), "--chip", CHIP, "--max-sentences", "8",
                 "--out", str(record), "--no-progress"]) == 0
    doc = json.loads(record.read_text())
    assert doc["bit_exact"] and doc["teacher_layers"] == LAYERS and doc["fallback_count"] == 0
    assert doc["data"]["sentences"] == 8
