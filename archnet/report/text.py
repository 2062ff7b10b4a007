"""``archnet report RUN_DIR [RUN_DIR ...]`` for text runs (``archnet convert`` of a text teacher,
whose convert.json records token ``inputs``): report.md, latency.csv, quality.csv.

- **Quality** per run and verified chip, from each ``verify_<chip>.json`` (``archnet verify``):
  how close the simulator's sentence embeddings of the held-out sentences are to the teacher's
  (mean and minimum cosine, nearest-neighbour agreement, Spearman of the pairwise similarities),
  the fake-quant student's mean cosine beside them, and the element agreement of the integer
  emulation with the simulator. A run without a record says "not verified".
- **Latency** on every bundled chip profile (or ``chips``), batch 1 at the run's ``max_len``:
  the teacher's graph (its ONNX export, costed estimate-only by ``teacher_latency_rows``: what
  the chip lacks runs on the host) beside each run's ``model.program``.

A run folder may hold only its JSON (``reports/minilm``'s do: the student is 90 MB, and
``benchmarks/minilm_results.py`` rebuilds it): its quality comes from its verify records as
ever, and its latency from what those records measured on the Program they verified, on their
chips only.
- **Distillation history** per run, as an image run's report has it (``tables.history_frame``,
  ``plots.plot_history``): each period's loss at its first and last step, its seconds and the
  simulator's share.
- **Data and commands**: the teacher, corpus, held-out split and sentence counts, and the
  command lines that converted, verified and reported.

Everything is read and computed first; the folder is then written under a temporary name and
renamed into place (``archnet.report.staging``), so it appears complete or not at all.
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from archnet.errors import ArchnetError, ReportError
from archnet.report.collect import TEXT_SUMMARY_FIELDS, check_fields, read_json, show_path
from archnet.report.markdown import Markdown, code
from archnet.report.staging import check_target, staged_folder
from archnet.runs import PROGRAM_FILE, STUDENT_FILE, SUMMARY_FILE

VERIFY_GLOB = "verify_*.json"


def _summary(path) -> dict | None:
    try:
        doc = json.loads((Path(path) / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def is_text_run(path) -> bool:
    """Whether ``path`` is a run folder of a text network: its convert.json records token
    ``inputs`` (``archnet convert`` of a text teacher)."""
    doc = _summary(path)
    return doc is not None and doc.get("inputs") == "tokens"


def is_retired_text_run(path) -> bool:
    """Whether ``path`` is a run folder of the retired ``archnet/text`` student (its convert.json
    records family "text" and no token inputs): no command reads those any more."""
    doc = _summary(path)
    return doc is not None and doc.get("family") == "text" and doc.get("inputs") != "tokens"


def report_command(run_dirs, out=None, chips=None) -> str:
    parts = ["archnet", "report", *map(str, run_dirs)]
    if chips:
        parts += ["--chips", ",".join(chips)]
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join(parts)


# ----------------------------------------------------------------------------- reading

@dataclass
class TextRun:
    path: Path
    summary: dict
    program: object | None             # None: the folder keeps only its JSON records
    verifies: dict[str, dict] = field(default_factory=dict)   # chip -> verify record
    stale: set[str] = field(default_factory=set)               # chips verified on another Program
    label: str = ""

    @property
    def bits(self) -> str:
        bits = self.summary.get("bits") or "?"
        if isinstance(bits, list):      # each block's widths
            return bits[0] if len(set(bits)) == 1 else "mixed " + "/".join(map(str, bits))
        return str(bits)

    @property
    def max_len(self) -> int:
        return int(self.summary["max_len"])

    @property
    def convert_command(self) -> str | None:
        cmd = self.summary.get("command")
        return cmd if isinstance(cmd, str) and cmd else None


def _verify_remedy(run: Path, chip: str) -> str:
    return shlex.join(["archnet", "verify", str(run / PROGRAM_FILE), "--chip", chip,
                       "--out", str(run / f"verify_{chip}.json")])


def open_text_run(path) -> TextRun:
    """Check a text run folder: its three files, that model.program is student.pt's export,
    and its verify records."""
    from archnet.student_io import load_student
    from archnet.student_program import check_program_matches
    from simulator.digest import files_sha256
    from simulator.errors import SimulatorError
    from simulator.ir.program import load_program

    run = Path(path)
    remedy = "archnet convert TEACHER --chip CHIP --out " + str(run)
    if not run.is_dir():
        raise ReportError(f"{run}: no such run folder (`{remedy}` makes one)")
    summary = read_json(run / SUMMARY_FILE, remedy)
    remedy = summary.get("command") or remedy
    missing = [n for n in (STUDENT_FILE, PROGRAM_FILE) if not (run / n).is_file()]
    records_only = len(missing) == 2 and any(not p.name.startswith(".")
                                             for p in run.glob(VERIFY_GLOB))
    if missing and not records_only:
        raise ReportError(f"{', '.join(str(run / m) for m in missing)}: missing from the run "
                          f"folder; `{remedy}` writes {'it' if len(missing) == 1 else 'them'}")
    if not isinstance(remedy, str):
        remedy = "archnet convert TEACHER --chip CHIP --out " + str(run)
    check_fields(summary, TEXT_SUMMARY_FIELDS, str(run / SUMMARY_FILE), remedy)
    for key in ("max_len", "teacher_path", "bits", "chip"):
        if summary.get(key) is None:
            raise ReportError(f"{run / SUMMARY_FILE}: no {key!r}; rewrite it with `{remedy}`")
    program = None
    if not records_only:
        try:
            program = load_program(run / PROGRAM_FILE)
            student, _meta = load_student(run / STUDENT_FILE)
            check_program_matches(program, student, run / PROGRAM_FILE, run / STUDENT_FILE)
        except SimulatorError as exc:   # ArchnetError included
            raise ReportError(f"{exc} (rewrite the run with `{remedy}`)") from None
    text_run = TextRun(run, summary, program)
    program_sha = None
    for p in sorted(run.glob(VERIFY_GLOB)):
        if p.name.startswith("."):
            continue
        doc = read_json(p, _verify_remedy(run, p.stem[len("verify_"):]))
        if doc.get("family") != "text" or not isinstance(doc.get("quality"), dict) \
                or not doc.get("chip"):
            raise ReportError(f"{p}: not a text `archnet verify --out` record; rewrite it with "
                              f"`{_verify_remedy(run, p.stem[len('verify_'):])}`")
        chip = str(doc["chip"])
        if chip in text_run.verifies:
            raise ReportError(f"{p}: a second verify record for chip {chip!r}; keep one")
        text_run.verifies[chip] = {**doc, "_file": str(p)}
        if doc.get("program_sha256") and program is not None:
            program_sha = program_sha or files_sha256(run / PROGRAM_FILE)
            if doc["program_sha256"] != program_sha:
                text_run.stale.add(chip)
    return text_run


def _labels(runs: list[TextRun]) -> None:
    names = [r.path.resolve().name for r in runs]
    for r, name in zip(runs, names):
        r.label = name if names.count(name) == 1 else show_path(r.path)


# ----------------------------------------------------------------------------- numbers

def _types_text(types: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in types.items()) if types else ""


def latency_rows(runs: list[TextRun], profiles, log) -> list[dict]:
    """Per chip: each distinct teacher graph (teacher, max_len, the layers a truncated run
    kept), then each run's Program."""
    from archnet.text.teacher import recorded_teacher
    from archnet.text.teacher_graph import teacher_latency_rows
    from simulator.cost import estimate

    teachers: dict[tuple, dict] = {}   # (teacher path, max_len, layers) -> {chip: row}
    run_teacher: dict[int, tuple] = {}
    loaded: dict[tuple, object] = {}
    for i, r in enumerate(runs):
        tpath = str(r.summary["teacher_path"])
        key = (tpath, r.max_len, r.summary.get("teacher_layers"))
        run_teacher[i] = key
        if key in teachers:
            continue
        try:
            if (tpath, key[2]) not in loaded:
                loaded[tpath, key[2]] = recorded_teacher(r.summary, r.path)
            teacher = loaded[tpath, key[2]]
            rows = teacher_latency_rows(teacher, r.max_len, profiles)
        except ReportError:
            raise
        except ArchnetError as exc:
            raise ReportError(f"{r.path / SUMMARY_FILE}: the teacher's graph cannot be costed: "
                              f"{exc}") from None
        name = teacher.name + (f", first {key[2]} layers" if key[2] else "")
        teachers[key] = {"name": name, "path": str(teacher.path),
                         "rows": {row["chip"]: row for row in rows}}
        log(f"estimated the teacher {name} at {r.max_len} positions on "
            f"{len(rows)} chip(s)")
    several = len(teachers) > 1
    out = []
    for prof in profiles:
        chip = prof.name
        teacher_ms = {}
        for key, t in teachers.items():
            row = t["rows"][chip]
            graph = f"teacher {t['name']}" + (f" ({key[1]} positions)" if several else "")
            teacher_ms[key] = row["latency_s"] * 1e3
            out.append({"chip": chip, "graph": graph, "kind": "teacher", "run": None,
                        "bits": "float", "max_len": key[1], "latency_ms": row["latency_s"] * 1e3,
                        "host_ms": row["host_latency_s"] * 1e3, "fallbacks": row["host_ops"],
                        "host_op_types": _types_text(row["fallback_types"]),
                        "macs": row["macs"], "speedup_vs_teacher": None,
                        "graph_source": t["path"]})
        for i, r in enumerate(runs):
            if r.program is None:
                row = _recorded_latency_row(r, chip, teacher_ms[run_teacher[i]])
                out += [row] if row else []
                continue
            est = estimate(r.program, prof)
            host = [op for op in est.ops if op.on_host]
            types = Counter(op.type for op in host)
            lat = est.total_latency_ms
            tms = teacher_ms[run_teacher[i]]
            out.append({"chip": chip, "graph": f"student {r.label}", "kind": "student",
                        "run": r.label, "bits": r.bits, "max_len": r.max_len, "latency_ms": lat,
                        "host_ms": sum(op.latency_ms for op in host),
                        "fallbacks": len(est.fallbacks),
                        "host_op_types": _types_text(dict(sorted(types.items(),
                                                                 key=lambda kv: (-kv[1], kv[0])))),
                        "macs": int(est.total.macs),
                        "speedup_vs_teacher": tms / lat if lat > 0 else None,
                        "graph_source": str(r.path / PROGRAM_FILE)})
    return out


