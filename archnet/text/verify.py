"""``archnet verify`` for text runs: held-out sentences through the simulator, and how close the
sentence embeddings come to the teacher's.

A text run folder (``archnet convert`` with a text teacher) holds ``student.pt``,
``model.program`` (batch 1, ``max_len`` positions) and ``convert.json``. ``verify_text``:

1. proves ``model.program`` is the student's own export (every node, attribute, tensor type and
   constant; a difference is a one-line error naming both files and the first difference);
2. reads the held-out sentences as convert split them (``read_sentences(corpus)``, then
   ``split_heldout(heldout_fraction)``; never distilled on), keeps the first ``max_sentences``
   and tokenizes them to ``max_len`` with the teacher's tokenizer;
3. runs them in chunks of ``batch`` sentences four ways: the **simulator** (a Program the student
   exports at [chunk, max_len]: step 1 ties the student to the saved Program, and the export is
   the same nodes and constants at another batch), archnet's **integer emulation**
   (``integer_features``), the **fake-quant student** and the **teacher**;
4. counts, per block output, the elements where emulation and simulator agree (all must), and
   compares the sentence embeddings (mean over real tokens, L2-normalised: ``pooled``) of the
   simulator's dequantized last stream and of the fake-quant student with the teacher's
   (``archnet.text.quality.embedding_quality``);
5. sums the simulator's accumulator statistics per MAC op (``simulator.overflow``): the outputs
   that wrapped or saturated on this chip and the narrowest safe accumulator, said in words next
   to the result (bit-exact agreement cannot show it: both sides wrap alike);
6. adds the cost model's estimate of the batch-1 Program on the chip.

The chip may differ from the one the student was converted for: the Program stores real
requantization multipliers and each profile turns them into its own integers.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from archnet.errors import ArchnetError, CheckpointError, DataError
from archnet.report.collect import TEXT_SUMMARY_FIELDS, check_fields
from archnet.runs import resolve_recorded
from archnet.text.quality import MIN_SENTENCES, QUALITY_KEYS, verify_quality
from archnet.verify_report import (advance, overflow_result_lines, pct, progress_bar,
                                    reduce_overflow)
from archnet.student_program import diff_programs, load_run_program
from simulator.ir.program import Program
from simulator.jsontext import finite_or_null, json_text

SUMMARY_FILE = "convert.json"
STUDENT_FILE = "student.pt"      # when the Program's metadata names none
TEXT_INPUTS = ["tokens", "attention_mask"]
DEFAULT_MAX_SENTENCES = 512
DEFAULT_BATCH = 16


def program_family(path) -> str | None:
    """What a Program file holds: "text" for archnet/text's students (its metadata's
    ``family``), "tokens" for a text network of the chip-driven converter (it reads one-hot
    ``tokens``), else None, also when the file is missing or unreadable (the caller's own
    loader then says why)."""
    from simulator.errors import SimulatorError
    from simulator.ir.program import load_program
    try:
        program = load_program(path)
    except (SimulatorError, OSError, ValueError, KeyError):
        return None
    if program.metadata.get("family") == "text":
        return "text"
    return "tokens" if program.inputs[:1] == ["tokens"] else None


def verify_command(program_path, chip: str, out=None, max_sentences=DEFAULT_MAX_SENTENCES,
                   batch=DEFAULT_BATCH) -> str:
    parts = ["archnet", "verify", str(program_path), "--chip", str(chip)]
    if out is not None:
        parts += ["--out", str(out)]
    parts += ["--max-sentences", "all" if max_sentences is None else str(max_sentences),
              "--batch", str(batch)]
    return shlex.join(parts)


# ----------------------------------------------------------------------------- files

def _run_info(program_path: Path, student_meta: dict) -> tuple[dict, Path | None]:
    """convert.json beside the Program, over the student's metadata (which records the same
    data keys): the run's teacher, corpus, split and max_len."""
    summary_path = program_path.parent / SUMMARY_FILE
    info = dict(student_meta)
    if summary_path.is_file():
        try:
            doc = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            raise CheckpointError(f"{summary_path}: unreadable ({type(exc).__name__}: "
                                  f"{first})") from None
        if not isinstance(doc, dict):
            raise CheckpointError(f"{summary_path}: not a JSON object")
        check_fields(doc, TEXT_SUMMARY_FIELDS, str(summary_path), "archnet convert ...")
        info.update(doc)
    else:
        summary_path = None
    for key in ("teacher_path", "heldout_fraction", "max_len"):
        if info.get(key) is None:
            where = summary_path or program_path.parent / SUMMARY_FILE
            raise CheckpointError(f"{where}: records no {key!r} (a text run folder written by "
                                  f"`archnet convert` has it)")
    return info, summary_path


