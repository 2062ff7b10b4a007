"""``archnet convert``: teacher + unlabeled images + chip profile -> a verified Arch-Net run folder.

The whole job, in order:

1. load the teacher checkpoint and the *unlabeled* training images (labels are never opened);
2. choose bits: one width for every block, or, with a latency budget, per-block widths chosen by
   the cost model (``archnet.bit_allocation``, HAQ-style);
3. lower the teacher to a student of the chip's ops (``archnet.lowering``), calibrate its new
   batch-norms and activation grids on the images, and prove it deploys without fallback;
4. distil blockwise with the simulator in the loop (``archnet.distill``), a checkpoint per period;
5. export the Program, check archnet's integer emulation against the simulator on a sample
   (every element must agree), and write the run folder atomically file by file:

   - ``student.pt``      the student checkpoint (config, weights, metadata)
   - ``model.program``   the integer Program the simulator and the reports run
   - ``convert.json``    settings, bits (and the allocation), per-period history, timings,
                         the simulator's share of the time, estimated latency on the chip
   - ``checkpoints/``    one checkpoint per distillation period (``--resume`` continues there)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from archnet import distributed as dist
from archnet.capture.sources import is_code, load_code_teacher
from archnet.data.datasets import distillation_images
from archnet.distill.inputs import as_inputs
from archnet.distill.loop import DistillConfig, distill
from archnet.errors import ConversionError, DataError
from archnet.lowering import assert_deployable, convert_resnet, parse_bits
from archnet.lowering.widths import stream_width
from archnet.lowering.prepare import prepare_student
from archnet.runs import PROGRAM_FILE, STUDENT_FILE, SUMMARY_FILE, run_folder
from archnet.student_io import save_student
from simulator.cost import estimate
from simulator.execute import execute
from simulator.fileio import atomic_write_bytes
from simulator.ir.program import save_program
from simulator.jsontext import json_text
from simulator.profiles import load_profile


@dataclass
class ConvertOptions:
    teacher: str
    chip: str
    out: str
    bits: str | None = "4w4a"
    latency_budget_ms: float | None = None
    dataset: str | None = None       # default: the teacher's
    data_path: str | None = None
    max_images: int | None = None
    calibration_images: int = 512
    keep_global_pool: bool = False
    recipe: str = "native"           # native, paper: the chip-driven converter (archnet.capture,
                                     # archnet.rules); resnet: the hand-written lowering of the
                                     # zoo's ResNets, kept while reports/fashion_mnist is its
                                     # results
    layer_norm: str = "auto"         # LayerNorm's form family (archnet.rules.planner.LAYER_NORMS)
    stream_bits: int | None = None   # the residual stream's width; None: the chip's
    embedding: str = "auto"          # the embedding's form (archnet.rules.planner.EMBEDDINGS)
    resume: bool = False
    check_images: int = 256
    report: bool = True              # a latency-only report at the end (the demo writes a full one)
    threads: int | None = None
    command: str | None = None


@dataclass
class TextConvertOptions:
    """What a text teacher's conversion reads besides ``ConvertOptions``: the unlabeled corpus,
    its held-out split and the positions the student supports."""
    corpus: str | None = None          # one sentence a line; None: Debian's fortunes
    max_len: int = 64                  # positions; longer sentences are truncated (a warning)
    layers: int | None = None          # keep only the teacher's first N encoder layers
    max_sentences: int | None = 2048   # distillation sentences: a seeded sample of the train split
    heldout_fraction: float = 0.1      # held out by a hash of each sentence, never distilled on


def _sample(data, n: int, seed: int) -> torch.Tensor:
    """A seeded sample of ``n`` of the input set's indices, in order."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(len(data), generator=gen)[: min(n, len(data))].sort().values


def build_student_for(teacher, meta: dict, profile, bits, data, opts: ConvertOptions,
                      seed: int = 0, log=print):
    """Lower, calibrate and gate: the student distillation starts from, and where its blocks'
    teacher features come from (None: hooks at the student's tap module paths), and the
    conversion plan (None for the ResNet recipe)."""
    taps, plan = None, None
    if opts.recipe == "resnet":
        student = convert_resnet(teacher, profile, bits, meta["input_shape"],
                                 keep_global_pool=opts.keep_global_pool)
    else:
        from archnet.capture import capture
        from archnet.distill.taps import GraphTaps
        from archnet.lowering.graph import build_graph_student
        from archnet.rules import plan_conversion
        graph = capture(teacher, _example(meta))
        if isinstance(bits, list):          # per-block widths (--latency-budget)
            from archnet.bit_allocation import GraphStudents
            plan = GraphStudents(graph, profile, opts.recipe, opts.layer_norm,
                                 opts.stream_bits, opts.embedding).plan(bits)
        else:
            plan = plan_conversion(graph, profile, parse_bits(bits), opts.recipe,
                                   layer_norm=opts.layer_norm, stream_bits=opts.stream_bits,
                                   embedding=opts.embedding)
        log(plan.describe())
        student, low = build_graph_student(graph, plan, profile)
        taps = GraphTaps(graph, low.taps)
    prepare_student(student, data, _sample(data, opts.calibration_images, seed),
                    None if taps is None else taps.graph, seed)
    assert_deployable(student, profile)
    return student, taps, plan


