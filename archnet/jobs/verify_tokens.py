"""``archnet verify`` for a text network of ``archnet convert`` (a run whose Program reads one-hot
``tokens`` and a key mask): the held-out sentences through the simulator, archnet's integer
emulation, the fake-quant student and the teacher.

1. ``model.program`` must be the export of ``student.pt`` beside it (every node, attribute,
   tensor type and constant; a difference is a one-line error naming both files);
2. the held-out sentences are the corpus' split as convert made it (``convert.json``: corpus,
   ``heldout_fraction``, ``max_len``), never distilled on; the first ``max_sentences`` are
   tokenized to the student's positions with the teacher's tokenizer. The teacher is the one
   recorded (its weights' hash checked; cut to the recorded ``teacher_layers`` if the run kept
   only its first layers);
3. they run in chunks of ``batch`` sentences four ways: the **simulator** (the Program re-exported
   at the chunk's batch: step 1 ties the student to the saved Program), archnet's **integer
   emulation**, the **fake-quant student** and the **teacher**;
4. every block output of the emulation must equal the simulator's (the first place they part is
   located and explained: ``simulator.compare.find_divergence``); the sentence embeddings (the
   last token rows mean-pooled over the real tokens, L2-normalised: ``quality.pooled``) of the
   simulator and of the fake-quant student are compared with the teacher's
   (``archnet.text.quality.embedding_quality``);
5. the simulator's accumulator statistics are summed per MAC op (``simulator.overflow``): the
   outputs that wrapped or saturated on this chip and the narrowest safe accumulator, said in
   words next to the result (bit-exact agreement cannot show it: both sides wrap alike);
6. the cost model's estimate of the batch-1 Program on the chip.

The chip may differ from the one the student was converted for: the Program stores real
requantization multipliers and each profile turns them into its own integers.
``format_text_verify`` prints the report.
"""

from __future__ import annotations

import json
import math
import shlex
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from archnet.distill.inputs import TokenInputs
from archnet.errors import ArchnetError, CheckpointError, DataError
from archnet.runs import STUDENT_FILE, SUMMARY_FILE
from archnet.student_program import check_program_matches, load_run_program

DEFAULT_MAX_SENTENCES = 512
DEFAULT_BATCH = 16
_RUN_KEYS = ("corpus", "heldout_fraction", "max_len", "teacher_path", "teacher_sha256")


def verify_command(program_path, chip: str, out=None, max_sentences=DEFAULT_MAX_SENTENCES,
                   batch=DEFAULT_BATCH, corpus=None) -> str:
    """The ``archnet verify`` line that runs this verification."""
    parts = ["archnet", "verify", str(program_path), "--chip", str(chip)]
    if corpus is not None:
        parts += ["--corpus", str(corpus)]
    if out is not None:
        parts += ["--out", str(out)]
    parts += ["--max-sentences", "all" if max_sentences is None else str(max_sentences),
              "--batch", str(batch)]
    return shlex.join(parts)


