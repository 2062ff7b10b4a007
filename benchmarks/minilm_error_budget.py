"""Where a converted MiniLM student loses the teacher: an error budget per block and per token
kind on held-out sentences, and what sentence-embedding cosine a nearest-neighbour target needs.

    python benchmarks/minilm_error_budget.py reports/minilm/8w8a [--sentences 256] [--out FILE]

Per block (0 = embedding, i + 1 = encoder layer i), against the teacher's hidden state at the
same depth, over real tokens:

- chained: the student run from the tokens (its own errors accumulate);
- forced: this block alone, fed the teacher's previous hidden state on the student's grid;
- grid: the teacher's hidden state put on the student's 8-bit stream grid (rounding and
  clipping only: what the grid itself costs).

Relative MSE is ``mean (s - t)^2 / mean t^2``. The student runs fake-quant (float on the
integer grids); the exported Program differs from it only by the integer softmax, LUT and
requantize rounding (``archnet verify`` measures those outputs). The last table adds isotropic
noise to the teacher's normalised embeddings: the cosine at which nearest-neighbour agreement
falls to a given level on these sentences, for errors that are not structured.

Needs the run folder's ``student.pt`` (``archnet convert minilm ...``) and the ``text`` extra.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from simulator.fileio import atomic_write_bytes


def _rel(a, b, valid) -> float:
    return float(((a - b)[valid] ** 2).mean() / (b[valid] ** 2).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder holding student.pt")
    ap.add_argument("--teacher", default="minilm")
    ap.add_argument("--sentences", type=int, default=256, help="held-out sentences (default 256)")
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from archnet.text.corpus import read_sentences, split_heldout
    from archnet.text.quality import embedding_quality
    from archnet.text.student import pooled
    from archnet.text.student_io import load_text_student
    from archnet.text.teacher import load_text_teacher

    student_path = Path(args.run) / "student.pt"
    if not student_path.is_file():
        sys.exit(f"error: {student_path}: no student checkpoint (run archnet convert first)")
    student, _ = load_text_student(student_path)
    teacher = load_text_teacher(args.teacher)
    _, heldout = split_heldout(read_sentences())
    tok = teacher.tokenize(heldout[:args.sentences], student.cfg.max_positions)
    ids, mask = torch.as_tensor(tok.input_ids), torch.as_tensor(tok.attention_mask)
    valid = mask.bool()
    lines = [f"# Error budget of {args.run} on {len(ids)} held-out fortunes", ""]
    with torch.no_grad():
        out = teacher.forward(ids, mask)
        hidden = out.hidden_states
        chain = student.features(ids, mask)
        lines += ["| block | chained rel. MSE | chained token cosine | chained pooled cosine "
                  "| forced rel. MSE | grid rel. MSE |", "|---|---:|---:|---:|---:|---:|"]
        for i, name in enumerate(student.block_names()):
            prev = student.stream_quant(i - 1)(hidden[i - 1]) if i else None
            forced = student.features(ids, mask, start=i, stop=i + 1, stream=prev)[0]
            grid = student.stream_quant(i)(hidden[i])
            tok_cos = torch.nn.functional.cosine_similarity(chain[i][valid], hidden[i][valid], dim=-1)
            pooled_q = embedding_quality(pooled(chain[i], mask).numpy(), pooled(hidden[i], mask).numpy())
            lines.append(f"| {name} | {_rel(chain[i], hidden[i], valid):.4f} | {float(tok_cos.mean()):.4f} "
                         f"| {pooled_q['mean_cosine']:.4f} | {_rel(forced, hidden[i], valid):.4f} "
                         f"| {_rel(grid, hidden[i], valid):.5f} |")
        lengths = mask.sum(1)
        cls = torch.zeros_like(valid)
        cls[:, 0] = True
        sep = torch.zeros_like(valid)
        sep[torch.arange(len(lengths)), lengths - 1] = True
        kinds = {"[CLS]": cls, "[SEP]": sep, "other": valid & ~cls & ~sep}
        lines += ["", "Chained error by token kind (share of the block's squared error; relative MSE "
                  "of that kind; the grid's own relative MSE for it):", "",
                  "| block | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for i, name in enumerate(student.block_names()):
            err = (chain[i] - hidden[i]).pow(2).sum(-1)
            grid_err = (student.stream_quant(i)(hidden[i]) - hidden[i]).pow(2).sum(-1)
            norm = hidden[i].pow(2).sum(-1)
            total = err[valid].sum()
            cells = [f"{float(err[k].sum() / total):.2f}; {float(err[k].mean() / norm[k].mean()):.4f}; "
                     f"{float(grid_err[k].mean() / norm[k].mean()):.4f}" for k in kinds.values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        student_emb = pooled(chain[-1], mask).numpy()
    ref = out.embedding.numpy()
    q = embedding_quality(student_emb, ref)
    lines += ["", f"Student (fake-quant) sentence embedding: mean cosine {q['mean_cosine']:.4f}, "
              f"NN agreement {q['nn_agreement']:.3f}, Spearman {q['spearman']:.3f}", "",
              "Isotropic noise on the teacher's embedding (seed 0):", "",
              "| noise sigma | mean cosine | NN agreement | Spearman |", "|---:|---:|---:|---:|"]
    rng = np.random.default_rng(0)
    unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    for sigma in (0.05, 0.1, 0.15, 0.2, 0.3):
        noisy = unit + rng.normal(0.0, sigma / np.sqrt(ref.shape[1]), ref.shape)
        r = embedding_quality(noisy, ref)
        lines.append(f"| {sigma} | {r['mean_cosine']:.4f} | {r['nn_agreement']:.3f} | {r['spearman']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
