"""``archnet verify PROGRAM --chip NAME``: a converted network's test set through the simulator.

Prints the report (or ``--json``); ``--out FILE.json`` writes the JSON atomically. Exit 0 when
archnet's integer emulation and the simulator agree on every element, 1 when any differs, 2 for a
user error (``simulator.cli.run``). Under ``torchrun`` the images are sharded over the ranks and
only rank 0 prints and writes. torch is imported inside the handler only.

A text network's Program (it reads one-hot ``tokens`` and a mask) goes to
``archnet.jobs.verify_tokens``: held-out sentences instead of test images (``--max-sentences``,
``--batch``), sentence-embedding quality against the teacher instead of accuracy. A Program that
no ``archnet convert`` run wrote is refused in one line naming it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from simulator.argtypes import int_in
from simulator.jsontext import json_text


def _command(args) -> str:
    parts = ["archnet", "verify", args.program, "--chip", args.chip]
    for flag, value in (("--student", args.student), ("--teacher", args.teacher),
                        ("--data", args.data), ("--dataset", args.dataset),
                        ("--labels", args.labels), ("--limit", args.limit)):
        if value is not None:
            parts += [flag, str(value)]
    parts += ["--batch-size", str(args.batch_size)]
    if not args.check_features:
        parts.append("--no-features")
    return shlex.join(parts)


CNN_DEFAULT_BATCH = 256
CNN_ONLY = (("--student", "student"), ("--teacher", "teacher"), ("--data", "data"),
            ("--dataset", "dataset"), ("--labels", "labels"), ("--limit", "limit"))


def _max_sentences(text: str) -> int | None:
    if text == "all":
        return None
    return int_in(3)(text)


def _code_file(spec: str | None) -> str | None:
    return spec.rpartition(":")[0] if spec and ".py:" in spec else spec


def _check_out(args) -> None:
    """``--out``: a ``.json`` name that is none of the inputs and, if it exists, a verify
    record (so it cannot replace a run's convert.json or anything else)."""
    from pathlib import Path

    from simulator.errors import OutputError
    from simulator.outputs import check_file_outputs
    check_file_outputs({"--out": args.out},
                       inputs=[args.program, args.student, _code_file(args.teacher),
                               args.data, args.labels, args.chip],
                       suffixes={"--out": (".json",)})
    if args.out and Path(args.out).is_file():
        try:
            if Path(args.out).stat().st_size > 64 << 20:
                raise ValueError
            doc = json.loads(Path(args.out).read_text(encoding="utf-8"))
            ok = isinstance(doc, dict) and "bit_exact" in doc
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise OutputError(f"--out {args.out}: exists and is not a verify record; choose "
                              f"another name")


def cmd_verify(args) -> int:
    from archnet.errors import ArchnetError
    from archnet.student_program import program_kind
    _check_out(args)
    kind = program_kind(args.program)
    if kind == "retired":
        raise ArchnetError(f"{args.program}: a Program of the retired archnet/text student, which "
                           f"no command reads any more; convert its teacher again (`archnet "
                           f"convert TEACHER --chip CHIP --out RUN`) and verify RUN/model.program")
    if kind == "other":
        raise ArchnetError(f"{args.program}: not the Program of an `archnet convert` run (its "
                           f"metadata has no 'archnet' record of a student); `archnet simulate` "
                           f"and `archnet estimate` run any Program")
    if kind == "tokens":
        return _cmd_verify_text(args)
    if hasattr(args, "max_sentences"):
        raise ArchnetError("--max-sentences is for text runs; give a CNN run's number of test "
                           "images with --limit")
    if args.corpus is not None:
        raise ArchnetError(f"--corpus is for text runs; {args.program} reads images: give your "
                           f"own with --data IMAGES.npy (and --labels Y.npy for accuracy)")
    if args.batch_size is None:
        args.batch_size = CNN_DEFAULT_BATCH
    return _cmd_verify_cnn(args)


def _cmd_verify_text(args) -> int:
    """Held-out sentences: a text network's run (its Program reads one-hot tokens)."""
    from archnet.errors import ArchnetError
    from archnet.jobs.verify_tokens import (DEFAULT_BATCH, DEFAULT_MAX_SENTENCES,
                                            format_text_verify, verify_command, verify_tokens)
    given = [flag for flag, dest in CNN_ONLY if getattr(args, dest) is not None]
    if not args.check_features:
        given.append("--no-features")
    if given:
        raise ArchnetError(f"{args.program} is a text run: {', '.join(given)} "
                           f"{'applies' if len(given) == 1 else 'apply'} to CNN runs only (text "
                           f"runs take --max-sentences and --batch; the student, teacher and "
                           f"corpus are the run folder's)")
    # absent unless given (argparse.SUPPRESS): None means "all"
    max_sentences = getattr(args, "max_sentences", DEFAULT_MAX_SENTENCES)
    batch = args.batch_size if args.batch_size is not None else DEFAULT_BATCH
    doc = verify_tokens(args.program, args.chip, out=args.out, max_sentences=max_sentences,
                        batch=batch, progress=args.progress, corpus=args.corpus,
                        log=(lambda m: print(m, file=sys.stderr)) if args.json else print,
                        command=verify_command(args.program, args.chip, args.out, max_sentences,
                                               batch, args.corpus))
    if args.json:
        print(json_text(doc))
    else:
        print(format_text_verify(doc))
        if args.out:
            print(f"wrote {args.out}")
    _refresh_text_report(args)
    return 0 if doc["bit_exact"] else 1


def _refresh_text_report(args) -> None:
    """As ``_refresh_report``, for a text run folder; a report that cannot be made (the teacher
    moved, say) is a note, not a failure of the verification."""
    from pathlib import Path

    from archnet.errors import ArchnetError
    from archnet.report.text import is_text_run, write_text_report
    if not args.out:
        return
    run_dir = Path(args.program).resolve().parent
    if Path(args.out).resolve().parent != run_dir or not is_text_run(run_dir):
        return
    try:
        path = write_text_report([run_dir], run_dir / "report", log=None)
    except ArchnetError as exc:
        print(f"report not refreshed: {exc}", file=sys.stderr)
        return
    if not args.json:
        print(f"report: {path / 'report.md'}")


def _cmd_verify_cnn(args) -> int:
    from archnet import distributed
    from archnet.capture.sources import is_code
    from archnet.jobs.verify import verify
    from simulator.fileio import atomic_write_bytes

    already = distributed.active()
    started = distributed.init_from_env() and not already  # shut down only a group we joined
    try:
        report = verify(args.program, args.chip, student_path=args.student,
                        teacher_path=args.teacher, data_path=args.data, dataset=args.dataset,
                        labels_path=args.labels,
                        limit=args.limit, batch_size=args.batch_size, progress=args.progress,
                        check_features=args.check_features, command=_command(args))
        main = distributed.is_main()  # asked before shutdown, after which every rank is "rank 0"
    except BaseException:
        if started:
            distributed.shutdown(failed=True)
        raise
    if started:
        distributed.shutdown()
    if main:
        doc = report.to_dict()
        if args.out:
            atomic_write_bytes(args.out, (json_text(doc) + "\n").encode())
        if args.json:
            print(json_text(doc))
        else:
            print(report.format())
            if args.out:
                print(f"wrote {args.out}")
        if report.labelled and not is_code(report.teacher):   # reports need both
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
                    "element differs. For a text run (a Program converted from a text teacher) "
                    "the test set is the corpus' held-out sentences, and the report gives the "
                    "sentence embeddings' closeness to the teacher's (cosine, nearest-neighbour "
                    "agreement, Spearman) instead of accuracy.")
    p.add_argument("program", metavar="PROGRAM", help="the converted .program file")
    p.add_argument("--chip", required=True, help="profile name or TOML file to run under")
    p.add_argument("--student", metavar="FILE", help="student checkpoint (default: student.pt "
                                                     "beside PROGRAM)")
    p.add_argument("--teacher", metavar="FILE", help="teacher checkpoint (default: the one the "
                                                     "student's metadata names), or the code "
                                                     "that builds it: path/to/file.py:factory "
                                                     "(needed for a model converted from code)")
    p.add_argument("--data", metavar="PATH", help="data set files (default: the student's), or a "
                                                  ".npy of test images (N, C, H, W)")
    p.add_argument("--labels", metavar="Y.npy", help="with --data IMAGES.npy: the images' classes "
                                                     "(a 1-d integer array), for accuracy")
    p.add_argument("--dataset", metavar="NAME", help="data set (default: the student's)")
    p.add_argument("--corpus", metavar="FILE", help="text runs: your own UTF-8 text, one sentence "
                   "a line; every line (of 3 or more words, each distinct line once) is held out, "
                   "instead of the run's own held-out split")
    p.add_argument("--limit", type=int_in(1), metavar="N", help="only the first N test images")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=int_in(1),
                   metavar="N", help=f"images per simulator run (default {CNN_DEFAULT_BATCH}); "
                                     f"text runs: sentences (default 16)")
    p.add_argument("--max-sentences", type=_max_sentences, default=argparse.SUPPRESS,
                   metavar="N",
                   help="text runs: the first N held-out sentences, at least 3, or 'all' "
                        "(default 512)")
    p.add_argument("--no-features", dest="check_features", action="store_false",
                   help="compare the logits only, not every block's output")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON report here")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=cmd_verify)


__all__ = ["add_commands", "cmd_verify"]
