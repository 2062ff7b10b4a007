"""Label-free blockwise distillation with the simulator in the loop, on digits (small and fast).

The properties users rely on: the distilled student runs on the chip bit-exactly (archnet's
integer emulation = the simulator, every element), holds only the chip's ops, is far above
chance on the simulator's integer logits, never reads a label, and a run killed mid-period and
resumed trains exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from archnet.data import load_dataset
from archnet.distill.loop import DistillConfig, checkpoint_path, distill, latest_checkpoint
from archnet.errors import DistillError
from archnet.lowering import calibrate_activations, calibrate_batchnorm, convert_resnet
from archnet.lowering.check import violations
from archnet.teachers import load_teacher
from simulator.execute import execute
from simulator.profiles import load_profile

TEACHER = Path(__file__).resolve().parents[3] / "reports" / "teachers" / "digits_resnet8.pt"
CHIP = "k210-kpu"
ALLOWED_OPS = {"conv2d", "requantize", "maxpool2d", "concat", "flatten", "fully_connected"}


def _fresh(bits: str, images: torch.Tensor):
    teacher, meta = load_teacher(TEACHER)
    student = convert_resnet(teacher, CHIP, bits, meta["input_shape"])
    calibrate_batchnorm(student, images[:256])
    calibrate_activations(student, images[:256])
    return teacher, student


def _fresh_graph(bits: str, images: torch.Tensor):
    """The chip-driven converter's student of the same teacher, and its teacher taps."""
    from archnet.capture import capture
    from archnet.distill.taps import GraphTaps
    from archnet.lowering.graph import build_graph_student
    from archnet.lowering.resnet import parse_bits
    from archnet.rules import plan_conversion
    teacher, meta = load_teacher(TEACHER)
    graph = capture(teacher, (torch.zeros(1, *meta["input_shape"]),))
    profile = load_profile(CHIP)
    student, low = build_graph_student(graph, plan_conversion(graph, profile, parse_bits(bits)),
                                       profile)
    calibrate_batchnorm(student, images[:256])
    calibrate_activations(student, images[:256])
    return teacher, student, GraphTaps(graph, low.taps)


def _cfg(**kw) -> DistillConfig:
    base = dict(steps_per_period=6, batch_size=16, lr=1e-3, progress=False, sim_batch=128, seed=3)
    base.update(kw)
    return DistillConfig(**base)


@pytest.fixture(scope="module")
def train_images() -> torch.Tensor:
    return load_dataset("digits", split="train", labels=False).images[:384]


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("digits", split="test", labels=True).tensors


@pytest.fixture(scope="module")
def distilled_2w4a(train_images, tmp_path_factory):
    teacher, student = _fresh("2w4a", train_images)
    images, labels = load_dataset("digits", split="test", labels=True).tensors
    with torch.no_grad():
        before = float((student(images).argmax(1) == labels).float().mean())
    result = distill(student, teacher, train_images, CHIP, _cfg(steps_per_period=30),
                     tmp_path_factory.mktemp("distill"), log=lambda _m: None)
    return before, result


def _simulator_logits(student, images: torch.Tensor) -> np.ndarray:
    program = student.export((len(images), *student.input_shape))
    pixels = student.input.integer_forward(images).value.numpy().astype(np.uint8)
    return execute(program, load_profile(CHIP), {"image": pixels}).outputs[program.outputs[0]]


def test_distillation_lifts_2w4a_far_above_chance_on_the_simulator(distilled_2w4a, test_set):
    before, result = distilled_2w4a
    images, labels = test_set
    logits = _simulator_logits(result.student, images)
    accuracy = float((torch.from_numpy(logits).argmax(1) == labels).float().mean())
    assert accuracy >= 0.85, (before, accuracy)          # chance is 0.10
    assert accuracy > before + 0.1, (before, accuracy)    # distillation, not calibration, did it
    for entry in result.history:
        assert entry["loss_last"] < entry["loss_first"], entry