def _run_info(program_path: Path) -> dict:
    """convert.json beside the Program: the run's teacher, corpus, split and positions."""
    from archnet.report.collect import TEXT_SUMMARY_FIELDS, check_fields
    path = program_path.parent / SUMMARY_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}); a text run folder "
                              f"written by `archnet convert` has it") from None
    missing = [k for k in _RUN_KEYS if not isinstance(info, dict) or info.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: records no {', '.join(missing)} (written by `archnet "
                              f"convert TEXT_TEACHER ...`?)")
    check_fields(info, TEXT_SUMMARY_FIELDS, str(path), "archnet convert TEXT_TEACHER ...")
    info["teacher"] = info.get("teacher_name") or info.get("teacher")
    return info


def _check_counts(max_sentences, batch) -> None:
    from archnet.text.quality import MIN_SENTENCES
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ArchnetError(f"batch must be an integer of at least 1, got {batch!r}")
    if max_sentences is not None and (isinstance(max_sentences, bool) or
                                      not isinstance(max_sentences, (int, np.integer))
                                      or max_sentences < MIN_SENTENCES):
        raise ArchnetError(f"max_sentences must be an integer of at least {MIN_SENTENCES} "
                           f"(nearest neighbours and rankings need them), got {max_sentences!r}")


def verify_tokens(program_path, chip, *, out=None,
                  max_sentences: int | None = DEFAULT_MAX_SENTENCES, batch: int = DEFAULT_BATCH,
                  backend: str = "kernels", progress=None, command: str | None = None,
                  log=print, corpus=None) -> dict:
    """Verify a text run's ``model.program`` on ``chip`` (a profile name, file or
    ``ChipProfile``) with its held-out sentences; see the module doc.

    ``max_sentences``: the first N held-out sentences (None: all). ``corpus``: the user's own
    text file instead of the run's split: every line of it (of 3 words or more, each distinct
    line once) is held out. ``batch``: sentences per
    simulator run. ``progress``: a tqdm bar on stderr (None: when stderr is a terminal).
    ``log``: where notes go (None: nowhere). ``command``: the command line to record (default:
    the ``archnet verify`` line that does the same). Returns the report as a JSON-ready dict
    (``bit_exact`` says whether every element agreed); with ``out`` also writes it there,
    atomically. Raises ``ArchnetError`` (one line, naming the file) for missing or mismatched
    files and data that does not fit."""
    from archnet.jobs.verify import first_divergence
    from archnet.student_io import load_student
    from archnet.text.corpus import (TruncationWarning, read_sentences, recorded_heldout,
                                     recorded_split)
    from archnet.text.quality import MIN_SENTENCES, pooled, verify_quality
    from archnet.text.teacher import recorded_teacher
    from archnet.verify_report import advance, progress_bar, reduce_overflow
    from simulator.cost import estimate
    from simulator.digest import files_sha256
    from simulator.execute import execute
    from simulator.fileio import atomic_write_bytes
    from simulator.jsontext import finite_or_null, json_text
    from simulator.overflow import merge_stats
    from simulator.profiles import ChipProfile, load_profile

    say = log or (lambda _m: None)
    start_t = time.perf_counter()
    _check_counts(max_sentences, batch)
    batch = int(batch)
    max_sentences = None if max_sentences is None else int(max_sentences)

    # -- files
    program_path = Path(program_path)
    program = load_run_program(program_path)
    student_path = program_path.parent / STUDENT_FILE
    if not student_path.is_file():
        raise CheckpointError(f"{student_path}: no such student checkpoint beside {program_path}")
    student, meta = load_student(student_path)
    check_program_matches(program, student, program_path, student_path)
    token_ids = student.input.encoding == "token_ids"
    if len(student.input_shape) != (1 if token_ids else 2) or not student.side_inputs:
        raise ArchnetError(f"{program_path}: not a text network (its student reads "
                           f"{list(student.input_shape)}, not tokens and a mask)")
    info = _run_info(program_path)
    folder = program_path.parent
    seq_len = student.input_shape[0]
    vocab = student.input.vocab if token_ids else student.input_shape[1]
    if int(info["max_len"]) != seq_len:
        raise CheckpointError(f"{folder / SUMMARY_FILE}: max_len {info['max_len']}, but "
                              f"{program_path} takes {seq_len} positions")
    if meta.get("teacher_sha256") not in (None, info["teacher_sha256"]):
        raise CheckpointError(f"{folder / SUMMARY_FILE}: records teacher_sha256 "
                              f"{str(info['teacher_sha256'])[:12]}..., {student_path} "
                              f"{str(meta['teacher_sha256'])[:12]}...: not the same run")
    teacher = recorded_teacher(info, folder)     # the recorded one: its weights' hash checked
    profile = chip if isinstance(chip, ChipProfile) else load_profile(chip)
    if command is None:
        command = verify_command(program_path, profile.name, out, max_sentences, batch, corpus)

    # -- data
    mask_name = next(iter(student.side_inputs))
    seen_in_training = None     # of the user's sentences, those in the run's training split
    if corpus is None:
        sentences, heldout_total, corpus_read = recorded_heldout(info, folder, max_sentences)
    else:       # the user's own text: every line held out, no split
        every = read_sentences(Path(corpus))
        sentences, heldout_total, corpus_read = every[:max_sentences], len(every), str(corpus)
        try:
            train = set(recorded_split(info, folder)[0])
            seen_in_training = sum(s in train for s in sentences)
        except DataError:       # the run's corpus is gone: nothing to compare with
            say(f"note: the corpus {info['corpus']} convert used is gone; cannot say which of "
                f"your sentences it could have distilled on")
    n = len(sentences)
    if n < MIN_SENTENCES:
        if corpus is not None:
            raise DataError(f"{corpus}: {n} sentence(s) of 3 or more words; embedding quality "
                            f"needs at least {MIN_SENTENCES}")
        raise DataError(f"corpus {corpus_read}: {n} held-out sentence(s) at heldout_fraction "
                        f"{info['heldout_fraction']}; embedding quality needs at least "
                        f"{MIN_SENTENCES} (give a larger corpus or fraction when converting)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)    # counted and reported below
        tokens = teacher.tokenize(sentences, seq_len)
    if tokens.truncated:
        say(f"warning: {tokens.truncated} of {n} held-out sentences were truncated to {seq_len} "
            f"positions")
    if seen_in_training:
        say(f"warning: {seen_in_training} of your {n} sentences are in the training split of "
            f"{info['corpus']}, which the run distilled on a sample of: they are not unseen")
    data = TokenInputs(torch.as_tensor(tokens.input_ids), torch.as_tensor(tokens.attention_mask),
                       vocab, mask_name)
    say(f"verify {program_path} on {profile.name}: {n} held-out sentences of {corpus_read}, "
        f"{seq_len} positions, chunks of {batch}")

    # -- runs
    names = student.block_names
    matched = np.zeros(len(names), np.int64)
    totals = np.zeros(len(names), np.int64)
    emb = {k: [] for k in ("simulator", "emulation", "fake_quant", "teacher")}
    stage = {"simulator": 0.0, "emulation": 0.0, "fake-quant": 0.0, "teacher": 0.0}
    programs: dict[int, object] = {}
    block_pieces: list[list[str]] = []
    overflow: dict = {}   # MAC op -> OverflowStats, summed over the chunks
    divergence = None
    starts = list(range(0, n, batch))
    bar = progress_bar(len(starts), progress, profile.name)
    student.eval()
    try:
        for b0 in starts:
            idx = torch.arange(b0, min(b0 + batch, n))
            ids, mask = data.teacher(idx)
            token_ids, side = data.student(idx)
            k = len(idx)
            if k not in programs:
                programs[k] = student.export((k, *student.input_shape), feature_outputs=True)
            prog = programs[k]
            feeds = {prog.inputs[0]: student.input.host_values(token_ids),
                     prog.inputs[1]: mask.numpy().astype(np.uint8)}
            t = time.perf_counter()
            result = execute(prog, profile, feeds, backend=backend, trace=False)
            stage["simulator"] += time.perf_counter() - t
            sim = result.outputs
            merge_stats(overflow, result.overflow)
            t = time.perf_counter()
            ours = student.integer_features(token_ids, profile, side=side)
            stage["emulation"] += time.perf_counter() - t
            pieces = block_pieces = prog.metadata["archnet"]["block_outputs"]
            bad = False
            for i, (ps, q) in enumerate(zip(pieces, ours, strict=True)):
                s = np.concatenate([np.asarray(sim[p]) for p in ps], axis=1)
                mine = q.value.numpy()
                same = int((s.astype(np.int64) == mine).sum()) if s.shape == mine.shape else 0
                matched[i] += same
                totals[i] += mine.size
                bad |= same != mine.size
            if bad and divergence is None:
                div = first_divergence(prog, profile, feeds, ours, pieces, backend)
                if div is not None:
                    block = next((name for name, ps in zip(names, pieces) if div.tensor in ps),
                                 None)
                    divergence = {"block": block,
                                  "sentence": b0 + (div.index[0] if div.index else 0),
                                  "node": div.node, "tensor": div.tensor,
                                  "index": list(div.index), "simulator": div.value_a,
                                  "archnet": div.value_b, "explanations": list(div.explanations),
                                  "text": div.format()}
            last = pieces[-1][0]
            scale = float(prog.tensors[last].scale[0])
            emb["simulator"].append(pooled(torch.from_numpy(np.asarray(sim[last]).astype(np.float64)
                                                            * scale), mask).numpy())
            emb["emulation"].append(pooled(ours[-1].value.double() * float(ours[-1].scale),
                                           mask).numpy())
            with torch.inference_mode():
                t = time.perf_counter()
                fq = student(token_ids, side=side)
                emb["fake_quant"].append(pooled(fq.double(), mask).numpy())
                stage["fake-quant"] += time.perf_counter() - t
                t = time.perf_counter()
                hidden = teacher.model(input_ids=ids, attention_mask=mask).last_hidden_state
                emb["teacher"].append(pooled(hidden.double(), mask).numpy())
                stage["teacher"] += time.perf_counter() - t
            advance(bar, matched, totals)
    finally:
        if bar is not None:
            bar.close()

    quality = verify_quality(emb)
    est = estimate(program, profile)
    agreement = [{"name": name, "tensor": ps[0], "matched": int(m), "total": int(t),
                  "fraction": int(m) / int(t) if t else 1.0}
                 for name, ps, m, t in zip(names, block_pieces, matched, totals)]
    m_all, t_all = int(matched.sum()), int(totals.sum())
    sim_s = stage.pop("simulator")
    wall = time.perf_counter() - start_t
    doc = finite_or_null({
        "family": "text", "inputs": "tokens",
        "program": str(program_path), "program_sha256": files_sha256(program_path),
        "student": str(student_path), "summary": str(folder / SUMMARY_FILE),
        "teacher": teacher.name, "teacher_path": str(teacher.path),
        "teacher_sha256": teacher.fingerprint, "teacher_layers": info.get("teacher_layers"),
        "teacher_matches_conversion": True,
        "chip": profile.name, "chip_path": str(profile.path),
        "converted_for": meta.get("profile"), "bits": meta.get("bits"),
        "backend": backend, "batch": batch, "chunks": len(starts),
        "data": {"corpus": info["corpus"] if corpus is None else str(corpus),
                 "corpus_read": corpus_read,
                 "split": "run" if corpus is None else "every line",
                 "in_run_training_split": seen_in_training,
                 "heldout_fraction": float(info["heldout_fraction"]) if corpus is None else None,
                 "heldout_sentences": heldout_total, "max_sentences": max_sentences,
                 "sentences": n, "max_len": seq_len, "truncated": int(tokens.truncated)},
        "agreement": agreement, "elements_matched": m_all, "elements_total": t_all,
        "agreement_fraction": m_all / t_all if t_all else 1.0, "bit_exact": m_all == t_all,
        "first_divergent_block": next((a["name"] for a in agreement
                                       if a["matched"] != a["total"]), None),
        "divergence": divergence,
        "overflow": reduce_overflow(program, profile, overflow, over_ranks=False).to_dict(),
        "quality": quality,
        "latency_ms": float(est.total_latency_ms), "latency_batch": 1,
        "latency_positions": seq_len,
        "fallbacks": [{"name": op.name, "reason": op.fallback_reason} for op in est.fallbacks],
        "fallback_count": len(est.fallbacks),
        "wall_s": wall, "simulator_s": sim_s, "simulator_share": sim_s / wall if wall > 0 else 0.0,
        "stage_s": stage, "commands": {"verify": command, "convert": info.get("command")},
    })
    if out is not None:
        atomic_write_bytes(out, (json_text(doc) + "\n").encode())
    return doc


# ----------------------------------------------------------------------------- text

def _num(v, fmt: str = "{:.4f}") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _bits(bits) -> str:
    if isinstance(bits, list):          # each block's widths
        return str(bits[0]) if len(set(bits)) == 1 else "/".join(map(str, bits))
    return str(bits or "?")


def format_text_verify(doc: dict) -> str:
    """The human summary of a ``verify_tokens`` report."""
    from archnet.text.quality import QUALITY_KEYS
    from archnet.verify_report import overflow_result_lines, pct
    from simulator.overflow import OverflowSummary
    d = doc["data"]
    first = "" if d["max_sentences"] is None or d["sentences"] == d["heldout_sentences"] else \
        f" (the first {d['sentences']} of {d['heldout_sentences']})"
    layers = doc.get("teacher_layers")
    lines = [
        f"verify {doc['program']} on {doc['chip']} ({doc['chip_path']})",
        f"  student  {doc['student']} (converted for {doc['converted_for'] or '?'}, "
        f"bits {_bits(doc['bits'])})",
        f"  teacher  {doc['teacher']} ({doc['teacher_path']})"
        + (f", its first {layers} layers" if layers else ""),
        f"  data     {d['sentences']} held-out sentences{first} of {d['corpus']} "
        + (f"(every line held out; {_num(d.get('in_run_training_split'), '{}')} in the run's "
           f"training split)" if d.get("split") == "every line" else
           f"(held-out fraction {d['heldout_fraction']})")
        + f", {d['max_len']} positions, {d['truncated']} "
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


__all__ = ["DEFAULT_BATCH", "DEFAULT_MAX_SENTENCES", "format_text_verify", "verify_command",
           "verify_tokens"]