def _recorded_latency_row(r: TextRun, chip: str, teacher_ms: float) -> dict | None:
    """A records-only run's latency on ``chip``: what its verify record estimated on the
    Program it verified (None where no record on that chip holds it)."""
    doc = r.verifies.get(chip) or {}
    lat = doc.get("latency_ms")
    if not isinstance(lat, (int, float)) or lat <= 0 or doc.get("latency_positions") != r.max_len:
        return None
    # a record names its host ops but not their types, nor the MACs and the host's share
    return {"chip": chip, "graph": f"student {r.label} (verify record)", "kind": "student",
            "run": r.label, "bits": r.bits, "max_len": r.max_len, "latency_ms": float(lat),
            "host_ms": None, "fallbacks": int(doc.get("fallback_count") or 0),
            "host_op_types": "", "macs": None, "speedup_vs_teacher": teacher_ms / lat,
            "graph_source": doc["_file"]}


def quality_rows(runs: list[TextRun], chips: set[str] | None) -> list[dict]:
    rows = []
    for r in runs:
        recs = {c: v for c, v in sorted(r.verifies.items()) if chips is None or c in chips}
        if not recs:
            rows.append({"run": r.label, "bits": r.bits, "chip": str(r.summary.get("chip")),
                         "status": "not verified", "sentences": None, "mean_cosine": None,
                         "median_cosine": None, "min_cosine": None, "nn_agreement": None,
                         "spearman": None, "fake_quant_mean_cosine": None,
                         "element_agreement": None, "bit_exact": None, "verify_file": None})
            continue
        for chip, doc in recs.items():
            sim = doc["quality"].get("simulator_vs_teacher") or {}
            fq = doc["quality"].get("fake_quant_vs_teacher") or {}
            data = doc.get("data") or {}
            rows.append({
                "run": r.label, "bits": r.bits, "chip": chip,
                "status": "stale: model.program changed since" if chip in r.stale else "verified",
                "sentences": data.get("sentences"),
                **{k: sim.get(k) for k in ("mean_cosine", "median_cosine", "min_cosine",
                                           "nn_agreement", "spearman")},
                "fake_quant_mean_cosine": fq.get("mean_cosine"),
                "element_agreement": doc.get("agreement_fraction"),
                "bit_exact": doc.get("bit_exact"), "verify_file": doc["_file"],
                # verified on the user's own text (`archnet verify --corpus`), not the run's split
                "own_corpus": data.get("corpus") if data.get("split") == "every line" else None})
    return rows


