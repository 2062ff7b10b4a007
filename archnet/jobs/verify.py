"""``archnet verify``: run a converted network's test set through the simulator and report.

A converted run folder holds ``student.pt`` (the trained student) and ``model.program`` (its
export). ``verify(program, chip)`` checks that the Program is the student's own export, then runs
the labelled test set, in batches, four ways:

- the **simulator** executing the Program file's own nodes and constants (re-batched, and with
  every block's output pieces added as outputs when ``check_features``) on ``chip``'s arithmetic;
- archnet's **integer emulation** (``student.integer_features``) on the same arithmetic;
- the **fake-quant student** (``student(images)``, float);
- the **teacher** (float).

The first two must agree on every element (logits, and every block output with
``check_features``); when they do not, the first divergence is located and explained with
``simulator.compare.find_divergence``. The chip may differ from the one the student was converted
for: the Program stores real requantization multipliers and every profile turns them into its own
integers, so the run is always under the given chip's arithmetic.

The simulator's accumulator statistics are summed over the run (``simulator.overflow``): per MAC
op, the outputs that wrapped or saturated on this chip and the narrowest accumulator that would
have held them. Bit-exact agreement does not show this (both sides wrap alike), so the report
says it in words next to the result.

Under ``torchrun`` each rank takes ``archnet.distributed.shard(n)`` of the images and the counts
are summed over ranks (``all_reduce_sum``); every rank returns the same report, and only the
caller on the main rank should print or write it (the CLI does so).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from archnet import distributed as dist
from archnet.errors import ArchnetError, CheckpointError, DataError
from archnet.runs import resolve_recorded
from archnet.student_program import check_program_matches, load_run_program, rebatch
from archnet.verify_report import (advance, overflow_result_lines, pct, progress_bar,
                                    reduce_overflow)
from simulator.ir.program import Program
from simulator.jsontext import finite_or_null
from simulator.overflow import OverflowSummary

STUDENT_FILE = "student.pt"   # the converter writes it beside model.program
SPLIT = "test"


# ----------------------------------------------------------------------------- the report

@dataclass
class TensorAgreement:
    """Elements of one block output (all its pieces) where emulation and simulator agree."""

    name: str          # block name
    tensors: list[str]  # the simulator tensor names of its pieces
    matched: int
    total: int
    logits: bool = False

    @property
    def fraction(self) -> float:
        return self.matched / self.total if self.total else 1.0

    def to_dict(self) -> dict:
        return {"name": self.name, "tensors": list(self.tensors), "matched": self.matched,
                "total": self.total, "fraction": self.fraction, "logits": self.logits}


@dataclass
class VerifyReport:
    program: str
    student: str
    teacher: str
    teacher_sha256: str
    teacher_matches_conversion: bool   # False only for a --teacher chosen on purpose
    chip: str
    chip_path: str
    converted_for: str | None
    bits: list | None
    dataset: str
    data_path: str | None
    split: str
    images: int
    limit: int | None
    batch_size: int
    batches: int
    world_size: int
    backend: str
    check_features: bool
    agreement: list[TensorAgreement]
    labelled: bool                     # False: images without labels (no accuracy)
    teacher_correct: int
    student_correct: int
    simulator_correct: int
    sim_teacher_agree: int
    sim_student_agree: int
    latency_ms: float
    latency_batch: int
    fallbacks: list[dict]
    wall_s: float
    simulator_s: float
    stage_s: dict[str, float]
    commands: dict[str, str | None]
    divergence: dict | None = None
    overflow: OverflowSummary | None = None   # the simulator's accumulator over the run

    # -- derived
    @property
    def matched(self) -> int:
        return sum(a.matched for a in self.agreement)

    @property
    def total(self) -> int:
        return sum(a.total for a in self.agreement)

    @property
    def bit_exact(self) -> bool:
        return self.matched == self.total

    def _acc(self, correct: int) -> float:
        return correct / self.images if self.images else float("nan")

    def _labelled_acc(self, correct: int) -> float | None:
        return self._acc(correct) if self.labelled else None

    @property
    def teacher_accuracy(self) -> float | None:
        return self._labelled_acc(self.teacher_correct)

    @property
    def student_accuracy(self) -> float | None:
        return self._labelled_acc(self.student_correct)

    @property
    def simulator_accuracy(self) -> float | None:
        return self._labelled_acc(self.simulator_correct)

    @property
    def simulator_share(self) -> float:
        """Share of the processes' wall time spent inside ``simulator.execute``."""
        busy = self.wall_s * self.world_size
        return self.simulator_s / busy if busy > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.bit_exact else 1

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["agreement"] = [a.to_dict() for a in self.agreement]
        d["overflow"] = self.overflow.to_dict() if self.overflow is not None else None
        d.update(bit_exact=self.bit_exact, elements_matched=self.matched,
                 elements_total=self.total,
                 agreement_fraction=self.matched / self.total if self.total else 1.0,
                 teacher_accuracy=self.teacher_accuracy, student_accuracy=self.student_accuracy,
                 simulator_accuracy=self.simulator_accuracy,
                 sim_teacher_agreement=self._acc(self.sim_teacher_agree),
                 sim_student_agreement=self._acc(self.sim_student_agree),
                 fallback_count=len(self.fallbacks), simulator_share=self.simulator_share)
        return finite_or_null(d)

    def format(self) -> str:
        bits = ""
        if self.bits:
            uniq = sorted({str(b) for b in self.bits})
            bits = f", bits {uniq[0]} x{len(self.bits)}" if len(uniq) == 1 else \
                f", bits {' '.join(map(str, self.bits))}"
        lines = [
            f"verify {self.program} on {self.chip} ({self.chip_path})",
            f"  student  {self.student} (converted for {self.converted_for or '?'}{bits})",
            f"  teacher  {self.teacher}" + ("" if self.teacher_matches_conversion else
                                            "  WARNING: not the teacher the student was converted "
                                            "from (given with --teacher; its content hash "
                                            "differs from the student's record)"),
            f"  data     {self.dataset} {self.split} split, {self.images} images"
            + (f" (first {self.limit})" if self.limit is not None else "")
            + f", data path {self.data_path or 'default'}; batch {self.batch_size}, "
              f"{self.batches} batches, {self.world_size} process"
            + ("es" if self.world_size != 1 else "") + f", backend {self.backend}",
            "",
            "integer emulation vs simulator" + ("" if self.check_features else " (logits only)"),
            f"  {'block output':<24} {'matched':>12} {'total':>12} {'agree':>9}",
        ]
        for a in self.agreement:
            name = a.name + (" (logits)" if a.logits else "")
            lines.append(f"  {name:<24} {a.matched:>12,} {a.total:>12,} {pct(a.fraction):>9}")
        lines.append(f"  {'all':<24} {self.matched:>12,} {self.total:>12,} "
                     f"{pct(self.matched / self.total if self.total else 1.0):>9}")
        if self.overflow is not None:
            lines += ["", *self.overflow.lines()]
        n = self.images
        if self.labelled:
            lines += [
                "",
                f"accuracy on {n} labelled images",
                f"  {'teacher (float)':<36} {self.teacher_accuracy:8.4f}  "
                f"({self.teacher_correct}/{n})",
                f"  {'fake-quant student (float)':<36} {self.student_accuracy:8.4f}  "
                f"({self.student_correct}/{n})",
                f"  {'simulator (integer logits)':<36} {self.simulator_accuracy:8.4f}  "
                f"({self.simulator_correct}/{n})"]
        else:
            lines += ["", f"predictions on {n} unlabelled images (no accuracy without --labels)"]
        lines += [
            f"  {'simulator = teacher prediction':<36} {self._acc(self.sim_teacher_agree):8.4f}  "
            f"({self.sim_teacher_agree}/{n})",
            f"  {'simulator = fake-quant prediction':<36} {self._acc(self.sim_student_agree):8.4f}  "
            f"({self.sim_student_agree}/{n})",
            "",
            f"estimate on {self.chip}: {self.latency_ms:.4f} ms per batch of {self.latency_batch}, "
            f"{len(self.fallbacks)} fallback" + ("" if len(self.fallbacks) == 1 else "s")
            + (": " + ", ".join(f["name"] for f in self.fallbacks[:5]) if self.fallbacks else ""),
            f"time     {self.wall_s:.2f} s wall, {self.simulator_s:.2f} s in the simulator "
            f"({self.simulator_share:.0%})"
            + ("" if self.world_size == 1 else " (summed over processes)")
            + "; " + ", ".join(f"{k} {v:.2f} s" for k, v in self.stage_s.items()),
        ]
        for key, cmd in self.commands.items():
            if cmd:
                lines.append(f"  {key + ':':<10} {cmd}")
        lines.append("")
        if self.bit_exact:
            lines.append(f"result: BIT-EXACT: all {self.total:,} elements agree")
        else:
            lines.append(f"result: MISMATCH: {self.total - self.matched:,} of {self.total:,} "
                         f"elements differ")
            if self.divergence:
                lines.append(f"  in image {self.divergence['image']} of the data set; "
                             f"{self.divergence['text'].splitlines()[0]}")
                lines += ["  " + ln for ln in self.divergence["text"].splitlines()[1:]]
        lines += overflow_result_lines(self.overflow, self.bit_exact)
        return "\n".join(lines)


