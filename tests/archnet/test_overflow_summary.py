"""``simulator.overflow``: the accumulator statistics ``archnet verify`` sums over a run and the
words it says them in (no network: hand-made stats)."""

from __future__ import annotations

import json

from simulator.contract import AccumulatorSpec, Overflow, SaturationPoint
from simulator.numerics.fixed_point import OverflowStats
from simulator.overflow import OverflowSummary, format_table, merge_stats


def test_merge_sums_events_and_outputs_and_keeps_the_widest():
    total: dict = {}
    merge_stats(total, {"a": OverflowStats(1, 10, 9), "b": OverflowStats(0, 4, 7)})
    merge_stats(total, {"a": OverflowStats(2, 10, 12), "b": OverflowStats(0, 4, 6)})
    assert list(total) == ["a", "b"]
    assert total["a"] == OverflowStats(3, 20, 12) and total["b"] == OverflowStats(0, 8, 7)


def test_wrapping_summary_words_table_and_json():
    acc = AccumulatorSpec(8, Overflow.WRAP)
    s = OverflowSummary.of(acc, {"conv1": OverflowStats(0, 100, 7),
                                 "conv2": OverflowStats(1234, 5000, 19),
                                 "fc": OverflowStats(10, 10, 11)})
    assert (s.events, s.outputs, s.safe_bits) == (1244, 5110, 19)
    assert [r.name for r in s.overflowed] == ["conv2", "fc"]
    assert s.sentence() == ("the chip's 8-bit accumulator WRAPPED in 1,244 of 5,110 outputs in "
                            "2 of 3 MAC layers; a 19-bit accumulator would have been safe for "
                            "these inputs")
    lines = s.lines()
    assert lines[0] == "accumulator overflow (8-bit, wraps): WRAPPED in 2 of 3 MAC layers"
    assert [ln.split()[0] for ln in lines[2:]] == ["conv2", "fc"]
    assert lines[2].split()[1:5] == ["5,000", "1,234", "8", "19"]
    assert all(ln.endswith("<- overflow") for ln in lines[2:])
    doc = json.loads(json.dumps(s.to_dict()))
    assert doc["wrapped"] and not doc["saturated"] and doc["layers_overflowed"] == 2
    assert [r["fits"] for r in doc["layers"]] == [True, False, False]
    assert OverflowSummary.from_dict(doc) == s


def test_saturating_and_clean_summaries():
    per_mac = AccumulatorSpec(16, Overflow.SATURATE, SaturationPoint.PER_MAC)
    s = OverflowSummary.of(per_mac, {"mm": OverflowStats(3, 8, 18)})
    assert s.sentence().startswith("the chip's 16-bit accumulator SATURATED (after every MAC) "
                                   "in 3 of 8 outputs in 1 of 1 MAC layer; an 18-bit")
    assert s.lines()[0].startswith("accumulator overflow (16-bit, saturates after every MAC)")
    clean = OverflowSummary.of(AccumulatorSpec(32, Overflow.WRAP), {"mm": OverflowStats(0, 8, 15)})
    assert clean.sentence() == ("no accumulator overflow: the chip's 32-bit accumulator held all "
                                "8 outputs of 1 MAC layer exactly (15 bits would have been enough "
                                "for these inputs)")
    assert clean.lines() == ["accumulator overflow (32-bit, wraps)",
                             "  none in 1 MAC layer (8 outputs); the widest needed 15 of 32 bits"]
    assert not clean.to_dict()["overflowed"]


def test_table_matches_simulate_columns():
    rows = format_table([("a_rather_long_mac_op_name_here", 5, 0, 7)], 32)
    assert rows[0].split() == ["MAC", "op", "outputs", "overflows", "acc", "bits", "safe", "bits"]
    assert rows[1].split() == ["a_rather_long_mac_op_name_here", "5", "0", "32", "7"]