def test_distilled_student_is_bit_exact_and_uses_only_chip_ops(distilled_2w4a, test_set):
    student = distilled_2w4a[1].student
    images = test_set[0][:64]
    logits = _simulator_logits(student, images)
    emulated = student.integer_forward(images, load_profile(CHIP)).value.numpy()
    assert np.array_equal(logits, emulated)
    program = student.export()
    assert {n.op.value for n in program.nodes} <= ALLOWED_OPS
    assert violations(program, load_profile(CHIP)) == []


def test_simulator_runs_inside_the_loop(distilled_2w4a):
    history = distilled_2w4a[1].history
    fed = [h for h in history if h["simulator_in_loop"]]
    # window 2: from the third period on, the frozen prefix runs on the simulator
    assert [h["period"] for h in fed] == list(range(2, len(history)))
    assert all(h["simulator_images"] >= 384 and h["simulator_seconds"] > 0 for h in fed)
    assert 0 < distilled_2w4a[1].simulator_share < 1


def test_distillation_never_reads_labels(train_images, tmp_path, monkeypatch):
    from archnet.data import digits

    def no_labels(*a, **kw):
        raise AssertionError("distillation opened the labels")
    monkeypatch.setattr(digits, "load", no_labels)
    teacher, student = _fresh("8w8a", train_images)
    distill(student, teacher, train_images[:64], CHIP, _cfg(steps_per_period=1, window=5),
            tmp_path, log=lambda _m: None)


def _states(path):
    return torch.load(path, weights_only=False)["student"]["state_dict"]


@pytest.mark.parametrize("lowering", ["resnet", "graph"])
def test_resume_after_a_kill_trains_the_same_weights(train_images, tmp_path, lowering):
    """For the hand-written ResNet lowering and the chip-driven converter's student alike,
    through a last period that trains the last three blocks on the head's loss."""
    images = train_images[:128]
    cfg = _cfg(steps_per_period=4, mixup_fraction=0.5, final_steps=3, final_window=3)

    def fresh():
        if lowering == "resnet":
            return (*_fresh("4w4a", images), None)
        return _fresh_graph("4w4a", images)
    teacher, student, taps = fresh()
    full = distill(student, teacher, images, CHIP, cfg, tmp_path / "full", log=lambda _m: None,
                   taps=taps)

    def kill(period, step, loss):
        if period == 3 and step == 2:
            raise KeyboardInterrupt
    teacher, student, taps = fresh()
    with pytest.raises(KeyboardInterrupt):
        distill(student, teacher, images, CHIP, cfg, tmp_path / "killed", step_callback=kill,
                log=lambda _m: None, taps=taps)
    assert latest_checkpoint(tmp_path / "killed") == checkpoint_path(tmp_path / "killed", 2)

    teacher, student, taps = fresh()   # a new process: nothing survives but the files
    resumed = distill(student, teacher, images, CHIP, cfg, tmp_path / "killed", resume=True,
                      log=lambda _m: None, taps=taps)
    assert resumed.resumed_from == 3
    last = full.history[-1]
    assert len(full.history) == 6 and last["final"] and last["steps"] == 3
    assert last["blocks"] == full.student.block_names[2:] and last["simulator_prefix_blocks"] == 2
    for period in (3, 4, 5):
        a = _states(checkpoint_path(tmp_path / "full", period))
        b = _states(checkpoint_path(tmp_path / "killed", period))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), period
    assert all(torch.equal(x, y) for x, y in zip(full.student.state_dict().values(),
                                                   resumed.student.state_dict().values()))


def test_resume_with_other_settings_is_refused(train_images, tmp_path):
    images = train_images[:64]
    teacher, student = _fresh("8w8a", images)
    distill(student, teacher, images, CHIP, _cfg(steps_per_period=1), tmp_path, log=lambda _m: None)
    teacher, student = _fresh("8w8a", images)
    with pytest.raises(DistillError, match="config"):
        distill(student, teacher, images, CHIP, _cfg(steps_per_period=1, lr=0.5), tmp_path,
                resume=True, log=lambda _m: None)


