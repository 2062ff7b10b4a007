"""Train a converted MiniLM run's last (sentence-embedding) period again from its checkpoint
before it, with other settings, and measure the held-out quality of the chip's integers: an A/B
of last-period settings without a whole conversion.

    python benchmarks/minilm_last_period.py RUN [--steps 500] [--no-chip-values] [--lr 1e-4]
                                            [--sentences 512] [--out FILE]

RUN is an ``archnet convert minilm`` folder with ``student.pt`` and ``checkpoints/``; the
distillation sentences are drawn again as that run drew them (``convert.json``: corpus, max
length, number of sentences; seed 0). The last period then runs as ``archnet convert`` runs it
(frozen embedding on the simulator, blocks 1.. trained, cosine to the teacher's sentence
embedding); ``RUN`` is not written. Quality is ``archnet verify``'s (mean / min cosine, NN
agreement, Spearman) of the integer emulation, which equals the simulator bit for bit, on the
first ``--sentences`` held-out sentences: as converted, at the checkpoint before the last
period, and after the new last period.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from simulator.fileio import atomic_write_bytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder of archnet convert minilm")
    ap.add_argument("--steps", type=int, default=500, help="last-period steps (default 500)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--no-chip-values", action="store_true",
                    help="train on float fake-quant values, not the chip's integers")
    ap.add_argument("--sentences", type=int, default=512, help="held-out sentences (default 512)")
    ap.add_argument("--chip", default=None, help="chip profile (default: the run's)")
    ap.add_argument("--out", help="also write the result to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run = Path(args.run)
    summary_path = run / "convert.json"
    if not summary_path.is_file():
        sys.exit(f"error: {summary_path}: no convert summary (not an archnet convert run folder)")
    summary = json.loads(summary_path.read_text())
    if summary.get("family") != "text":
        sys.exit(f"error: {run}: a {summary.get('family')} run; this benchmark is for text runs")
    import torch

    from archnet.distill.checkpoint import load_checkpoint
    from archnet.text.convert import TextConvertOptions, load_corpus
    from archnet.text.distill import (SentenceBatches, SimulatorPrefix, TextDistillConfig,
                                      _period_blocks, _train_period)
    from archnet.text.quality import embedding_quality
    from archnet.text.student import pooled
    from archnet.text.student_io import load_text_student
    from archnet.text.teacher import load_text_teacher
    from simulator.profiles import load_profile

    student, _ = load_text_student(run / "student.pt")
    final_period = student.num_blocks
    before = run / "checkpoints" / f"period_{final_period - 1:02d}.pt"
    if not before.is_file():
        sys.exit(f"error: {before}: no checkpoint of the period before the last")
    chip = load_profile(args.chip or summary["chip"])
    teacher = load_text_teacher(summary["teacher_path"])
    corpus = None if summary["corpus"] == "fortunes" else summary["corpus"]
    tokens, _, heldout = load_corpus(teacher, TextConvertOptions(
        summary["teacher_path"], chip.name, str(run), corpus=corpus, max_len=summary["max_len"],
        max_sentences=summary["distill_sentences"], heldout_fraction=summary["heldout_fraction"]), 0)
    tok = teacher.tokenize(heldout[:args.sentences], summary["max_len"])
    ids, mask = torch.as_tensor(tok.input_ids), torch.as_tensor(tok.attention_mask)
    with torch.no_grad():
        ref = teacher.forward(ids, mask).embedding.numpy()

    def quality() -> dict:
        with torch.no_grad():
            q = student.integer_features(ids, mask, chip.arithmetic)[-1]
            emb = pooled(q.value.double() * float(q.scale), mask).numpy()   # as archnet verify
        return embedding_quality(emb, ref)

    cfg = TextDistillConfig(lr=args.lr, chip_values=not args.no_chip_values)
    measured = {}
    for name in ("as converted", f"period {final_period} checkpoint"):
        if name != "as converted":
            student.load_state_dict(load_checkpoint(before)["state_dict"])
        q = measured[name] = quality()
        print(f"{name}: cosine {q['mean_cosine']:.4f}, NN agreement {q['nn_agreement']:.3f}", flush=True)
    data = SentenceBatches(torch.as_tensor(tokens.input_ids), torch.as_tensor(tokens.attention_mask))
    first, last, final = _period_blocks(final_period, student.num_blocks, cfg.window, cfg.final_window)
    prefix = SimulatorPrefix(student, chip, data, cfg, lambda line: print(line, flush=True))
    prefix.advance_to(first - 1)
    t0 = time.perf_counter()
    record = _train_period(student, teacher, data, prefix, first, last, final, args.steps,
                           final_period, cfg, chip.arithmetic if cfg.chip_values else None)
    measured["last period again"] = quality()
    result = {"run": str(run), "chip": chip.name, "steps": args.steps, "lr": args.lr,
              "chip_values": cfg.chip_values, "sentences": len(ids), "train_seconds":
              round(time.perf_counter() - t0, 1), "loss_first": record["loss_first"],
              "loss_last": record["loss_last"],
              **{name: {k: q[k] for k in ("mean_cosine", "min_cosine", "nn_agreement", "spearman")}
                 for name, q in measured.items()}}
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