# ----------------------------------------------------------------------------- writing

def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    return spec.format(v)


def _md_table(header: list[str], rows: list[list[str]], numeric: int = 0) -> str:
    """A GitHub table; the last ``numeric`` columns are right-aligned (numbers)."""
    def cell(s) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")
    align = ["---"] * (len(header) - numeric) + ["---:"] * numeric
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def history_files(runs: list[TextRun]) -> dict[str, tuple[str, object]]:
    """Per run label: the stem of its history files and its history frame (runs without a
    per-period history are left out)."""
    from archnet.report.tables import history_frame

    def frame(r):
        df = history_frame(r.summary)
        return None if df.empty else df
    return _per_run(runs, "history", frame)


def plan_files(runs: list[TextRun]) -> dict[str, tuple[str, object]]:
    """Per run label: the stem of its plan table and the frame (``tables.plan_frame``)."""
    from archnet.report.tables import plan_frame
    return _per_run(runs, "plan", lambda r: plan_frame(r.summary))


def _per_run(runs: list[TextRun], kind: str, frame) -> dict[str, tuple[str, object]]:
    from archnet.report.build import slug
    out = {}
    for r in runs:
        df = frame(r)
        if df is not None:
            out[r.label] = (kind if len(runs) == 1 else f"{kind}_{slug(r.label)}", df)
    return out