def test_resume_before_the_final_period_may_change_its_settings(train_images, tmp_path):
    """A checkpoint taken before the last period resumes under another last period (steps,
    window, forward on the chip) and trains what an uninterrupted run with those settings does;
    once the last period has run, its settings are part of the weights and a change is refused."""
    images = train_images[:128]
    first = _cfg(steps_per_period=3, final_steps=2, final_window=2)
    second = _cfg(steps_per_period=3, final_steps=4, final_window=3, chip_forward="final")
    teacher, student, taps = _fresh_graph("4w4a", images)
    full = distill(student, teacher, images, CHIP, second, tmp_path / "full", log=lambda _m: None,
                   taps=taps)
    teacher, student, taps = _fresh_graph("4w4a", images)
    distill(student, teacher, images, CHIP, first, tmp_path / "tried", log=lambda _m: None, taps=taps)
    last = len(student.blocks)
    with pytest.raises(DistillError, match="config"):
        teacher, student, taps = _fresh_graph("4w4a", images)
        distill(student, teacher, images, CHIP, second, tmp_path / "tried", resume=True,
                log=lambda _m: None, taps=taps)
    checkpoint_path(tmp_path / "tried", last).unlink()      # the last period not yet run
    teacher, student, taps = _fresh_graph("4w4a", images)
    again = distill(student, teacher, images, CHIP, second, tmp_path / "tried", resume=True,
                    log=lambda _m: None, taps=taps)
    assert again.resumed_from == last and again.history[-1]["chip_forward"]
    assert again.history[-1]["steps"] == 4 and len(again.history[-1]["blocks"]) == 3
    assert all(torch.equal(x, y) for x, y in zip(full.student.state_dict().values(),
                                                   again.student.state_dict().values()))


