"""``archnet convert`` for text teachers: a BERT encoder -> a verified Arch-Net run folder.

1. load the teacher (``archnet.text.teacher``) and the unlabeled corpus; split off the held-out
   sentences (by a hash of their text; they are never distilled on: ``archnet verify`` measures
   quality on them) and tokenize the rest to ``max_len`` positions (longer ones are truncated,
   with a warning);
2. lower the teacher for the chip (``archnet.text.lowering``) and refuse a chip that would run
   part of the student on the host, naming the ops it lacks;
3. distil block by block with the simulator in the loop (``archnet.text.distill``);
4. check archnet's integer emulation against the simulator on every block output of a sample of
   the distillation sentences (every element must agree), then write ``student.pt``,
   ``model.program`` (batch 1, ``max_len`` positions) and ``convert.json`` atomically.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from archnet.errors import ArchnetError, ConversionError, DataError
from archnet.text.distill import TextDistillConfig, distill_text
from simulator.constraints import place
from simulator.cost import estimate
from simulator.execute import execute
from simulator.fileio import atomic_write_bytes
from simulator.ir.program import save_program
from simulator.jsontext import json_text
from simulator.profiles import load_profile

STUDENT_FILE = "student.pt"
PROGRAM_FILE = "model.program"
SUMMARY_FILE = "convert.json"
TEXT_TEACHERS = ("minilm", "all-MiniLM-L6-v2")


def is_text_teacher(spec: str) -> bool:
    """A text teacher is named (``minilm``) or is a folder with a transformers ``config.json``."""
    return spec in TEXT_TEACHERS or (Path(spec).is_dir() and (Path(spec) / "config.json").is_file())


@dataclass
class TextConvertOptions:
    teacher: str
    chip: str
    out: str
    bits: str = "8w8a"
    corpus: str | None = None          # None: Debian fortunes
    max_len: int = 64
    layers: int | None = None          # keep the teacher's first N layers (a truncated model)
    max_sentences: int | None = 2048   # distillation sentences (a seeded sample of the train split)
    heldout_fraction: float = 0.1
    calibration_sentences: int = 256
    check_sentences: int = 32
    allow_fallback: bool = False
    resume: bool = False
    threads: int | None = None
    command: str | None = None


def parse_text_bits(bits: str) -> tuple[int, int]:
    try:
        w, a = bits.lower().rstrip("a").split("w")
        w_bits, a_bits = int(w), int(a)
    except ValueError:
        raise ArchnetError(f"--bits {bits!r}: expected like 8w8a or 4w4a") from None
    if not (2 <= w_bits <= 8 and 2 <= a_bits <= 8):
        raise ArchnetError(f"--bits {bits!r}: weight and activation bits must lie in 2..8")
    return w_bits, a_bits


def load_corpus(teacher, opts: TextConvertOptions, seed: int):
    """(train Tokenized, train sentences, held-out sentences) of the corpus."""
    from archnet.text.corpus import distillation_corpus
    return distillation_corpus(teacher, opts.corpus, opts.heldout_fraction, opts.max_sentences,
                               opts.max_len, seed)


def chip_fallbacks(program, chip) -> dict[str, int]:
    """Ops of ``program`` the chip would run on the host: {op: count}."""
    ops = {n.name: n.op.value for n in program.nodes}
    out: dict[str, int] = {}
    for p in place(program, chip):
        if p.on_host and not p.boundary:
            out[ops[p.node]] = out.get(ops[p.node], 0) + 1
    return out


def check_against_simulator(student, chip, ids: torch.Tensor, mask: torch.Tensor,
                            backend: str = "kernels") -> dict:
    """Every element of every block output: archnet's integer emulation vs the simulator."""
    from archnet.text.student import two_hot
    n, t = ids.shape
    program = student.export(n, t)
    sim = execute(program, chip, {"tokens": two_hot(ids.numpy(), student.cfg.vocab_size,
                                                    student.cfg.max_positions),
                                  "attention_mask": mask.numpy().astype(np.uint8)},
                  backend, trace=False).outputs
    emu = student.integer_features(ids, mask, chip.arithmetic)
    matched = total = 0
    first_bad = None
    for name, q in zip(program.outputs, emu, strict=True):
        same = sim[name] == q.value.numpy()
        matched += int(same.sum())
        total += same.size
        if first_bad is None and not same.all():
            first_bad = name
    return {"sentences": n, "elements": total, "matching": matched,
            "agreement": matched / total if total else 1.0, "first_divergent_block": first_bad}