def _example(meta: dict) -> tuple[torch.Tensor, ...]:
    """The teacher's example inputs at batch 1: given (``example_inputs``: token ids and a mask),
    else a zero image of its input shape."""
    given = meta.get("example_inputs")
    return tuple(given) if given is not None else (torch.zeros(1, *meta["input_shape"]),)


def check_against_simulator(student, profile, images: torch.Tensor, backend: str = "kernels",
                            side: dict | None = None) -> dict:
    """Every element of every block output: archnet's integer emulation vs the simulator."""
    program = student.export((len(images), *student.input_shape), feature_outputs=True)
    pixels = student.input.host_values(images)
    feeds = {program.inputs[0]: pixels}
    feeds.update({k: v.numpy().astype(np.uint8) for k, v in (side or {}).items()})
    sim = execute(program, profile, feeds, backend, trace=False).outputs
    emu = student.integer_features(images, profile, side=side)
    per_block = program.metadata["archnet"]["block_outputs"]
    matched = total = 0
    first_bad = None
    for name, pieces, q in zip(student.block_names, per_block, emu, strict=True):
        value = np.concatenate([sim[p] for p in pieces], axis=1)
        same = value == q.value.numpy()
        matched += int(same.sum())
        total += same.size
        if first_bad is None and not same.all():
            first_bad = name
    return {"images": len(images), "elements": total, "matching": matched,
            "agreement": matched / total if total else 1.0, "first_divergent_block": first_bad}


def convert(opts: ConvertOptions, cfg: DistillConfig, log=print) -> dict:
    """Run the whole conversion; returns the summary written to ``convert.json``."""
    from archnet.teachers import ARCHS, load_teacher, teacher_content_hash
    t0 = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    dist.init_from_env()
    profile = load_profile(opts.chip)
    out = run_folder(opts.out, opts.resume, [opts.teacher.rpartition(":")[0] if
                                             is_code(opts.teacher) else opts.teacher,
                                             opts.data_path, profile.path])
    if is_code(opts.teacher):
        if opts.dataset is not None:
            raise DataError(f"--dataset {opts.dataset}: {opts.teacher} is a model built by code; "
                            f"give its unlabeled images with --data IMAGES.npy")
        if opts.data_path is None or not str(opts.data_path).endswith(".npy"):
            raise DataError(f"{opts.teacher}: a model built by code has no data set of its own; "
                            f"give its unlabeled images with --data IMAGES.npy")
        dataset = None
        images = distillation_images(None, opts.data_path, opts.max_images)
        teacher, meta = load_code_teacher(opts.teacher, images.shape[1:])
        opts = replace(opts, report=False)     # reports read the teacher from a checkpoint
    else:
        teacher, meta = load_teacher(opts.teacher)
        dataset = opts.dataset or meta.get("dataset")
        images = distillation_images(dataset, opts.data_path, opts.max_images)
    if opts.recipe == "resnet" and meta.get("arch") not in ARCHS:
        raise ConversionError(f"--recipe resnet lowers the zoo's ResNets only; {opts.teacher} is "
                              f"{meta.get('arch')} (use --recipe native or paper)")
    if list(images.shape[1:]) != list(meta["input_shape"]):
        raise DataError(f"{opts.data_path or dataset}: images of shape {list(images.shape[1:])} do "
                        f"not fit the teacher's input {meta['input_shape']} ({opts.teacher})")
    log(f"teacher {opts.teacher}: {meta.get('arch')} on {dataset or opts.data_path}, "
        f"{len(images)} unlabeled images, chip {profile.name}, recipe {opts.recipe}")
    source = {"teacher": str(opts.teacher), "teacher_sha256": teacher_content_hash(teacher),
              "dataset": dataset}
    return run_conversion(teacher, meta, images, profile, out, opts, cfg, source, t0, log)