def test_chip_forward_trains_on_the_chips_integers(train_images):
    """With the forward on the chip's integers the window's outputs are the emulation's values
    (the loss the chip's outputs have) and the gradients still reach every trained layer."""
    from archnet.distill.adapters import build_adapters
    from archnet.distill.inputs import as_inputs
    from archnet.distill.loop import _PeriodNet
    images = train_images[:16]
    teacher, student, taps = _fresh_graph("4w4a", images)
    arith = load_profile(CHIP).arithmetic
    targets = taps.features(images)
    n = len(student.blocks)
    adapters = build_adapters(student.block_names, targets, n - 1)
    data = as_inputs(images)
    chip = _PeriodNet(student, adapters, 0, n - 1, _cfg(), data, final=True, arith=arith)
    fake = _PeriodNet(student, adapters, 0, n - 1, _cfg(), data, final=True)
    student.train()
    loss, _ = chip(images, None, targets, {})
    loss.backward()
    grads = [p.grad for b in student.blocks for m in b.mac_layers().values() for p in (m.weight,)]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)
    student.eval()
    ints = student.integer_features(images, arith)[-1].dequantize().float()
    expected = data.block_loss(ints, targets[-1], {}, True, _cfg())
    with torch.no_grad():
        assert torch.allclose(chip(images, None, targets, {})[0], expected, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(fake(images, None, targets, {})[0], expected, rtol=1e-5, atol=1e-7)


def test_chip_forward_needs_the_simulator_in_the_loop():
    from archnet.cli.convert import CHIP_FORWARD as offered
    from archnet.distill.loop import CHIP_FORWARD
    assert offered == CHIP_FORWARD      # the command line offers what the loop accepts
    with pytest.raises(DistillError, match="chip_forward"):
        _cfg(chip_forward="all", simulator_in_loop=False).check()
    with pytest.raises(DistillError, match="chip_forward"):
        _cfg(chip_forward="sometimes").check()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(train_images, tmp_path, monkeypatch):
    images = train_images[:64]
    teacher, student = _fresh("8w8a", images)
    from archnet.distill import losses as losses_mod
    real = losses_mod.feature_loss

    def poisoned(s, t, *a, **kw):
        value = real(s, t, *a, **kw)
        return value * float("nan") if s.dim() == 4 and s.shape[1] == 32 else value  # layer2.0
    monkeypatch.setattr(losses_mod, "feature_loss", poisoned)
    with pytest.raises(DistillError, match="nan"):
        distill(student, teacher, images, CHIP, _cfg(steps_per_period=2), tmp_path, log=lambda _m: None)
    last = latest_checkpoint(tmp_path)
    assert last == checkpoint_path(tmp_path, 1)
    assert torch.load(last, weights_only=False)["period"] == 1


def test_bad_settings_name_the_field():
    with pytest.raises(DistillError, match="window"):
        DistillConfig(window=0).check()
    with pytest.raises(DistillError, match="mixup_fraction"):
        DistillConfig(mixup_fraction=2).check()


def test_the_frozen_prefix_advanced_block_by_block_equals_running_it_whole(train_images):
    """Each period runs only its newly frozen block on the simulator, from the integers kept
    from the period before: they equal the whole prefix run again from the images, and a kept
    block whose weights changed makes the prefix run again from the images."""
    from archnet.distill.hardware import FrozenPrefix, HardwarePrefix
    _, student, _ = _fresh_graph("4w4a", train_images)
    profile = load_profile(CHIP)
    images = train_images[:48]
    frozen = FrozenPrefix(student, profile, images, "kernels", 16, progress=False)
    n = len(student.blocks)
    for k in range(1, n):
        kept = frozen.outputs(k)
        whole = HardwarePrefix(student, k, profile, "kernels", 16).run_all(images, progress=False)
        assert kept.dtype == whole.dtype and torch.equal(kept, whole), k
    assert frozen.images_run == 48 * (n - 1)          # one block per period, not the whole prefix
    with torch.no_grad():
        next(iter(student.blocks[0].mac_layers().values())).weight.mul_(0.5)
    again = frozen.outputs(n - 1)
    assert frozen.images_run == 48 * n
    assert torch.equal(again, HardwarePrefix(student, n - 1, profile, "kernels", 16)
                       .run_all(images, progress=False))


def test_mixed_batches_run_ahead_equal_each_batch_run_alone(train_images):
    """The period's batches and mixes drawn up front are those a step-by-step loop draws from
    the same stream; the prefix's integers for each mixed batch, run ahead in padded chunks over
    several windows, equal that batch run alone on the simulator."""
    from archnet.distill.hardware import HardwarePrefix, MixedPrefix
    from archnet.distill.inputs import as_inputs
    from archnet.distill.loop import _batches, _schedule
    from archnet.distill.losses import mixup
    _, student, _ = _fresh_graph("4w4a", train_images)
    profile, data = load_profile(CHIP), as_inputs(train_images[:100])
    cfg = _cfg(batch_size=12, mixup_fraction=0.5)
    schedule = _schedule(data, cfg, 20, torch.Generator().manual_seed(5), 2, 8)
    gen = torch.Generator().manual_seed(5)
    for (idx, draw), want in zip(schedule, _batches(100, 12, 20, gen), strict=True):
        assert torch.equal(idx, want[2:10])
        mixed = float(torch.rand((), generator=gen)) < 0.5
        assert (draw is not None) == mixed
        if mixed:
            assert torch.equal(data.mix(data.images[idx], draw),
                               mixup(data.images[idx], gen, cfg.mixup_alpha))
    steps = [k for k, (_, draw) in enumerate(schedule) if draw is not None]
    assert 3 <= len(steps) < 20
    ahead = MixedPrefix(student, 2, profile, "kernels", 16, data, schedule, window=20)
    alone = HardwarePrefix(student, 2, profile, "kernels", 8)
    for k in steps:
        idx, draw = schedule[k]
        assert torch.equal(ahead.outputs(k), alone.run(data.mix(data.images[idx], draw)))
    assert not ahead.ready and ahead.images_run >= 8 * len(steps)


def test_kept_targets_run_the_teacher_once_per_input_and_equal_fresh_ones(train_images):
    """Within a period and across periods: an input's targets for a block come from the teacher
    once; a later period's new block runs it again for that block only; a budget too small
    for a block leaves every batch to the teacher."""
    from archnet.distill.inputs import as_inputs
    from archnet.distill.taps import KeptTargets
    _, _, taps = _fresh_graph("4w4a", train_images)
    data = as_inputs(train_images[:40])
    kept = KeptTargets(taps, data)
    assert kept.keep == set(range(len(taps.taps)))
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for blocks in ([1, 2], [2, 3]):
        before, fresh_seen = kept.teacher_inputs, set()
        for _ in range(6):
            idx = torch.randint(0, 40, (16,), generator=gen)
            got = kept.features(idx, blocks)
            fresh = taps.features(*data.teacher(idx))
            assert got[0] is None and len(got) == len(taps.taps)
            for b in blocks:
                torch.testing.assert_close(got[b], fresh[b], rtol=1e-5, atol=1e-5)
            fresh_seen |= set(idx.tolist())
        # [1, 2]: each input once; [2, 3]: block 3 is new, so each input once more
        assert kept.teacher_inputs - before == len(fresh_seen if blocks == [2, 3] else
                                                   fresh_seen - seen)
        seen |= fresh_seen
    small = KeptTargets(taps, data, budget_bytes=1000)
    assert small.keep == set()
    idx = torch.arange(8)
    small.features(idx, [1])
    small.features(idx, [1])
    assert small.teacher_inputs == 16


def test_teacher_taps_stop_after_the_last_tap_a_period_needs(train_images):
    """The teacher runs only as far as the period's blocks need; their targets are the full
    forward's. A tapped module run twice per forward (a shared ReLU) never stops it early."""
    from archnet.distill.taps import TeacherTaps
    teacher, meta = load_teacher(TEACHER)
    taps = TeacherTaps(teacher, ["maxpool", "layer1.0", "layer2.0", "fc"])
    x = train_images[:8]
    full = taps.features(x)
    ran = []
    handle = teacher.layer2.register_forward_hook(lambda *_: ran.append("layer2"))
    part = taps.features(x, blocks=[0, 1])
    handle.remove()
    assert ran == [] and part[2] is None and part[3] is None
    for b in (0, 1):
        assert torch.equal(part[b], full[b])

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.act = torch.nn.ReLU()

        def forward(self, v):
            return self.act(self.act(v) - 1.0)
    twice = TeacherTaps(Twice(), ["act"])
    v = torch.randn(4, 3)
    twice.features(v)
    want = torch.relu(torch.relu(v) - 1.0)
    assert torch.equal(twice.features(v, blocks=[0])[0], want)


def test_training_runs_channels_last_and_times_its_phases(train_images, tmp_path):
    """During the periods the convs' weights are channels-last (oneDNN's fast layout); what
    distillation returns (and exports) is contiguous again; each period records where its
    time went."""
    teacher, student = _fresh("4w4a", train_images)
    layouts = []

    def seen(period, step, loss):
        weights = [p for p in student.parameters() if p.dim() == 4 and p.shape[1] > 1]
        layouts.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in weights))
    result = distill(student, teacher, train_images[:64], CHIP, _cfg(steps_per_period=1),
                     tmp_path, log=lambda _m: None, step_callback=seen)
    assert layouts and all(layouts)
    assert all(p.is_contiguous() for p in result.student.parameters())
    for h in result.history:
        phases = h["phase_seconds"]
        assert set(phases) == {"teacher", "student_forward", "backward", "optimizer",
                               "simulator", "other"}
        assert min(phases.values()) >= 0
        assert sum(phases.values()) == pytest.approx(h["seconds"], abs=0.01)
