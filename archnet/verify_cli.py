"""``archnet verify PROGRAM --chip NAME``: a converted network's test set through the simulator.

Prints the report (or ``--json``); ``--out FILE.json`` writes the JSON atomically. Exit 0 when
archnet's integer emulation and the simulator agree on every element, 1 when any differs, 2 for a
user error (``simulator.cli.run``). Under ``torchrun`` the images are sharded over the ranks and
only rank 0 prints and writes. torch is imported inside the handler only.
"""

from __future__ import annotations

import argparse
import json
import shlex

from simulator.cli import int_at_least


def _command(args) -> str:
    parts = ["archnet", "verify", args.program, "--chip", args.chip]
    for flag, value in (("--student", args.student), ("--teacher", args.teacher),
                        ("--data", args.data), ("--dataset", args.dataset),
                        ("--limit", args.limit)):
        if value is not None:
            parts += [flag, str(value)]
    parts += ["--batch-size", str(args.batch_size)]
    if not args.check_features:
        parts.append("--no-features")
    return shlex.join(parts)


def cmd_verify(args) -> int:
    from archnet import distributed
    from archnet.verify import verify
    from simulator.fileio import atomic_write_bytes

    already = distributed.active()
    started = distributed.init_from_env() and not already  # shut down only a group we joined
    try:
        report = verify(args.program, args.chip, student_path=args.student,
                        teacher_path=args.teacher, data_path=args.data, dataset=args.dataset,
                        limit=args.limit, batch_size=args.batch_size, progress=args.progress,
                        check_features=args.check_features, command=_command(args))
        main = distributed.is_main()  # asked before shutdown, after which every rank is "rank 0"
    finally:
        if started:
            distributed.shutdown()
    if main:
        doc = report.to_dict()
        if args.out:
            atomic_write_bytes(args.out, (json.dumps(doc, indent=2) + "\n").encode())
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(report.format())
            if args.out:
                print(f"wrote {args.out}")
        _refresh_report(args)
    return report.exit_code


def _refresh_report(args) -> None:
    """A verify record written into a run folder (next to its convert.json) updates the run's
    report, which now has accuracy for this chip."""
    from pathlib import Path
    if not args.out:
        return
    run_dir = Path(args.program).resolve().parent
    if Path(args.out).resolve().parent != run_dir or not (run_dir / "convert.json").is_file():
        return
    from archnet.report import write_report
    path = write_report(run_dir)
    if not args.json:
        print(f"report: {path / 'report.md'}")


def add_commands(sub) -> None:
    """Mount ``verify`` on an argparse sub-parser collection."""
    p = sub.add_parser(
        "verify", help="run a converted network's test set through the simulator and report",
        description="Run the test set through the simulator (the Program), archnet's integer "
                    "emulation, the fake-quant student and the teacher; report element agreement "
                    "(must be 100%%), accuracies, and the chip's latency estimate. Exit 1 when any "
                    "element differs.")
    p.add_argument("program", metavar="PROGRAM", help="the converted .program file")
    p.add_argument("--chip", required=True, help="profile name or TOML file to run under")
    p.add_argument("--student", metavar="FILE", help="student checkpoint (default: student.pt "
                                                     "beside PROGRAM)")
    p.add_argument("--teacher", metavar="FILE", help="teacher checkpoint (default: the one the "
                                                     "student's metadata names)")
    p.add_argument("--data", metavar="PATH", help="data set files (default: the student's)")
    p.add_argument("--dataset", metavar="NAME", help="data set (default: the student's)")
    p.add_argument("--limit", type=int_at_least(1), metavar="N", help="only the first N test images")
    p.add_argument("--batch-size", type=int_at_least(1), default=256, metavar="N",
                   help="images per simulator run (default 256)")
    p.add_argument("--no-features", dest="check_features", action="store_false",
                   help="compare the logits only, not every block's output")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON report here")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_verify)


__all__ = ["add_commands", "cmd_verify"]