def _text_teacher(info: dict, folder: Path):
    """The teacher the run was converted from: found where convert.json says, and its weights'
    SHA-256 equal to the recorded one (another teacher under that name is an error)."""
    from archnet.text.teacher import MINILM_ALIASES, load_text_teacher
    recorded = str(info["teacher_path"])
    path = resolve_recorded(recorded, folder)
    if path is None:
        # the bundled MiniLM moves with its package: its name still finds it
        if info.get("teacher") not in MINILM_ALIASES:
            raise CheckpointError(f"{recorded}: the teacher folder convert used is gone (named by "
                                  f"{folder / SUMMARY_FILE}; looked there and relative to {folder})")
        teacher = load_text_teacher(info["teacher"])
    else:
        teacher = load_text_teacher(path)
    recorded_sha = info.get("teacher_sha256")
    if not isinstance(recorded_sha, str):
        raise CheckpointError(f"{folder}: the run records no teacher_sha256 to check its teacher by")
    if teacher.fingerprint != recorded_sha:
        raise CheckpointError(f"{teacher.path}: not the teacher this run was converted from (its "
                              f"weights' SHA-256 {teacher.fingerprint[:12]}... differs from the "
                              f"recorded {recorded_sha[:12]}...)")
    return teacher


def _heldout(info: dict, folder: Path, max_sentences: int | None) -> tuple[list[str], int, str]:
    """(the first max_sentences held-out sentences, all held-out ones, the corpus read)."""
    from archnet.text.corpus import read_sentences, split_heldout
    corpus = info.get("corpus") or "fortunes"
    source = corpus
    if corpus != "fortunes":
        found = resolve_recorded(str(corpus), folder)
        if found is None:
            raise DataError(f"{corpus}: the corpus convert used is gone (named by "
                            f"{folder / SUMMARY_FILE}; looked there and relative to {folder})")
        source = str(found)
    _train, heldout = split_heldout(read_sentences(source), float(info["heldout_fraction"]))
    picked = heldout if max_sentences is None else heldout[:max_sentences]
    return picked, len(heldout), source


def check_text_program(program: Program, student, program_path, student_path) -> tuple[int, int]:
    """(batch, seq_len) of ``program``; an ``ArchnetError`` naming both files unless it is
    ``student``'s own export."""
    def fail(why: str) -> ArchnetError:
        return ArchnetError(f"{program_path} is not the export of {student_path}: {why}")
    if list(program.inputs) != TEXT_INPUTS:
        raise fail(f"its inputs are {program.inputs}, a text student's export takes {TEXT_INPUTS}")
    shape = program.tensors["attention_mask"].shape
    if len(shape) != 2:
        raise fail(f"attention_mask is {list(shape)}, a text student's is [batch, positions]")
    batch, seq_len = int(shape[0]), int(shape[1])
    try:
        ref = student.export(batch, seq_len)
    except ArchnetError as exc:
        raise fail(f"attention_mask {list(shape)}: {exc}") from None
    why = diff_programs(program, ref)
    if why:
        raise fail(why)
    return batch, seq_len


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- verification

def _divergence(program: Program, chip, tokens, mask_u8, emu, names, start: int, seq_len: int,
                backend: str) -> dict | None:
    """The first block output where simulator and emulation part, with the simulator's
    explanation of that node (``simulator.compare.find_divergence``)."""
    from simulator.compare import find_divergence
    from simulator.execute import execute
    trace = execute(program, chip, {"tokens": tokens, "attention_mask": mask_u8}, backend=backend,
                    trace=True).tensors
    ours = {name: q.value.numpy() for name, q in zip(program.outputs, emu)}
    div = find_divergence(program, trace, ours, chip, names=("simulator", "archnet"))
    if div is None:
        return None
    block = names[program.outputs.index(div.tensor)] if div.tensor in program.outputs else None
    row = div.index[0] if div.index else 0
    return {"block": block, "sentence": start + row // seq_len, "node": div.node,
            "tensor": div.tensor, "index": list(div.index), "simulator": div.value_a,
            "archnet": div.value_b, "explanations": list(div.explanations), "text": div.format()}