def convert_text(opts: TextConvertOptions, cfg: TextDistillConfig, log=print) -> dict:
    from archnet.runs import run_folder
    from archnet.text.corpus import TruncationWarning
    from archnet.text.lowering import lower_bert, student_config
    from archnet.text.student_io import save_text_student
    from archnet.text.teacher import load_text_teacher
    t0 = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    w_bits, a_bits = parse_text_bits(opts.bits)
    chip = load_profile(opts.chip)
    out = run_folder(opts.out, opts.resume, [opts.teacher if Path(opts.teacher).exists() else None,
                                             opts.corpus, chip.path])
    teacher = load_text_teacher(opts.teacher)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncationWarning)
        tokens, train, heldout = load_corpus(teacher, opts, cfg.seed)
    for w in caught:
        log(f"warning: {w.message}")
    if len(train) < max(cfg.batch_size, 2):
        raise DataError(f"corpus {opts.corpus or 'fortunes'}: {len(train)} distillation sentences, "
                        f"need at least {max(cfg.batch_size, 2)}")
    ids = torch.as_tensor(tokens.input_ids)
    mask = torch.as_tensor(tokens.attention_mask)
    log(f"teacher {teacher.name}: {teacher.config.layers} layers, hidden {teacher.config.hidden}; "
        f"corpus {opts.corpus or 'fortunes'}: {len(train)} distillation sentences "
        f"({tokens.truncated} truncated to {opts.max_len} positions), {len(heldout)} held out; "
        f"chip {chip.name}")
    scfg = student_config(teacher.config, opts.max_len, w_bits, a_bits, chip, layers=opts.layers)
    calib = slice(0, min(opts.calibration_sentences, len(train)))
    student = lower_bert(teacher, scfg, ids[calib], mask[calib])
    fallbacks = chip_fallbacks(student.export(1, opts.max_len), chip)
    if fallbacks and not opts.allow_fallback:
        raise ConversionError(
            f"chip {chip.name} would run {sum(fallbacks.values())} node(s) of the text student on "
            f"the host ({', '.join(f'{k} x{v}' for k, v in sorted(fallbacks.items()))}); attention "
            f"needs matmul, softmax and transpose: choose a profile that has them (e.g. "
            f"ethos-u55-128, rk3588-npu-core) or pass --allow-fallback")
    log(f"student: {scfg.layers} layers, {w_bits}w{a_bits}a, activation {scfg.activation}, "
        f"residual {scfg.residual}, max {scfg.max_positions} positions")
    metadata = {"family": "text", "teacher": teacher.name, "teacher_path": str(teacher.path),
                "teacher_sha256": teacher.fingerprint, "profile": chip.name,
                "profile_path": str(chip.path), "bits": f"{w_bits}w{a_bits}a",
                "corpus": str(Path(opts.corpus).resolve()) if opts.corpus else "fortunes",
                "heldout_fraction": opts.heldout_fraction,
                "max_len": opts.max_len, "distill_sentences": len(train),
                "heldout_sentences": len(heldout), "truncated": int(tokens.truncated),
                "command": opts.command, "distill": asdict(cfg)}
    result = distill_text(student, teacher, ids, mask, chip, cfg, out, resume=opts.resume, log=log)
    n_check = min(opts.check_sentences, len(train))
    check = check_against_simulator(student, chip, ids[:n_check], mask[:n_check], cfg.backend)
    if check["agreement"] != 1.0:
        raise ConversionError(f"integer emulation and simulator differ in "
                              f"{check['elements'] - check['matching']} of {check['elements']} "
                              f"elements (first in {check['first_divergent_block']!r})")
    program = student.export(1, opts.max_len, name=f"archnet_text_{chip.name}",
                             metadata={"student_checkpoint": STUDENT_FILE})
    est = estimate(program, chip)
    total = result.train_seconds + result.simulator_seconds
    summary = {**{k: metadata[k] for k in ("family", "teacher", "teacher_path", "teacher_sha256",
                                           "profile", "profile_path", "bits", "corpus",
                                           "heldout_fraction", "max_len", "distill_sentences",
                                           "heldout_sentences", "truncated")},
               "chip": chip.name, "student": scfg.to_dict(),
               "estimated_latency_ms": est.total_latency_ms, "fallbacks": len(est.fallbacks),
               "history": result.history, "distill_seconds": round(result.train_seconds, 2),
               "simulator_seconds": round(result.simulator_seconds, 2),
               "simulator_share": round(result.simulator_seconds / total, 4) if total else 0.0,
               "emulation_vs_simulator": check, "wall_seconds": round(time.perf_counter() - t0, 2),
               "threads": torch.get_num_threads(), "command": opts.command, "torch": torch.__version__}
    out.mkdir(parents=True, exist_ok=True)
    save_text_student(out / STUDENT_FILE, student, metadata)
    save_program(program, out / PROGRAM_FILE)
    atomic_write_bytes(out / SUMMARY_FILE, (json_text(summary, default=str) + "\n").encode())
    log(f"wrote {out / PROGRAM_FILE}, {out / STUDENT_FILE}, {out / SUMMARY_FILE}: {chip.name} "
        f"estimate {est.total_latency_ms:.3f} ms, {len(est.fallbacks)} fallbacks; emulation = "
        f"simulator on {check['elements']:,} elements of {check['sentences']} sentences")
    return summary