def run_conversion(teacher, meta: dict, images: torch.Tensor, profile, out: Path,
                   opts: ConvertOptions, cfg: DistillConfig, source: dict, t0: float,
                   log=print, extra: dict | None = None) -> dict:
    """Steps 2-5 for a loaded teacher (``meta``: its ``input_shape``, ``arch``,
    ``test_accuracy``) on unlabeled ``images``; ``source`` names where the teacher and data came
    from (``teacher``, ``teacher_sha256``, ``dataset``)."""
    dataset = source.get("dataset")
    data = as_inputs(images)
    allocation = None
    if opts.latency_budget_ms is not None:
        from archnet.bit_allocation import allocate_bits
        calib = data.subset(_sample(data, min(opts.calibration_images, 256), cfg.seed))
        students = None
        if opts.recipe != "resnet":
            from archnet.bit_allocation import GraphStudents
            from archnet.capture import capture
            students = GraphStudents(capture(teacher, _example(meta)), profile, opts.recipe,
                                     opts.layer_norm, opts.stream_bits, opts.embedding)
        allocation = allocate_bits(teacher, profile, meta["input_shape"], opts.latency_budget_ms,
                                   calib, log=log if dist.is_main() else (lambda _m: None),
                                   students=students)
        bits = list(allocation.bits)
        log(f"bits per block under {opts.latency_budget_ms} ms: {bits} "
            f"(estimated {allocation.estimated_ms:.4f} ms)")
    else:
        bits = opts.bits
        parse_bits(bits)
    student, taps, plan = build_student_for(teacher, meta, profile, bits, data, opts, cfg.seed,
                                            log)
    log(student.describe())
    metadata = {
        "teacher": source.get("teacher"), "teacher_sha256": source.get("teacher_sha256"),
        "teacher_arch": meta.get("arch"), "teacher_test_accuracy": meta.get("test_accuracy"),
        "recipe": opts.recipe, "layer_norm": opts.layer_norm, "stream_bits": opts.stream_bits,
        "embedding": opts.embedding,
        "profile": profile.name, "profile_path": str(profile.path),
        "bits": [f"{b['w_bits']}w{b['a_bits']}a" for b in student.config["blocks"]],
        "allocation": allocation.to_dict() if allocation is not None else None,
        "dataset": dataset, "data_path": opts.data_path, "images": len(data),
        "input_shape": list(meta["input_shape"]), "command": opts.command,
        "distill": asdict(cfg), **(extra or {}),
    }
    result = distill(student, teacher, data, profile, cfg, out, resume=opts.resume, log=log,
                     metadata=metadata, taps=taps)
    sample, side = data.student(_sample(data, opts.check_images, cfg.seed + 1))
    check = check_against_simulator(student, profile, sample, cfg.backend, side)
    if check["agreement"] != 1.0:
        raise ConversionError(f"integer emulation and simulator differ in "
                              f"{check['elements'] - check['matching']} of {check['elements']} "
                              f"elements (first in block {check['first_divergent_block']!r}); "
                              f"run `archnet verify` on {out / PROGRAM_FILE} for the divergence")
    program = student.export(name=f"archnet_{meta.get('arch', 'student')}_{profile.name}")
    program.metadata["archnet"]["student_checkpoint"] = STUDENT_FILE
    est = estimate(program, profile)
    summary = {
        "teacher": metadata["teacher"], "teacher_sha256": metadata["teacher_sha256"],
        "chip": profile.name, "profile_path": str(profile.path), "bits": metadata["bits"],
        "layer_norm": opts.layer_norm, "stream_bits": opts.stream_bits,
        "embedding": opts.embedding,
        # the residual stream's width as built (the chip's where not asked)
        "stream_width": opts.stream_bits or stream_width(profile),
        "allocation": metadata["allocation"], "dataset": dataset, "images": len(data),
        "estimated_latency_ms": est.total_latency_ms, "fallbacks": len(est.fallbacks),
        "blocks": student.summary(), "history": result.history,
        # per teacher node: the rule that fired, why, and the forms the chip refused
        "plan": plan.to_dict() if plan is not None else None,
        "distill_seconds": round(result.seconds, 2),
        "simulator_seconds": round(result.simulator_seconds, 2),
        "simulator_share": round(result.simulator_share, 4),
        "resumed_from_period": result.resumed_from,
        "emulation_vs_simulator": check,
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "world_size": dist.world_size(), "threads": torch.get_num_threads(),
        "command": opts.command, "torch": torch.__version__, **(extra or {}),
    }
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_student(out / STUDENT_FILE, student, metadata)
        save_program(program, out / PROGRAM_FILE)
        atomic_write_bytes(out / SUMMARY_FILE, (json_text(summary, default=str) + "\n").encode())
        log(f"wrote {out / PROGRAM_FILE}, {out / STUDENT_FILE}, {out / SUMMARY_FILE}: "
            f"{profile.name} estimate {est.total_latency_ms:.4f} ms, {len(est.fallbacks)} fallbacks; "
            f"emulation = simulator on {check['elements']:,} elements of {check['images']} images; "
            f"distillation {result.seconds:.0f} s, simulator share {100 * result.simulator_share:.1f}%")
    if dist.is_main() and opts.report:
        from archnet.report import write_report
        report = write_report(out, latency_only=True, log=None)
        log(f"report (latency only until `archnet verify {out / PROGRAM_FILE} --chip CHIP --out "
            f"{out}/verify_CHIP.json` adds accuracy): {report / 'report.md'}")
    dist.barrier()
    return summary