def verify_text(program_path, chip, out=None, max_sentences: int | None = DEFAULT_MAX_SENTENCES,
                batch: int = DEFAULT_BATCH, backend: str = "kernels", progress=None, log=print,
                command: str | None = None) -> dict:
    """Verify a text run's ``model.program`` on ``chip`` (a profile name, file or
    ``ChipProfile``) with its held-out sentences; see the module doc.

    ``max_sentences``: the first N held-out sentences (None: all). ``batch``: sentences per
    simulator run. ``progress``: a tqdm bar on stderr (None: when stderr is a terminal).
    ``log``: where notes go (None: nowhere). ``command``: the command line to record (default:
    the ``archnet verify`` line that does the same). Returns the report as a JSON-ready dict
    (``bit_exact`` says whether every element agreed); with ``out`` also writes it there,
    atomically. Raises ``ArchnetError`` (one line, naming the file) for missing or mismatched
    files and data that does not fit.
    """
    from archnet.text.corpus import TruncationWarning
    from archnet.text.student import pooled, two_hot
    from archnet.text.student_io import load_text_student
    from simulator.cost import estimate
    from simulator.execute import execute
    from simulator.fileio import atomic_write_bytes
    from simulator.overflow import merge_stats
    from simulator.profiles import ChipProfile, load_profile

    say = log or (lambda _m: None)
    start_t = time.perf_counter()
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ArchnetError(f"batch must be an integer of at least 1, got {batch!r}")
    if max_sentences is not None and (isinstance(max_sentences, bool) or
                                      not isinstance(max_sentences, (int, np.integer))
                                      or max_sentences < MIN_SENTENCES):
        raise ArchnetError(f"max_sentences must be an integer of at least {MIN_SENTENCES} "
                           f"(nearest neighbours and rankings need them), got {max_sentences!r}")
    batch = int(batch)
    max_sentences = None if max_sentences is None else int(max_sentences)

    # -- files
    program_path = Path(program_path)
    program = load_run_program(program_path)
    folder = program_path.parent
    ckpt = program.metadata.get("student_checkpoint") or STUDENT_FILE
    student_path = Path(ckpt) if Path(ckpt).is_absolute() else folder / ckpt
    if not student_path.is_file():
        raise CheckpointError(f"{student_path}: no such student checkpoint (named by "
                              f"{program_path}'s metadata)")
    student, meta = load_text_student(student_path)
    _batch1, seq_len = check_text_program(program, student, program_path, student_path)
    info, summary_path = _run_info(program_path, meta)
    if int(info["max_len"]) != seq_len:
        raise CheckpointError(f"{summary_path or student_path}: max_len {info['max_len']}, but "
                              f"{program_path} takes {seq_len} positions")
    profile = chip if isinstance(chip, ChipProfile) else load_profile(chip)
    arith = profile.arithmetic
    if meta.get("teacher_sha256") not in (None, info.get("teacher_sha256")):
        raise CheckpointError(f"{summary_path}: records teacher_sha256 "
                              f"{str(info.get('teacher_sha256'))[:12]}..., {student_path} "
                              f"{str(meta['teacher_sha256'])[:12]}...: not the same run")
    teacher = _text_teacher(info, folder)   # the recorded one: its weights' hash checked
    if command is None:
        command = verify_command(program_path, profile.name, out, max_sentences, batch)

    # -- data
    sentences, heldout_total, corpus = _heldout(info, folder, max_sentences)
    n = len(sentences)
    if n < MIN_SENTENCES:
        raise DataError(f"corpus {corpus}: {n} held-out sentence(s) at heldout_fraction "
                        f"{info['heldout_fraction']}; embedding quality needs at least "
                        f"{MIN_SENTENCES} (give a larger corpus or fraction when converting)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # counted and reported below
        tokens = teacher.tokenize(sentences, seq_len)
    if tokens.truncated:
        say(f"warning: {tokens.truncated} of {n} held-out sentences were truncated to {seq_len} "
            f"positions")
    ids_all = torch.as_tensor(tokens.input_ids)
    mask_all = torch.as_tensor(tokens.attention_mask)
    say(f"verify {program_path} on {profile.name}: {n} held-out sentences of {corpus}, "
        f"{seq_len} positions, chunks of {batch}")

    # -- runs
    names = student.block_names()
    if len(names) != len(program.outputs):
        raise ArchnetError(f"{program_path}: {len(program.outputs)} outputs for "
                           f"{len(names)} blocks of {student_path}")
    matched = np.zeros(len(names), np.int64)
    totals = np.zeros(len(names), np.int64)
    emb = {k: [] for k in ("simulator", "emulation", "fake_quant", "teacher")}
    stage = {"simulator": 0.0, "emulation": 0.0, "fake-quant": 0.0, "teacher": 0.0}
    out_scale = float(program.tensors[program.outputs[-1]].scale[0])
    programs: dict[int, Program] = {}
    overflow: dict = {}   # MAC op -> OverflowStats, summed over the chunks
    divergence = None
    starts = list(range(0, n, batch))
    bar = progress_bar(len(starts), progress, profile.name)
    student.eval()
    try:
        for b0 in starts:
            b1 = min(b0 + batch, n)
            ids, mask = ids_all[b0:b1], mask_all[b0:b1]
            k = b1 - b0
            if k not in programs:
                programs[k] = student.export(k, seq_len, name=program.name)
            two = two_hot(ids.numpy(), student.cfg.vocab_size, student.cfg.max_positions)
            mask_u8 = mask.numpy().astype(np.uint8)

            t = time.perf_counter()
            result = execute(programs[k], profile, {"tokens": two, "attention_mask": mask_u8},
                             backend=backend, trace=False)
            stage["simulator"] += time.perf_counter() - t
            sim = result.outputs
            merge_stats(overflow, result.overflow)

            t = time.perf_counter()
            ours = student.integer_features(ids, mask, arith)
            stage["emulation"] += time.perf_counter() - t

            bad = False
            for i, (tensor, q) in enumerate(zip(programs[k].outputs, ours, strict=True)):
                s = np.asarray(sim[tensor])
                mine = q.value.numpy()
                same = int((s.astype(np.int64) == mine).sum()) if s.shape == mine.shape else 0
                matched[i] += same
                totals[i] += mine.size
                bad |= same != mine.size
            if bad and divergence is None:
                divergence = _divergence(programs[k], profile, two, mask_u8, ours, names, b0,
                                         seq_len, backend)

            last = np.asarray(sim[programs[k].outputs[-1]]).astype(np.float64) * out_scale
            emb["simulator"].append(pooled(torch.from_numpy(last), mask).numpy())
            emb["emulation"].append(pooled(ours[-1].value.double() * float(ours[-1].scale),
                                           mask).numpy())
            with torch.inference_mode():
                t = time.perf_counter()
                fq = student.features(ids, mask)[-1]
                emb["fake_quant"].append(pooled(fq.double(), mask).numpy())
                stage["fake-quant"] += time.perf_counter() - t
                t = time.perf_counter()
                # the teacher's pooled state at the student's depth: its sentence embedding,
                # or a truncated teacher's
                hidden = teacher.forward(ids, mask).hidden_states[student.num_blocks - 1]
                emb["teacher"].append(pooled(hidden.double(), mask).numpy())
                stage["teacher"] += time.perf_counter() - t
            advance(bar, matched, totals)
    finally:
        if bar is not None:
            bar.close()

    quality = verify_quality(emb)
    est = estimate(program, profile)
    agreement = [{"name": name, "tensor": tensor, "matched": int(m), "total": int(tot),
                  "fraction": int(m) / int(tot) if tot else 1.0}
                 for name, tensor, m, tot in zip(names, program.outputs, matched, totals)]
    m_all, t_all = int(matched.sum()), int(totals.sum())
    first_bad = next((a["name"] for a in agreement if a["matched"] != a["total"]), None)
    sim_s = stage.pop("simulator")
    wall = time.perf_counter() - start_t
    doc = {
        "family": "text",
        "program": str(program_path), "program_sha256": _sha256(program_path),
        "student": str(student_path),
        "summary": None if summary_path is None else str(summary_path),
        "teacher": teacher.name, "teacher_path": str(teacher.path),
        "teacher_sha256": teacher.fingerprint, "teacher_matches_conversion": True,
        "chip": profile.name, "chip_path": str(profile.path),
        "converted_for": info.get("chip") or info.get("profile"), "bits": info.get("bits"),
        "backend": backend, "batch": batch, "chunks": len(starts),
        "data": {"corpus": info.get("corpus") or "fortunes", "corpus_read": corpus,
                 "heldout_fraction": float(info["heldout_fraction"]),
                 "heldout_sentences": heldout_total, "max_sentences": max_sentences,
                 "sentences": n, "max_len": seq_len, "truncated": int(tokens.truncated)},
        "agreement": agreement, "elements_matched": m_all, "elements_total": t_all,
        "agreement_fraction": m_all / t_all if t_all else 1.0, "bit_exact": m_all == t_all,
        "first_divergent_block": first_bad, "divergence": divergence,
        "overflow": reduce_overflow(program, profile, overflow, over_ranks=False).to_dict(),
        "quality": quality,
        "latency_ms": float(est.total_latency_ms), "latency_batch": 1, "latency_positions": seq_len,
        "fallbacks": [{"name": op.name, "reason": op.fallback_reason} for op in est.fallbacks],
        "fallback_count": len(est.fallbacks),
        "wall_s": wall, "simulator_s": sim_s, "simulator_share": sim_s / wall if wall > 0 else 0.0,
        "stage_s": stage,
        "commands": {"verify": command, "convert": info.get("command")},
    }
    doc = finite_or_null(doc)
    if out is not None:
        atomic_write_bytes(out, (json_text(doc) + "\n").encode())
    return doc


# ----------------------------------------------------------------------------- text

def _num(v, fmt: str = "{:.4f}") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def format_text_verify(doc: dict) -> str:
    """The human summary of a ``verify_text`` report."""
    from simulator.overflow import OverflowSummary
    d = doc["data"]
    first = "" if d["max_sentences"] is None or d["sentences"] == d["heldout_sentences"] else \
        f" (the first {d['sentences']} of {d['heldout_sentences']})"
    lines = [
        f"verify {doc['program']} on {doc['chip']} ({doc['chip_path']})",
        f"  student  {doc['student']} (converted for {doc['converted_for'] or '?'}, "
        f"bits {doc['bits'] or '?'})",
        f"  teacher  {doc['teacher']} ({doc['teacher_path']})"
        + ("  [NOT the teacher convert used]"
           if doc["teacher_matches_conversion"] is False else ""),
        f"  data     {d['sentences']} held-out sentences{first} of {d['corpus']} (held-out "
        f"fraction {d['heldout_fraction']}), {d['max_len']} positions, {d['truncated']} "
        f"truncated; chunks of {doc['batch']} ({doc['chunks']}), backend {doc['backend']}",
        "",
        "integer emulation vs simulator",
        f"  {'block output':<24} {'matched':>12} {'total':>12} {'agree':>9}",
    ]
    for a in doc["agreement"]:
        lines.append(f"  {a['name']:<24} {a['matched']:>12,} {a['total']:>12,} "
                     f"{pct(a['fraction']):>9}")
    lines.append(f"  {'all':<24} {doc['elements_matched']:>12,} {doc['elements_total']:>12,} "
                 f"{pct(doc['agreement_fraction']):>9}")
    overflow = OverflowSummary.from_dict(doc["overflow"]) if doc.get("overflow") else None
    if overflow is not None:
        lines += ["", *overflow.lines()]
    sim, fq = doc["quality"]["simulator_vs_teacher"], doc["quality"]["fake_quant_vs_teacher"]
    labels = {"mean_cosine": "mean cosine", "median_cosine": "median cosine",
              "min_cosine": "min cosine", "nn_agreement": "NN agreement",
              "spearman": "Spearman (pair ranks)"}
    lines += ["", f"sentence embeddings against the teacher's ({d['sentences']} sentences)",
              f"  {'':<24} {'simulator':>10} {'fake-quant':>11}"]
    for key in QUALITY_KEYS:
        lines.append(f"  {labels[key]:<24} {_num(sim[key]):>10} {_num(fq[key]):>11}")
    nf = doc["fallback_count"]
    lines += [
        "",
        f"estimate on {doc['chip']}: {doc['latency_ms']:.4f} ms per sentence (batch 1, "
        f"{doc['latency_positions']} positions), {nf} fallback" + ("" if nf == 1 else "s")
        + (": " + ", ".join(f["name"] for f in doc["fallbacks"][:5]) if nf else ""),
        f"time     {doc['wall_s']:.2f} s wall, {doc['simulator_s']:.2f} s in the simulator "
        f"({doc['simulator_share']:.0%}); "
        + ", ".join(f"{k} {v:.2f} s" for k, v in doc["stage_s"].items()),
    ]
    for key, cmd in doc["commands"].items():
        if cmd:
            lines.append(f"  {key + ':':<10} {cmd}")
    lines.append("")
    if doc["bit_exact"]:
        lines.append(f"result: BIT-EXACT: all {doc['elements_total']:,} elements agree")
    else:
        lines.append(f"result: MISMATCH: {doc['elements_total'] - doc['elements_matched']:,} of "
                     f"{doc['elements_total']:,} elements differ; first divergent block "
                     f"{doc['first_divergent_block']!r}")
        div = doc.get("divergence")
        if div:
            text = div["text"].splitlines()
            lines.append(f"  in held-out sentence {div['sentence']}; {text[0]}")
            lines += ["  " + ln for ln in text[1:]]
    lines += overflow_result_lines(overflow, doc["bit_exact"])
    return "\n".join(lines)


__all__ = ["check_text_program", "format_text_verify", "program_family", "verify_command",
           "verify_text"]