# ----------------------------------------------------------------------------- files

# ----------------------------------------------------------------------------- verification

def first_divergence(program_b: Program, chip, feeds: dict, ours, pieces, backend):
    """The first block output where the simulator and archnet's emulation part, explained:
    ``program_b`` run on ``feeds`` (its inputs by name) against ``ours`` (the emulation's block
    outputs, whose ``pieces`` name the Program's tensors per block)."""
    from simulator.compare import find_divergence
    from simulator.execute import execute
    sim = execute(program_b, chip, feeds, backend=backend, trace=True).tensors
    trace_b = {}
    for q, names in zip(ours, pieces):
        sizes = [program_b.tensors[n].shape[1] for n in names]
        for name, v in zip(names, torch.split(q.value, sizes, dim=1)):
            trace_b[name] = v.numpy()
    return find_divergence(program_b, sim, trace_b, chip, names=("simulator", "archnet"))


def _load_teacher(meta: dict, student_path: Path, given, input_shape):
    """The recorded teacher, or ``given``: a checkpoint, or the user's code
    (``path/to/file.py:factory``), which runs only when named here, never because a student's
    metadata names it."""
    from archnet.capture.sources import is_code, load_code_teacher
    from archnet.teachers import load_recorded_teacher
    recorded = str(meta.get("teacher") or "")
    if given is not None and is_code(given):
        model, t_meta = load_code_teacher(str(given), input_shape)
        return model, t_meta, given, model.content_sha256 == meta.get("teacher_sha256")
    if given is None and (is_code(recorded) or recorded.startswith("python:")):
        name = recorded if is_code(recorded) else "path/to/file.py:factory"
        raise CheckpointError(f"{student_path}: converted from {recorded}, a model built by "
                              f"code; verify runs code only when you name it: give --teacher {name}")
    return load_recorded_teacher(meta, student_path, given)