class TokenEncoder(torch.nn.Module):
    """A text teacher as the converter captures it: token ids and a padding mask in, the
    last hidden state (token rows) out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, mask):
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


def convert_text_graph(opts: ConvertOptions, text_opts: TextConvertOptions, cfg: DistillConfig,
                       log=print) -> dict:
    """A text teacher (``minilm`` or a BERT folder) through the chip-driven converter: the
    corpus' distillation sentences as token ids and masks (``TokenInputs``; the held-out ones,
    split off by a hash of each sentence, are never read here: ``archnet verify`` measures
    quality on them), the rest of the job as for images (``run_conversion``)."""
    import warnings

    from archnet.distill.inputs import TokenInputs
    from archnet.text.corpus import TruncationWarning, distillation_corpus
    from archnet.text.teacher import load_text_teacher
    t0 = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    dist.init_from_env()
    profile = load_profile(opts.chip)
    teacher_dir = opts.teacher if Path(opts.teacher).exists() else None
    out = run_folder(opts.out, opts.resume, [teacher_dir, text_opts.corpus, profile.path])
    teacher = load_text_teacher(opts.teacher)
    full_layers = teacher.config.layers
    teacher = teacher.truncated(text_opts.layers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        tokens, train, heldout = distillation_corpus(
            teacher, text_opts.corpus, text_opts.heldout_fraction, text_opts.max_sentences,
            text_opts.max_len, cfg.seed)
    for w in caught:
        if issubclass(w.category, TruncationWarning):
            log(f"warning: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    corpus = str(text_opts.corpus or "fortunes")
    if len(train) < max(cfg.batch_size, 2):
        raise DataError(f"corpus {corpus}: {len(train)} distillation sentences, need at least "
                        f"{max(cfg.batch_size, 2)} (a batch)")
    ids = torch.as_tensor(tokens.input_ids)
    mask = torch.as_tensor(tokens.attention_mask)
    data = TokenInputs(ids, mask, teacher.config.vocab_size, "mask")
    model = TokenEncoder(teacher.model.eval()).eval()
    meta = {"input_shape": [int(ids.shape[1])], "arch": teacher.name, "test_accuracy": None,
            "example_inputs": (ids[:1], mask[:1])}
    kept = f" (its first {teacher.config.layers} of {full_layers} layers)" \
        if teacher.config.layers != full_layers else ""
    log(f"teacher {teacher.name}{kept}: {len(train)} distillation sentences "
        f"({tokens.truncated} truncated to {ids.shape[1]} positions), {len(heldout)} held out; "
        f"chip {profile.name}, recipe {opts.recipe}")
    source = {"teacher": str(opts.teacher), "teacher_sha256": teacher.fingerprint,
              "dataset": corpus}
    # what verify needs to find the held-out sentences and the teacher again
    extra = {"inputs": "tokens", "corpus": corpus,
             "heldout_fraction": float(text_opts.heldout_fraction), "max_len": int(ids.shape[1]),
             "teacher_name": teacher.name, "teacher_path": str(teacher.path),
             "teacher_layers": teacher.config.layers if kept else None,
             "distill_sentences": len(train), "heldout_sentences": len(heldout),
             "truncated": int(tokens.truncated)}
    # one-hot rows are vocabulary-wide (30,522 columns for MiniLM): calibrate, check and run
    # the simulator prefix on a few dozen sentences at a time
    opts = replace(opts, report=False, calibration_images=min(opts.calibration_images, 64),
                   check_images=min(opts.check_images, 32))
    cfg = replace(cfg, sim_batch=min(cfg.sim_batch, 32))
    return run_conversion(model, meta, data, profile, out, opts, cfg, source, t0, log, extra)