def _per_run_section(md: Markdown, runs: list[TextRun], title: str, found: dict, absent: str,
                     write) -> None:
    """A section with one part per run (a sub-heading where several are reported): ``write(r,
    stem, df)`` for the runs in ``found``, ``absent`` said of the others' convert.json."""
    md.h(2, title)
    for r in runs:
        if len(runs) > 1:
            md.h(3, r.label)
        if r.label in found:
            write(r, *found[r.label])
        else:
            md.p(f"{code(show_path(r.path / SUMMARY_FILE))} {absent}.")


def _plan_section(md: Markdown, runs: list[TextRun], plans: dict) -> None:
    from archnet.report.build import plan_text
    from archnet.report.tables import markdown_table

    def write(r, stem, df):
        md.p(plan_text(r.summary, str(r.summary.get("chip"))) + f" Table: [{stem}.csv]({stem}.csv).")
        md.table(markdown_table(df[["node", "module", "op", "rule", "kept", "reason",
                                    "student_ops"]]))
    _per_run_section(md, runs, "Conversion plan: the rule per teacher node", plans,
                     "records no plan", write)


def _history_section(md: Markdown, runs: list[TextRun], history: dict, command: str) -> None:
    from archnet.report.tables import markdown_table

    def write(r, stem, df):
        md.figure(f"{stem}.png", f"distillation history of {r.label}",
                  "Blockwise distillation, one period per new block and a last period on the "
                  "sentence embedding: the loss of the period's window of blocks at its first and "
                  "last step, and the period's seconds with the simulator's share (it runs the "
                  f"earlier blocks). Table: [{stem}.csv]({stem}.csv).",
                  [f"data: {code(show_path(r.path / SUMMARY_FILE))}, written by "
                   f"{code(r.convert_command or 'archnet.convert(...)')}",
                   f"plotted by: {code(command)}"])
        md.table(markdown_table(df[["period", "new_block", "blocks", "steps", "loss_first",
                                    "loss_last", "seconds", "simulator_share"]]))
    _per_run_section(md, runs, "Distillation history", history, "holds no per-period history",
                     write)