def _test_set(name, data_path, labels_path, student_path: Path):
    """(images, labels or None, data set name): a named data set's labelled test split, or a
    ``.npy`` of images with optional ``labels_path``."""
    from archnet.data import load_dataset
    from archnet.data.datasets import distillation_images, npy_labels
    if data_path is not None and str(data_path).endswith(".npy"):
        images = distillation_images(None, data_path, None)
        labels = None if labels_path is None else npy_labels(labels_path, len(images))
        return images, labels, Path(data_path).name
    if labels_path is not None:
        raise DataError(f"--labels {labels_path}: labels go with --data IMAGES.npy (a named data "
                        f"set has its own)")
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{student_path}: metadata names no data set; give one with "
                              f"--dataset, or test images with --data IMAGES.npy (and --labels "
                              f"LABELS.npy for accuracy)")
    test = load_dataset(name, data_path, SPLIT, labels=True)
    images, labels = test.tensors
    return images, labels, name


def verify(program_path, chip, *, student_path=None, teacher_path=None, data_path=None,
           dataset=None, limit=None, batch_size=256, progress=None, check_features=True,
           backend: str = "kernels", command: str | None = None,
           labels_path=None) -> VerifyReport:
    """Verify a converted network on ``chip`` (a profile name, file or ``ChipProfile``).

    ``student_path`` defaults to ``student.pt`` beside the Program; ``teacher_path`` to the
    student's metadata ``teacher`` (relative to the current directory, else to the student's
    folder); ``dataset``/``data_path`` to the student's metadata. ``limit``: the first N test
    images. ``progress``: a tqdm bar on stderr (None: only when stderr is a terminal).
    ``command``: the command line to record in the report. ``data_path`` may be a ``.npy`` of
    test images (N, C, H, W), with ``labels_path`` a ``.npy`` of their classes; without labels
    the report has agreement with the teacher's predictions but no accuracy. Raises ``ArchnetError`` (one line,
    naming the file) for missing or mismatched files and data that does not fit.
    """
    from archnet.student_io import load_student
    from archnet.teachers import teacher_content_hash
    from simulator.cost import estimate
    from simulator.execute import execute, prepare
    from simulator.overflow import merge_stats
    from simulator.profiles import ChipProfile, load_profile

    start = time.perf_counter()
    if batch_size is None or int(batch_size) < 1:
        raise ArchnetError(f"batch size must be at least 1, got {batch_size}")
    batch_size = int(batch_size)
    if limit is not None and int(limit) < 1:
        raise ArchnetError(f"limit must be at least 1, got {limit}")
    limit = None if limit is None else int(limit)

    # -- files
    program_path = Path(program_path)
    program = load_run_program(program_path)
    defaulted = student_path is None
    student_path = Path(student_path) if student_path is not None else program_path.parent / STUDENT_FILE
    if not student_path.is_file():
        hint = f" (the default beside {program_path}; give one with --student)" if defaulted else ""
        raise CheckpointError(f"{student_path}: no such student checkpoint{hint}")
    student, meta = load_student(student_path)
    check_program_matches(program, student, program_path, student_path)
    teacher, teacher_meta, teacher_file, teacher_matches = _load_teacher(
        meta, student_path, teacher_path, student.input_shape)
    profile = chip if isinstance(chip, ChipProfile) else load_profile(chip)
    arith = profile.arithmetic

    # -- data
    name = dataset if dataset is not None else meta.get("dataset")
    if data_path is None and dataset is None and meta.get("data_path"):
        recorded = str(meta["data_path"])
        if recorded.endswith(".npy"):     # the distillation images: never the test set
            raise DataError(f"{student_path}: converted on the images of {recorded}; give the "
                            f"test images with --data IMAGES.npy (and --labels LABELS.npy)")
        data_path = resolve_recorded(recorded, student_path.parent) or recorded
    images, labels, name = _test_set(name, data_path, labels_path, student_path)
    if tuple(images.shape[1:]) != tuple(student.input_shape):
        raise ArchnetError(f"{student_path}: the student takes images {list(student.input_shape)}, "
                           f"data set {name!r} ({data_path or 'default path'}) has "
                           f"{list(images.shape[1:])}")
    t_shape = teacher_meta.get("input_shape")
    if t_shape is not None and list(t_shape) != list(images.shape[1:]):
        raise ArchnetError(f"{teacher_file}: the teacher takes images {list(t_shape)}, data set "
                           f"{name!r} has {list(images.shape[1:])}")
    n_all = len(images) if limit is None else min(limit, len(images))
    mine = dist.shard(n_all)
    lo, hi = mine.start, mine.stop

    # -- the block outputs as simulator tensors
    ref_feats = student.export(program.tensors["image"].shape, feature_outputs=True)
    pieces: list[list[str]] = ref_feats.metadata["archnet"]["block_outputs"]
    blocks = student.block_names
    compared = list(range(len(blocks))) if check_features else [len(blocks) - 1]
    sim_outputs = [n for i in compared for n in pieces[i]]
    if len(pieces[-1]) != 1:
        raise ArchnetError(f"{student_path}: the head's output is split into {len(pieces[-1])} "
                           f"pieces {pieces[-1]}; the logits must be one tensor")
    logits_name = pieces[-1][0]
    programs: dict = {}   # batch size -> PreparedProgram

    matched = np.zeros(len(compared), np.int64)
    totals = np.zeros(len(compared), np.int64)
    counts = np.zeros(5, np.int64)  # teacher, student, simulator correct; sim=teacher; sim=student
    overflow: dict = {}             # MAC op -> OverflowStats, summed over the batches
    stage = {"simulator": 0.0, "emulation": 0.0, "fake-quant": 0.0, "teacher": 0.0}
    divergence = None
    starts = list(range(lo, hi, batch_size))
    bar = progress_bar(len(starts), progress, profile.name)
    try:
        for b0 in starts:
            b1 = min(b0 + batch_size, hi)
            x = images[b0:b1].contiguous()
            y = None if labels is None else labels[b0:b1].numpy()
            n = b1 - b0
            if n not in programs:   # made ready once per batch size (weights packed)
                programs[n] = prepare(rebatch(program, n, sim_outputs), arith, backend)
            img = student.input.integer_forward(x).value.numpy()

            t = time.perf_counter()
            result = execute(programs[n], arith, {"image": img}, backend=backend, trace=False)
            stage["simulator"] += time.perf_counter() - t
            sim = result.outputs
            merge_stats(overflow, result.overflow)

            t = time.perf_counter()
            ours = student.integer_features(x, arith)
            stage["emulation"] += time.perf_counter() - t

            bad = False
            for k, i in enumerate(compared):
                whole = np.concatenate([np.asarray(sim[p]) for p in pieces[i]], axis=1)
                mine_v = ours[i].value.numpy()
                if whole.shape != mine_v.shape:
                    same = 0
                else:
                    same = int((whole.astype(np.int64) == mine_v).sum())
                matched[k] += same
                totals[k] += mine_v.size
                bad |= same != mine_v.size
            if bad and divergence is None:
                div = first_divergence(programs[n].program, arith, {"image": img}, ours, pieces,
                                       backend)
                if div is not None:
                    first = b0 + (div.index[0] if div.index else 0)
                    divergence = {"image": int(first), "node": div.node, "tensor": div.tensor,
                                  "index": list(div.index), "simulator": div.value_a,
                                  "archnet": div.value_b, "explanations": list(div.explanations),
                                  "text": div.format()}

            with torch.inference_mode():
                t = time.perf_counter()
                fq = student(x).argmax(1).numpy()
                stage["fake-quant"] += time.perf_counter() - t
                t = time.perf_counter()
                tp = teacher(x).argmax(1).numpy()
                stage["teacher"] += time.perf_counter() - t
            sp = np.asarray(sim[logits_name]).argmax(1)   # numpy: the first of tied maxima
            correct = [0, 0, 0] if y is None else \
                [int((tp == y).sum()), int((fq == y).sum()), int((sp == y).sum())]
            counts += [*correct, int((sp == tp).sum()), int((sp == fq).sum())]
            advance(bar, matched, totals)
    finally:
        if bar is not None:
            bar.close()

    # -- sum over ranks
    summed = dist.all_reduce_sum(torch.from_numpy(np.concatenate([matched, totals, counts])))
    summed = summed.numpy()
    matched, totals, counts = (summed[:len(compared)], summed[len(compared):2 * len(compared)],
                               summed[2 * len(compared):])
    secs = dist.all_reduce_sum(torch.tensor(list(stage.values()), dtype=torch.float64)).tolist()
    stage = dict(zip(stage, secs))
    if dist.active():
        has = torch.tensor([dist.rank() if divergence is not None else dist.world_size()])
        torch.distributed.all_reduce(has, op=torch.distributed.ReduceOp.MIN)
        src = int(has.item())
        if src < dist.world_size():
            divergence = dist.broadcast_object(divergence, src=src)

    overflow_summary = reduce_overflow(program, arith, overflow)
    est = estimate(program, profile)
    agreement = [TensorAgreement(blocks[i], list(pieces[i]), int(matched[k]), int(totals[k]),
                                 logits=i == len(blocks) - 1) for k, i in enumerate(compared)]
    sim_s = stage.pop("simulator")
    wall = dist.all_reduce_sum(torch.tensor([time.perf_counter() - start], dtype=torch.float64))
    wall_s = float(wall.item()) / dist.world_size()
    report = VerifyReport(
        program=str(program_path), student=str(student_path), teacher=str(teacher_file),
        teacher_sha256=teacher_content_hash(teacher), teacher_matches_conversion=teacher_matches,
        chip=profile.name, chip_path=str(profile.path), converted_for=meta.get("profile"),
        bits=meta.get("bits"), dataset=name, data_path=None if data_path is None else str(data_path),
        split=SPLIT, images=n_all, limit=limit, batch_size=batch_size,
        batches=int(dist.all_reduce_sum(torch.tensor([len(starts)])).item()),
        world_size=dist.world_size(), backend=backend, check_features=check_features,
        agreement=agreement, labelled=labels is not None, teacher_correct=int(counts[0]),
        student_correct=int(counts[1]), simulator_correct=int(counts[2]),
        sim_teacher_agree=int(counts[3]),
        sim_student_agree=int(counts[4]), latency_ms=float(est.total_latency_ms),
        latency_batch=int(program.tensors["image"].shape[0]),
        fallbacks=[{"name": op.name, "reason": op.fallback_reason} for op in est.fallbacks],
        wall_s=wall_s, simulator_s=sim_s, stage_s=stage,
        commands={"verify": command, "convert": _str_or_none(meta.get("command")),
                  "teacher": _str_or_none(teacher_meta.get("command"))},
        divergence=divergence, overflow=overflow_summary,
    )
    return report


def _str_or_none(v) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else " ".join(map(str, v))


__all__ = ["TensorAgreement", "VerifyReport", "check_program_matches", "first_divergence",
           "overflow_result_lines", "rebatch", "reduce_overflow", "verify"]
