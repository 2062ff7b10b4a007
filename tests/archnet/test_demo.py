"""``archnet demo``, the README's first command: the whole loop on digits in about a minute."""

import json

from archnet.cli import main


def test_demo_converts_verifies_on_four_chips_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "demo.json").read_text())
    assert len(result["chips"]) >= 3
    for chip in result["chips"]:
        assert chip["bit_exact"] and chip["elements_matched"] == chip["elements_total"] > 0
        assert chip["simulator_accuracy"] >= 0.9, chip       # chance is 0.1
    # native first: the student holds the ops of the chip it was converted for (other chips may
    # run one of them on the host, which verify reports)
    converted = next(c for c in result["chips"] if c["chip"] == result["converted_for"])
    assert converted["fallback_count"] == 0
    report = out / "run" / "report"
    assert (report / "report.md").is_file() and list(report.glob("*.png"))
    assert str(report) in printed and "bit-exact" in printed
    assert result["seconds"] < 300
    # converted for a chip where the Arch-Net beats its teacher, and the summary says by how much
    assert result["archnet_latency_ms"] < result["teacher_latency_ms"]
    assert result["teacher_fallbacks"] > 0 and "x faster" in printed
