"""The Program a converted student was exported to: read from a run folder, checked to be that
student's own export (node by node, constant by constant), and re-batched for a run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from archnet.errors import ArchnetError
from simulator.errors import SimulatorError
from simulator.ir.ops import OpKind, infer_shape
from simulator.ir.program import Program, load_program


def load_run_program(path: Path) -> Program:
    if not path.is_file():
        raise ArchnetError(f"{path}: no such Program file")
    try:
        return load_program(path)
    except ArchnetError:
        raise
    except SimulatorError as exc:
        raise ArchnetError(str(exc)) from None


def diff_programs(a: Program, b: Program) -> str | None:
    """The first way ``a`` differs from ``b`` (names, ops, attributes, tensor types and
    constants; the program name and metadata are ignored), or None."""
    if a.inputs != b.inputs:
        return f"inputs {a.inputs} != {b.inputs}"
    if a.outputs != b.outputs:
        return f"outputs {a.outputs} != {b.outputs}"
    if len(a.nodes) != len(b.nodes):
        return f"{len(a.nodes)} nodes != {len(b.nodes)}"
    for na, nb in zip(a.nodes, b.nodes):
        if na != nb:
            if (na.name, na.op) != (nb.name, nb.op):
                return f"node {na.name!r} ({na.op.value}) where the export has {nb.name!r} ({nb.op.value})"
            if (na.inputs, na.outputs) != (nb.inputs, nb.outputs):
                return f"node {na.name!r}: wiring {na.inputs}->{na.outputs} != {nb.inputs}->{nb.outputs}"
            keys = sorted(k for k in set(na.attrs) | set(nb.attrs) if na.attrs.get(k) != nb.attrs.get(k))
            return f"node {na.name!r}: attribute(s) {', '.join(keys)} differ"
    if set(a.tensors) != set(b.tensors):
        extra = sorted(set(a.tensors) ^ set(b.tensors))
        return f"tensor names differ ({', '.join(extra[:3])})"
    for name, ta in a.tensors.items():
        tb = b.tensors[name]
        if ta != tb:
            what = [f for f in ("shape", "dtype", "scale", "zero_point", "axis")
                    if getattr(ta, f) != getattr(tb, f)]
            return f"tensor {name!r}: {', '.join(what)} differ"
        if (ta.data is None) != (tb.data is None):
            return f"tensor {name!r}: constant in one, not in the other"
        if ta.data is not None:
            da, db = np.asarray(ta.data), np.asarray(tb.data)
            if da.shape != db.shape or not np.array_equal(da, db):
                differ = np.argwhere(da != db) if da.shape == db.shape else None
                if differ is None or not len(differ):
                    return f"constant {name!r} differs"
                idx = tuple(int(i) for i in differ[0])
                return (f"constant {name!r} differs in {len(differ)} element(s), first at "
                        f"{list(idx)}: {da[idx].item()} in the Program, {db[idx].item()} exported")
    return None


def check_program_matches(program: Program, student, program_path, student_path) -> None:
    """An ``ArchnetError`` naming both files unless ``program`` is ``student``'s own export."""
    def fail(why: str) -> ArchnetError:
        return ArchnetError(f"{program_path} is not the export of {student_path}: {why}")
    want = [student.input.name, *student.side_inputs]
    if program.inputs != want:
        raise fail(f"its inputs are {program.inputs}, the student's export takes {want}")
    shape = program.tensors[want[0]].shape
    try:
        ref = student.export(shape)
    except ArchnetError as exc:
        raise fail(f"image input {list(shape)}: {exc}") from None
    if program.outputs != ref.outputs:  # maybe exported with every block's output
        feats = student.export(shape, feature_outputs=True)
        if program.outputs == feats.outputs:
            ref = feats
    why = diff_programs(program, ref)
    if why:
        raise fail(why)


def program_kind(path) -> str | None:
    """What a Program file is, for ``archnet verify``: "tokens" for a text network of
    ``archnet convert`` (it reads one-hot ``tokens`` and a mask), "images" for an image network
    of ``archnet convert`` (its metadata holds the student's ``archnet`` record), "retired" for
    the retired ``archnet/text`` student's (its metadata records family "text"), "other" for any
    other Program; None when the file is missing or unreadable (the caller's loader says why)."""
    try:
        program = load_program(path)
    except (SimulatorError, OSError, ValueError, KeyError):
        return None
    if program.metadata.get("family") == "text":
        return "retired"
    if not isinstance(program.metadata.get("archnet"), dict):
        return "other"
    return "tokens" if program.inputs[:1] == ["tokens"] else "images"


def rebatch(program: Program, n: int, outputs: list[str] | None = None) -> Program:
    """``program`` with batch ``n`` and, optionally, other outputs; validated. The inputs take
    batch ``n`` and every node's output the shape its op gives (token rows fold the batch into
    their first axis). The nodes and constants are the file's own, except that a per-sample
    constant joined to a batch by a concat (a class token: the chip's concat does not broadcast,
    so the export holds one copy per sample) holds as many copies of its sample as the batch."""
    tensors = dict(program.tensors)
    for name in program.inputs:
        tensors[name] = dataclasses.replace(tensors[name], shape=(n, *tensors[name].shape[1:]))
    for node in program.nodes:
        if node.op is OpKind.CONCAT and any(tensors[i].data is None for i in node.inputs):
            batch = next(tensors[i].shape[0] for i in node.inputs if tensors[i].data is None)
            for name in node.inputs:
                t = tensors[name]
                if t.data is not None and t.shape[0] != batch:
                    data = np.repeat(t.data[:1], batch, axis=0)
                    tensors[name] = dataclasses.replace(t, shape=data.shape, data=data)
        out = tensors[node.outputs[0]]
        shape = infer_shape(node.op, [tensors[i].shape for i in node.inputs], node.attrs,
                            f"{program.name} re-batched to {n}: node {node.name!r}")
        tensors[out.name] = dataclasses.replace(out, shape=shape or (n, *out.shape[1:]))
    out = dataclasses.replace(program, tensors=tensors,
                              outputs=list(outputs if outputs is not None else program.outputs),
                              metadata=dict(program.metadata))
    return out.validate(f"{program.name} re-batched to {n}")


__all__ = ["check_program_matches", "diff_programs", "load_run_program", "program_kind",
           "rebatch"]