def _markdown(runs: list[TextRun], profiles, lat: list[dict], qual: list[dict],
              command: str, history: dict, plans: dict) -> str:
    md = Markdown()
    md.h(1, "Arch-Net text report: " + ", ".join(r.label for r in runs))
    md.bullets([f"run folder{'s' if len(runs) > 1 else ''}: "
                + ", ".join(code(show_path(r.path)) for r in runs),
                f"this report: {code(command)} "
                f"({_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')})"])

    md.h(2, "Sentence-embedding quality on held-out sentences")
    rows = []
    for q in qual:
        if q["status"] == "not verified":
            rows.append([q["run"], q["bits"], q["chip"], "not verified"] + ["–"] * 7)
            continue
        agree = q["element_agreement"]
        stale = " (stale)" if q["status"] != "verified" else ""
        own = q.get("own_corpus")
        rows.append([q["run"], q["bits"], q["chip"] + stale + (f" (every line of {own})" if own else ""),
                     _fmt(q["sentences"], "{}"), _fmt(q["mean_cosine"], "{:.4f}"),
                     _fmt(q["min_cosine"], "{:.4f}"), _fmt(q["nn_agreement"], "{:.1%}"),
                     _fmt(q["spearman"], "{:.4f}"), _fmt(q["fake_quant_mean_cosine"], "{:.4f}"),
                     "100%" if agree == 1.0 else _fmt(agree, "{:.4%}"),
                     "yes" if q["bit_exact"] else "no"])
    md.table(_md_table(["run", "bits", "chip", "sentences", "mean cosine", "min cosine",
                        "NN agreement", "Spearman", "fake-quant mean cosine",
                        "element agreement", "bit-exact"], rows, numeric=8))
    md.p("The sentence embedding is the mean over real tokens of the last residual stream, "
         "L2-normalised (all-MiniLM-L6-v2's pooling), on sentences held out from distillation. "
         "*mean / min cosine*: between the simulator's embedding (the integer Program on the "
         "chip's arithmetic, dequantized) and the teacher's, per sentence. *NN agreement*: share "
         "of sentences whose most similar other sentence is the same for both. *Spearman*: rank "
         "correlation of all pairwise similarities, student against teacher. *fake-quant*: the "
         "float training-time student, for the gap deployment adds. *element agreement*: "
         "archnet's integer emulation against the simulator over every block output (must be "
         "100%). Table: [quality.csv](quality.csv).")
    unverified = [q for q in qual if q["status"] == "not verified"]
    if unverified:
        md.p("Not verified: " + "; ".join(
            code(_verify_remedy(r.path, str(r.summary.get("chip")))) for r in runs
            if any(q["run"] == r.label for q in unverified)) + " adds the quality numbers.")
    stale = [q for q in qual if q["status"].startswith("stale")]
    if stale:
        md.p("**Stale**: " + ", ".join(f"{code(q['run'])} on {code(q['chip'])}" for q in stale)
             + " verified an earlier `model.program` (its SHA-256 differs); verify again.")

    positions = sorted({r.max_len for r in runs})
    md.h(2, "Estimated latency per sentence (batch 1, "
         + "/".join(map(str, positions)) + " positions)")
    rows = []
    for row in lat:
        rows.append([row["chip"], row["graph"], row["bits"], row["host_op_types"] or "–",
                     _fmt(row["latency_ms"], "{:.4f}"), _fmt(row["host_ms"], "{:.4f}"),
                     str(row["fallbacks"]), _fmt(row["macs"], "{:,}"),
                     _fmt(row["speedup_vs_teacher"], "{:.2f}x")])
    md.table(_md_table(["chip", "graph", "bits", "host op types", "latency (ms)", "host (ms)",
                        "fallbacks", "MACs", "vs teacher"], rows, numeric=5))
    md.p("`simulator.cost.estimate` on each profile. *teacher*: the float teacher's ONNX export "
         "(opset 17, fixed shape), imported for estimation only: what the chip lacks "
         "(LayerNormalization, the embedding Gather, GELU's Erf, the mask's Cast/Where, ...) "
         "runs on the host; *fallbacks* counts its host ops and *host op types* names them (ONNX "
         "op types; IR ops where a chip also hands those to the host, with the host's work at "
         "the input: a student's embedding rows looked up as the host writes them, a gather "
         "that is not a fallback). *student*: the run's "
         "`model.program`; *vs teacher*: the teacher's latency over the student's. Profiles: "
         + ", ".join(f"{code(p.name)} ({code(show_path(p.path))})" for p in profiles)
         + ". Table: [latency.csv](latency.csv).")
    kept = [r for r in runs if r.program is None]
    if kept:
        md.p("Only the JSON records of " + ", ".join(code(show_path(r.path)) for r in kept)
             + " are in " + ("its folder" if len(kept) == 1 else "their folders")
             + " (no `model.program`; its convert command rebuilds it): *(verify record)* rows "
             "are the latency its verify records estimated on the Program they verified, on "
             "their chips only.")

    _plan_section(md, runs, plans)
    _history_section(md, runs, history, command)

    md.h(2, "Data and commands")
    for r in runs:
        s = r.summary
        blocks = s.get("blocks") if isinstance(s.get("blocks"), list) else []
        md.h(3, r.label)
        items = [
            f"folder: {code(show_path(r.path))}",
            f"teacher: {code(s.get('teacher') or '?')} at {code(s['teacher_path'])}"
            + (f", its first {s['teacher_layers']} encoder layers" if s.get("teacher_layers")
               else "")
            + (f", weights SHA-256 {code(s['teacher_sha256'])}" if s.get("teacher_sha256") else ""),
            f"student: {code(r.bits)}" + (f", {len(blocks)} blocks" if blocks else "")
            + f"; converted for {code(s.get('chip'))}"
            + (f" ({code(show_path(s['profile_path']))})" if s.get("profile_path") else ""),
            f"corpus: {code(s.get('corpus') or 'fortunes')}; held-out fraction "
            f"{s.get('heldout_fraction')} (a sentence is held out by the SHA-1 of its text; "
            f"held-out sentences are never distilled on): {s.get('distill_sentences', '?')} "
            f"distillation sentences ({s.get('truncated', '?')} truncated), "
            f"{s.get('heldout_sentences', '?')} held out; {r.max_len} positions",
            "converted by: " + (code(r.convert_command) if r.convert_command else
                                "not recorded (converted from Python)"),
        ]
        for chip, doc in sorted(r.verifies.items()):
            d = doc.get("data") or {}
            by = (doc.get("commands") or {}).get("verify") or "?"
            held = (f"{d.get('sentences')} sentences of {code(str(d.get('corpus')))} (every "
                    f"line held out, of {d.get('heldout_sentences')})"
                    if d.get("split") == "every line" else
                    f"{d.get('sentences')} held-out sentences (of {d.get('heldout_sentences')})")
            items.append(
                f"verified on {code(chip)}: {held}, {d.get('truncated')} truncated to "
                f"{d.get('max_len')} positions; by {code(by)} ({code(show_path(doc['_file']))})")
        md.bullets(items)
    md.h(2, "Files")
    md.bullets(["[report.md](report.md)", "[latency.csv](latency.csv)",
                "[quality.csv](quality.csv)"]
               + [f"[{stem}.csv]({stem}.csv)" for stem, _ in plans.values()]
               + [f"[{stem}{ext}]({stem}{ext})" for stem, _ in history.values()
                  for ext in (".csv", ".png")])
    return md.text()


