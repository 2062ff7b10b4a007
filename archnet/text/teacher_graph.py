"""The text teacher as each chip would run it without Arch-Net: its cost-model estimate.

``teacher_program(teacher, seq_len)`` exports the teacher's BertModel (inputs ``input_ids`` and
``attention_mask`` [batch, seq_len], output ``last_hidden_state``) to ONNX at that fixed shape
(float, opset 17, the TorchScript exporter with constant folding, so position and token-type
embeddings become constants and every shape is static) and imports it for estimation only with
``simulator.onnx_import.import_onnx``. What a chip lacks stays as ``fallback`` nodes named by their
ONNX op type (the word-embedding Gather, LayerNormalization, GELU's Erf and its Mul/Div/Add, the
mask's Cast/Where, the attention's scale Div), which the cost model prices on the host.

``teacher_latency_rows(teacher, seq_len, chips)`` is ``simulator.cost.estimate`` of that Program
on each profile, the function that prices students in ``archnet.bit_allocation`` and
``archnet.report``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections import Counter

from archnet.errors import TeacherError

OPSET = 17  # the first with LayerNormalization, so the exporter keeps it one node
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "last_hidden_state"


def _as_teacher(teacher):
    if hasattr(teacher, "model") and hasattr(teacher, "config"):
        return teacher
    from archnet.text.teacher import load_text_teacher
    return load_text_teacher(teacher)


def _positive(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TeacherError(f"{what} must be a positive integer, got {value!r}")
    return value


def teacher_program(teacher, seq_len: int, batch: int = 1):
    """The estimate-only Program of ``teacher`` (a TextTeacher, or a spec for
    ``load_text_teacher``) at input shape [batch, seq_len]."""
    import torch

    from simulator.errors import SimulatorError
    from simulator.onnx_import import import_onnx

    teacher = _as_teacher(teacher)
    seq_len, batch = _positive(seq_len, "seq_len"), _positive(batch, "batch")
    if seq_len > teacher.config.max_positions:
        raise TeacherError(f"teacher {teacher.name}: seq_len {seq_len} is above its "
                           f"{teacher.config.max_positions} positions")

    class LastHidden(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              return_dict=True).last_hidden_state

    ids = torch.ones(batch, seq_len, dtype=torch.long)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    with tempfile.TemporaryDirectory(prefix="archnet-text-teacher-") as tmp:
        path = os.path.join(tmp, "teacher.onnx")
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer and deprecation notes, not the user's
                torch.onnx.export(LastHidden(teacher.model).eval(), (ids, mask), path,
                                  dynamo=False, opset_version=OPSET, do_constant_folding=True,
                                  input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME])
        except Exception as exc:  # torch.onnx raises many kinds
            lines = str(exc).strip().splitlines() or [""]
            raise TeacherError(f"teacher {teacher.name}: cannot be exported to ONNX "
                               f"({type(exc).__name__}: {lines[0][:200]})") from None
        try:
            program = import_onnx(path, estimate_only=True)
        except SimulatorError as exc:
            raise TeacherError(f"teacher {teacher.name}: its ONNX export cannot be costed: "
                               f"{exc}") from None
    program.metadata["source"] = (f"ONNX export (float, opset {OPSET}) of {teacher.path}, "
                                  f"input [{batch}, {seq_len}]")
    program.metadata["teacher_fingerprint"] = teacher.fingerprint
    return dataclasses.replace(program, name=f"teacher {teacher.name}")


def _profiles(chips):
    from simulator.profiles import ChipProfile, list_profiles, load_profile
    if chips is None:
        chips = list_profiles()
    elif isinstance(chips, (str, os.PathLike, ChipProfile)):
        chips = [chips]
    return [c if isinstance(c, ChipProfile) else load_profile(c) for c in chips]


def latency_rows(program, chips=None) -> list[dict]:
    """One row per profile of ``chips`` (names, paths or ChipProfiles; None: every bundled
    profile): see ``teacher_latency_rows``."""
    from simulator.cost import estimate
    from simulator.ir import OpKind

    onnx_type = {n.name: n.attrs["op_type"] for n in program.nodes if n.op is OpKind.FALLBACK}
    rows = []
    for profile in _profiles(chips):
        est = estimate(program, profile)
        host = [op for op in est.ops if op.on_host]
        # sticky chips run IR ops (fully_connected ...) on the host too: those keep their IR name
        types = Counter(onnx_type.get(op.name, op.type) for op in host)
        rows.append({
            "chip": profile.name,
            "program": program.name,
            "latency_s": est.total_latency_ms / 1e3,
            "macs": int(est.total.macs),
            "host_latency_s": sum(op.latency_ms for op in host) / 1e3,
            "host_ops": len(host),
            "fallback_types": dict(sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))),
        })
    return rows


def teacher_latency_rows(teacher, seq_len: int, chips=None, batch: int = 1) -> list[dict]:
    """Per profile (``chips``: names, paths or ChipProfiles; None: every bundled profile), the
    teacher graph's estimate at [batch, seq_len]: ``chip``, ``latency_s`` (total), ``macs``,
    ``host_latency_s`` and ``host_ops`` (the ops the chip leaves to the host, with their hand-offs
    and transfers), ``fallback_types`` (op type -> count of those host ops: the ONNX op type of
    fallback nodes, the IR op of others), plus ``program``, ``seq_len`` and ``batch``."""
    program = teacher_program(teacher, seq_len, batch)
    return [{**row, "seq_len": seq_len, "batch": batch} for row in latency_rows(program, chips)]


__all__ = ["latency_rows", "teacher_latency_rows", "teacher_program"]
