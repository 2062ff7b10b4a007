"""``archnet verify`` for a text network converted by the chip-driven converter (a run whose
Program reads one-hot ``tokens`` and a key mask): the held-out sentences through the
simulator, archnet's integer emulation, the fake-quant student and the teacher.

The held-out sentences are the corpus' split as convert made it (``convert.json``: corpus,
``heldout_fraction``, ``max_len``), never distilled on; the teacher is the one recorded (its
weights' hash checked). Every block output of the emulation must equal the simulator's; the
sentence embeddings (the last token rows mean-pooled over the real tokens, L2-normalised) of
the simulator and of the fake-quant student are compared with the teacher's
(``archnet.text.quality.embedding_quality``). The report has the text verify's fields, so
``archnet.text.verify.format_text_verify`` prints it.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from archnet.distill.inputs import TokenInputs
from archnet.errors import CheckpointError, DataError
from archnet.runs import STUDENT_FILE, SUMMARY_FILE
from archnet.student_program import check_program_matches, load_run_program

_RUN_KEYS = ("corpus", "heldout_fraction", "max_len", "teacher_path", "teacher_sha256")


def _run_info(program_path: Path) -> dict:
    path = program_path.parent / SUMMARY_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}); a text run folder "
                              f"written by `archnet convert` has it") from None
    missing = [k for k in _RUN_KEYS if not isinstance(info, dict) or info.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: records no {', '.join(missing)} (written by `archnet "
                              f"convert TEXT_TEACHER --recipe native`?)")
    info["teacher"] = info.get("teacher_name") or info.get("teacher")
    return info


def verify_tokens(program_path, chip, *, out=None, max_sentences: int | None = 512,
                  batch: int = 16, progress=None, command: str | None = None,
                  log=print) -> dict:
    from archnet.verify_report import advance, progress_bar
    from archnet.student_io import load_student
    from archnet.text.corpus import TruncationWarning
    from archnet.text.quality import MIN_SENTENCES, verify_quality
    from archnet.text.student import pooled
    from archnet.text.verify import _heldout, _text_teacher
    from simulator.cost import estimate
    from simulator.execute import execute
    from simulator.fileio import atomic_write_bytes
    from simulator.jsontext import finite_or_null, json_text
    from simulator.profiles import ChipProfile, load_profile

    start_t = time.perf_counter()
    program_path = Path(program_path)
    program = load_run_program(program_path)
    student_path = program_path.parent / STUDENT_FILE
    if not student_path.is_file():
        raise CheckpointError(f"{student_path}: no such student checkpoint beside {program_path}")
    student, meta = load_student(student_path)
    check_program_matches(program, student, program_path, student_path)
    info = _run_info(program_path)
    folder = program_path.parent
    teacher = _text_teacher(info, folder)
    profile = chip if isinstance(chip, ChipProfile) else load_profile(chip)
    seq_len, vocab = student.input_shape
    mask_name = next(iter(student.side_inputs))
    sentences, heldout_total, corpus = _heldout(info, folder, max_sentences)
    n = len(sentences)
    if n < MIN_SENTENCES:
        raise DataError(f"corpus {corpus}: {n} held-out sentence(s); embedding quality needs at "
                        f"least {MIN_SENTENCES}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        tokens = teacher.tokenize(sentences, seq_len)
    ids_all = torch.as_tensor(tokens.input_ids)
    mask_all = torch.as_tensor(tokens.attention_mask)
    data = TokenInputs(ids_all, mask_all, vocab, mask_name)
    log(f"verify {program_path} on {profile.name}: {n} held-out sentences of {corpus}, "
        f"{seq_len} positions, chunks of {batch}")
    names = student.block_names
    matched = np.zeros(len(names), np.int64)
    totals = np.zeros(len(names), np.int64)
    emb = {k: [] for k in ("simulator", "emulation", "fake_quant", "teacher")}
    stage = {"simulator": 0.0, "emulation": 0.0, "fake-quant": 0.0, "teacher": 0.0}
    programs: dict[int, object] = {}
    block_pieces: list[list[str]] = []
    starts = list(range(0, n, batch))
    bar = progress_bar(len(starts), progress, profile.name)
    student.eval()
    try:
        for b0 in starts:
            idx = torch.arange(b0, min(b0 + batch, n))
            ids, mask = data.teacher(idx)
            token_ids, side = data.student(idx)
            onehot = student.input.rows(token_ids)
            k = len(idx)
            if k not in programs:
                programs[k] = student.export((k, seq_len, vocab), feature_outputs=True)
            prog = programs[k]
            t = time.perf_counter()
            sim = execute(prog, profile, {prog.inputs[0]: onehot.numpy().astype(np.uint8),
                                          prog.inputs[1]: mask.numpy().astype(np.uint8)},
                          trace=False).outputs
            stage["simulator"] += time.perf_counter() - t
            t = time.perf_counter()
            ours = student.integer_features(token_ids, profile, side=side)
            stage["emulation"] += time.perf_counter() - t
            pieces = block_pieces = prog.metadata["archnet"]["block_outputs"]
            for i, (ps, q) in enumerate(zip(pieces, ours, strict=True)):
                s = np.asarray(sim[ps[0]])
                mine = q.value.numpy()
                matched[i] += int((s.astype(np.int64) == mine).sum()) if s.shape == mine.shape else 0
                totals[i] += mine.size
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
        "program": str(program_path), "student": str(student_path),
        "teacher": teacher.name, "teacher_path": str(teacher.path),
        "teacher_sha256": teacher.fingerprint, "teacher_matches_conversion": True,
        "chip": profile.name, "chip_path": str(profile.path),
        "converted_for": meta.get("profile"), "bits": meta.get("bits"),
        "backend": "kernels", "batch": batch, "chunks": len(starts),
        "data": {"corpus": info["corpus"], "corpus_read": corpus,
                 "heldout_fraction": float(info["heldout_fraction"]),
                 "heldout_sentences": heldout_total, "max_sentences": max_sentences,
                 "sentences": n, "max_len": seq_len, "truncated": int(tokens.truncated)},
        "agreement": agreement, "elements_matched": m_all, "elements_total": t_all,
        "agreement_fraction": m_all / t_all if t_all else 1.0, "bit_exact": m_all == t_all,
        "first_divergent_block": next((a["name"] for a in agreement
                                       if a["matched"] != a["total"]), None),
        "divergence": None, "overflow": None, "quality": quality,
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


__all__ = ["verify_tokens"]
