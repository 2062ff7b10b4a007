"""``archnet report RUN_DIR`` and ``archnet compare MODEL --chips a,b,c``: the command lines of
``archnet.report`` (pandas, matplotlib and torch are imported in the handlers only).

Text run folders (convert.json records token ``inputs``) go to
``archnet.report.text.write_text_report``, which takes several RUN_DIRs side by side."""

from __future__ import annotations

import shlex

from simulator.argtypes import int_in
from simulator.jsontext import json_text


def _report_command(args) -> str:
    parts = ["archnet", "report", args.run_dirs[0]]
    for o in args.others or []:
        parts += ["--with", o]
    if args.chips:
        parts += ["--chips", args.chips]
    if args.out:
        parts += ["--out", args.out]
    if args.images != 64:
        parts += ["--images", str(args.images)]
    if args.latency_only:
        parts.append("--latency-only")
    return shlex.join(parts)


def cmd_report(args) -> int:
    from archnet.errors import ReportError
    from archnet.report.text import is_retired_text_run, is_text_run
    for d in [*args.run_dirs, *(args.others or [])]:
        if is_retired_text_run(d):
            raise ReportError(f"{d}: a run of the retired archnet/text student, which no command "
                              f"reads any more; convert its teacher again (`archnet convert "
                              f"TEACHER --chip CHIP --out RUN`) and report RUN")
    if any(is_text_run(d) for d in [*args.run_dirs, *(args.others or [])]):
        return _cmd_report_text(args)
    if len(args.run_dirs) > 1:
        raise ReportError(f"{len(args.run_dirs)} RUN_DIRs: a CNN run is reported one at a time; "
                          f"add other runs to its accuracy-latency figure with --with")
    from archnet.report import write_report
    out = write_report(args.run_dirs[0], others=args.others or (), chips=args.chips, out=args.out,
                       images=args.images, latency_only=args.latency_only,
                       command=_report_command(args),
                       log=None if args.quiet else (lambda m: print(m, flush=True)))
    files = sorted(p.name for p in out.iterdir())
    pngs = sum(f.endswith(".png") for f in files)
    csvs = sum(f.endswith(".csv") for f in files)
    print(f"wrote {out / 'report.md'} with {pngs} PNG plot(s) and {csvs} CSV table(s) in {out}")
    return 0


def _cmd_report_text(args) -> int:
    from pathlib import Path

    from archnet.errors import ReportError
    from archnet.report.build import parse_chips
    from archnet.report.text import report_command, write_text_report
    runs = [*args.run_dirs, *(args.others or [])]
    given = (["--images"] if args.images != 64 else []) + \
        (["--latency-only"] if args.latency_only else [])
    if given:
        raise ReportError(f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to "
                          f"CNN runs; a text report always has latency, and quality where a "
                          f"verify_<chip>.json is present")
    out = Path(args.out) if args.out else Path(runs[0]) / "report"
    write_text_report(runs, out, chips=args.chips,
                      command=report_command(runs, args.out, parse_chips(args.chips)),
                      log=None if args.quiet else (lambda m: print(m, flush=True)))
    files = sorted(p.name for p in out.iterdir())
    csvs = sum(f.endswith(".csv") for f in files)
    print(f"wrote {out / 'report.md'} with {csvs} CSV table(s) in {out}")
    return 0


def _compare_command(args) -> str:
    parts = ["archnet", "compare", args.model, "--chips", args.chips]
    if args.plot:
        parts += ["--plot", args.plot]
    if args.csv:
        parts += ["--csv", args.csv]
    if args.json:
        parts.append("--json")
    return shlex.join(parts)


def cmd_compare(args) -> int:
    from archnet.report.compare import (compare_model, comparison_dict, format_comparison,
                                        per_op_frame, plot_comparison)
    from simulator.fileio import atomic_write_bytes
    from simulator.outputs import check_file_outputs
    check_file_outputs({"--csv": args.csv, "--plot": args.plot}, inputs=[args.model],
                       suffixes={"--csv": (".csv",), "--plot": (".png",)})
    c = compare_model(args.model, args.chips, command=_compare_command(args))
    if args.json:
        print(json_text(comparison_dict(c)))
    else:
        print(format_comparison(c))
    if args.csv:
        table = per_op_frame(c).to_csv(index=False)
        atomic_write_bytes(args.csv, table.encode(errors="backslashreplace"))
    if args.plot:
        plot_comparison(c, args.plot)
    if not args.json:
        for what, path in (("per-op table", args.csv), ("plot", args.plot)):
            if path:
                print(f"wrote {what} {path}")
    return 0


def add_commands(sub) -> None:
    """Mount ``report`` and ``compare`` on an argparse sub-parser collection."""
    p = sub.add_parser(
        "report", help="a run folder's report: report.md, CSV tables and PNG plots per chip",
        description="Write RUN_DIR/report/ (or --out): report.md with per-chip latency per op "
                    "(compute, memory, overhead; fallbacks marked), accuracy against latency "
                    "across bit widths and chips (with --with runs), per-layer error between the "
                    "fake-quant student and the simulator's integers, the teacher's graph against "
                    "the Arch-Net graph, the conversion plan (the rule per teacher node and why) and "
                    "the distillation history; every table as CSV, every "
                    "figure as PNG naming the command, profile file and data behind it. The folder "
                    "is written under a temporary name and renamed into place. Text runs "
                    "(converted from a text teacher; several RUN_DIRs side by side): report.md, "
                    "latency.csv and quality.csv with the sentence-embedding quality of each "
                    "verify_<chip>.json and the teacher's graph against each student on every "
                    "bundled chip profile (or --chips).")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+",
                   help="a run folder written by `archnet convert` (text runs: one or more, "
                        "reported side by side)")
    p.add_argument("--with", dest="others", action="extend", nargs="+", metavar="OTHER_RUN",
                   help="more run folders (other bit widths) for the accuracy-latency figure")
    p.add_argument("--chips", metavar="A,B", help="chips to report, separated by commas (default: "
                   "the conversion chip and every chip with a verify_<chip>.json; text runs: "
                   "every bundled profile)")
    p.add_argument("--out", metavar="DIR", help="report folder (default RUN_DIR/report, the first "
                                                "RUN_DIR's)")
    p.add_argument("--latency-only", action="store_true",
                   help="no accuracy data needed (no verify_<chip>.json) and none reported")
    p.add_argument("--images", type=int_in(0), default=64, metavar="N",
                   help="unlabeled training images for the per-layer error (default 64; 0 leaves "
                        "it out)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the last line")
    p.set_defaults(func=cmd_report)

    c = sub.add_parser(
        "compare", help="one network's estimated latency and fallbacks on several chips, side "
                        "by side",
        description="Estimate MODEL (a .program, an .onnx imported for estimation only, or a run "
                    "folder's model.program) on every chip of --chips and print, per chip, the "
                    "total latency, NPU and host time, the fallbacks with their reasons, and a "
                    "per-op table across the chips.")
    c.add_argument("model", metavar="MODEL", help=".program, .onnx or run folder")
    c.add_argument("--chips", required=True, metavar="A,B,C",
                   help="chip profile names or TOML files, separated by commas")
    c.add_argument("--plot", metavar="FILE.png", help="also plot the chips side by side")
    c.add_argument("--csv", metavar="FILE", help="also write the per-op table across chips")
    c.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    c.set_defaults(func=cmd_compare)


__all__ = ["add_commands", "cmd_compare", "cmd_report"]
