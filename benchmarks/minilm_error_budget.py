"""Where a converted MiniLM student loses the teacher: an error budget per block and per token
kind on held-out sentences, and what sentence-embedding cosine a nearest-neighbour target needs.

    python benchmarks/minilm_error_budget.py reports/minilm/8w8a [--sentences 256] [--integers] [--out FILE]

RUN is a text run folder of ``archnet convert minilm ...`` (the shared pipeline: ``student.pt``,
``convert.json``); the teacher, corpus and held-out split are the ones it records, as for
``archnet verify``. Per student block, against the teacher's value the block imitates (its tap
in the captured teacher graph; for MiniLM the hidden state after each LayerNorm that ends the
embedding or an encoder layer), over real tokens:

- chained: the student run from the tokens (its own errors accumulate);
- forced: this block alone, fed the teacher's value of the block before on the student's grid;
- grid: the teacher's value put on the grid of the block's output (rounding and clipping only:
  what the grid itself costs).

Relative MSE is ``mean (s - t)^2 / mean t^2``. The student runs fake-quant (float on the
integer grids); the exported Program differs from it only by the integer softmax, LUT and
requantize rounding (``archnet verify`` measures those outputs). ``--integers`` runs it on the
chip's integers instead (archnet's emulation under the recorded chip's arithmetic, equal to the
simulator): for a student whose last period trained on them (``--chip-forward``). The last table adds isotropic
noise to the teacher's normalised embeddings: the cosine at which nearest-neighbour agreement
falls to a given level on these sentences, for errors that are not structured.

Needs the run folder and the ``text`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from simulator.fileio import atomic_write_bytes


def _rel(a, b, valid) -> float:
    return float(((a - b)[valid] ** 2).mean() / (b[valid] ** 2).mean())


def _output_grid(student, i: int):
    """The quantizer whose grid block ``i``'s output lies on."""
    block = student.blocks[i]
    ref = block.spec["outputs"][0]
    step = next(st for st in block.spec["steps"] if st["name"] == ref)
    if "quant" not in step:
        raise SystemExit(f"error: block {block.name!r} ends in a {step['kind']} step that writes "
                         f"no grid of its own; this benchmark needs one")
    return student.quantizers[step["quant"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="text run folder holding student.pt and convert.json")
    ap.add_argument("--sentences", type=int, default=256, help="held-out sentences (default 256)")
    ap.add_argument("--chunk", type=int, default=16,
                    help="sentences per student forward (its one-hot rows are vocabulary-wide)")
    ap.add_argument("--integers", action="store_true",
                    help="run the student on the chip's integers (its emulation), not fake-quant")
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args()
    if args.chunk < 1:
        sys.exit("error: --chunk must be >= 1")
    if args.sentences < 3:
        sys.exit("error: --sentences must be >= 3")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from archnet.capture import capture
    from archnet.quant.qtensor import QTensor
    from simulator.profiles import load_profile
    from archnet.jobs.convert import TokenEncoder
    from archnet.student_io import load_student
    from archnet.text.corpus import recorded_heldout
    from archnet.text.quality import embedding_quality, pooled
    from archnet.text.teacher import recorded_teacher

    run = Path(args.run)
    student_path, summary_path = run / "student.pt", run / "convert.json"
    if not student_path.is_file() or not summary_path.is_file():
        sys.exit(f"error: {run}: no student.pt and convert.json (run archnet convert first)")
    info = json.loads(summary_path.read_text(encoding="utf-8"))
    if info.get("inputs") != "tokens":
        sys.exit(f"error: {run}: not a text run (its convert.json records no token inputs)")
    student, _ = load_student(student_path)
    student.eval()
    teacher = recorded_teacher(info, run)
    heldout, _, _ = recorded_heldout(info, run, args.sentences)
    seq_len, _vocab = student.input_shape
    mask_name = next(iter(student.side_inputs))
    tok = teacher.tokenize(heldout, seq_len)
    ids, mask = torch.as_tensor(tok.input_ids), torch.as_tensor(tok.attention_mask)
    side = {mask_name: mask.float()}
    valid = mask.bool()
    graph = capture(TokenEncoder(teacher.model.eval()).eval(), (ids[:1], mask[:1]))
    how = "the chip's integers" if args.integers else "fake-quant"
    lines = [f"# Error budget of {args.run} on {len(ids)} held-out sentences ({how})", ""]
    grids = [_output_grid(student, i) for i in range(len(student.blocks))]
    arith = load_profile(info["chip"]).arithmetic if args.integers else None

    def features(chunk, part_side):
        if arith is None:
            return student.features(ids[chunk], side=part_side)
        return [q.dequantize().float() for q in student.integer_features(ids[chunk], arith, part_side)]

    def forced_block(i, value, part_side):
        if arith is None:
            return student.blocks[i](grids[i - 1](value), True, part_side)
        grid = grids[i - 1]
        q = QTensor(grid.integer(value), float(grid.step()), grid.qtype)
        return student.blocks[i].integer_forward(q, arith, part_side).dequantize().float()
    with torch.no_grad():
        found = graph.values(ids, mask, keep=set(student.block_taps))
        target = [found[t] for t in student.block_taps]
        # the student's one-hot rows are vocabulary-wide: a few sentences at a time
        parts, forced_parts = [], []
        for chunk in torch.arange(len(ids)).split(args.chunk):
            part_side = {mask_name: side[mask_name][chunk]}
            parts.append(features(chunk, part_side))
            forced_parts.append([forced_block(i, target[i - 1][chunk], part_side)
                                 for i in range(1, len(student.blocks))])
        chain = [torch.cat(c) for c in zip(*parts)]
        # the first block reads the tokens themselves: forced is chained there
        forced_all = [chain[0], *(torch.cat(c) for c in zip(*forced_parts))]
        lines += ["| block | chained rel. MSE | chained token cosine | chained pooled cosine "
                  "| forced rel. MSE | grid rel. MSE |", "|---|---:|---:|---:|---:|---:|"]
        for i, name in enumerate(student.block_names):
            forced = forced_all[i]
            grid = grids[i](target[i])
            tok_cos = torch.nn.functional.cosine_similarity(chain[i][valid], target[i][valid], dim=-1)
            pooled_q = embedding_quality(pooled(chain[i], mask).numpy(), pooled(target[i], mask).numpy())
            lines.append(f"| {name} | {_rel(chain[i], target[i], valid):.4f} | {float(tok_cos.mean()):.4f} "
                         f"| {pooled_q['mean_cosine']:.4f} | {_rel(forced, target[i], valid):.4f} "
                         f"| {_rel(grid, target[i], valid):.5f} |")
        lengths = mask.sum(1)
        cls = torch.zeros_like(valid)
        cls[:, 0] = True
        sep = torch.zeros_like(valid)
        sep[torch.arange(len(lengths)), lengths - 1] = True
        kinds = {"[CLS]": cls, "[SEP]": sep, "other": valid & ~cls & ~sep}
        lines += ["", "Chained error by token kind (share of the block's squared error; relative MSE "
                  "of that kind; the grid's own relative MSE for it):", "",
                  "| block | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for i, name in enumerate(student.block_names):
            err = (chain[i] - target[i]).pow(2).sum(-1)
            grid_err = (grids[i](target[i]) - target[i]).pow(2).sum(-1)
            norm = target[i].pow(2).sum(-1)
            total = err[valid].sum()
            cells = [f"{float(err[k].sum() / total):.2f}; {float(err[k].mean() / norm[k].mean()):.4f}; "
                     f"{float(grid_err[k].mean() / norm[k].mean()):.4f}" for k in kinds.values()]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        student_emb = pooled(chain[-1], mask).numpy()
        ref = teacher.forward(ids, mask).embedding.numpy()
    q = embedding_quality(student_emb, ref)
    lines += ["", f"Student ({how}) sentence embedding: mean cosine {q['mean_cosine']:.4f}, "
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