def write_text_report(run_dirs, out, chips=None, log=print, command: str | None = None) -> Path:
    """Write ``out/report.md``, ``out/latency.csv`` and ``out/quality.csv`` for the text run
    folders ``run_dirs`` (see the module doc). ``chips``: profile names or files for the latency
    table and the quality rows (a list or "a,b"; default every bundled profile and every
    verified chip). Returns ``out``. Raises ``ReportError`` (one line) before writing anything
    when a run folder is incomplete or its files disagree."""
    import pandas as pd

    from archnet.report.build import parse_chips
    from archnet.report.plots import plot_history
    from simulator.profiles import list_profiles, load_profile

    say = log or (lambda _m: None)
    run_dirs = [Path(p) for p in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]
    if not run_dirs:
        raise ReportError("no run folder to report")
    out = Path(out)
    check_target(out, run_dirs)
    chip_list = parse_chips(chips)
    cmd = command or report_command(run_dirs, out, chip_list)
    runs = []
    for p in run_dirs:
        if not is_text_run(p):
            raise ReportError(f"{p}: not a text run folder (its {SUMMARY_FILE} does not record "
                              f"token inputs); report image runs one at a time")
        runs.append(open_text_run(p))
    _labels(runs)
    profiles = [load_profile(c) for c in (chip_list or list_profiles())]
    profiles = list({p.name: p for p in profiles}.values())
    lat = latency_rows(runs, profiles, say)
    qual = quality_rows(runs, None if chip_list is None else {p.name for p in profiles})
    history, plans = history_files(runs), plan_files(runs)
    text = _markdown(runs, profiles, lat, qual, cmd, history, plans)
    quality = pd.DataFrame(qual)
    if "own_corpus" in quality and quality["own_corpus"].isna().all():    # only when verified so
        quality = quality.drop(columns="own_corpus")
    quality["sentences"] = quality["sentences"].astype("Int64")  # not 8.0 beside unverified runs
    with staged_folder(out, run_dirs) as tmp:
        pd.DataFrame(lat).to_csv(tmp / "latency.csv", index=False, errors="backslashreplace")
        quality.to_csv(tmp / "quality.csv", index=False, errors="backslashreplace")
        for stem, df in plans.values():
            df.to_csv(tmp / f"{stem}.csv", index=False, errors="backslashreplace")
        for label, (stem, df) in history.items():
            r = next(r for r in runs if r.label == label)
            df.to_csv(tmp / f"{stem}.csv", index=False, errors="backslashreplace")
            share = r.summary.get("simulator_share")
            plot_history(df, tmp / f"{stem}.png",
                         footer=[f"data: {show_path(r.path / SUMMARY_FILE)} (history), written by: "
                                 f"{r.convert_command or 'archnet.convert(...)'}",
                                 f"simulator in the loop on profile: {r.summary.get('chip')}",
                                 f"plotted by: {cmd}"],
                         total_share=float(share) if isinstance(share, (int, float)) else None)
        (tmp / "report.md").write_text(text, encoding="utf-8", errors="backslashreplace")
    say(f"wrote {out / 'report.md'}")
    return out


__all__ = ["TextRun", "is_retired_text_run", "is_text_run", "latency_rows", "open_text_run", "quality_rows",
           "report_command", "write_text_report"]
