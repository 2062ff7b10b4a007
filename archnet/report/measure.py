"""The numbers a report shows that no file holds yet: per-chip estimates of the student's Program
and of the teacher's graph, and the per-layer error between fake-quant and integer outputs."""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archnet.errors import ArchnetError, ReportError
from archnet.report.collect import RunFolder


# ----------------------------------------------------------------------------- estimates

def profile_for(run: RunFolder, chip: str):
    """The profile of ``chip``: a name or file; a verify record's own profile file when it is
    still there (so a custom TOML verified against is costed the same)."""
    from simulator.profiles import load_profile
    rec = run.verifies.get(chip)
    if rec is not None and rec.chip_path and Path(rec.chip_path).is_file() and rec.chip == chip:
        try:
            return load_profile(rec.chip_path)
        except Exception:  # fall back to the name; load_profile(name) reports its own error
            pass
    if chip == run.chip and run.profile_path and Path(run.profile_path).is_file():
        return load_profile(run.profile_path)
    return load_profile(chip)


def host_npu_ms(est) -> tuple[float, float]:
    """(NPU ms, host ms) of an estimate."""
    host = sum(op.latency_ms for op in est.ops if op.on_host)
    return est.total_latency_ms - host, host


# ----------------------------------------------------------------------------- the teacher graph

@dataclass
class TeacherGraph:
    path: Path            # the teacher checkpoint
    command: str | None   # the command that trained it
    program: object       # estimate-only Program of its ONNX export
    input_shape: list


def teacher_graph(run: RunFolder) -> TeacherGraph:
    """The teacher exported to ONNX (float, opset 17) and imported for estimation only: what
    the chip would run without Arch-Net (its 7x7 conv, Add, global pooling fall back to the host
    where the profile lacks them)."""
    import torch

    from archnet.teachers import load_recorded_teacher
    from simulator.errors import SimulatorError
    from simulator.onnx_import import import_onnx

    _, meta = run.student()
    teacher, tmeta, path, _ = load_recorded_teacher(meta, run.student_path)
    shape = list(tmeta.get("input_shape") or meta.get("input_shape"))
    with tempfile.TemporaryDirectory(prefix="archnet-report-") as tmp:
        onnx_path = os.path.join(tmp, "teacher.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(teacher.eval(), torch.zeros(1, *shape), onnx_path, dynamo=False,
                                  opset_version=17, input_names=["image"], output_names=["logits"])
            program = import_onnx(onnx_path, estimate_only=True)
        except SimulatorError as exc:
            raise ReportError(f"{path}: the teacher's ONNX export cannot be costed: {exc}") from None
        except Exception as exc:  # torch.onnx raises many kinds
            raise ReportError(f"{path}: the teacher cannot be exported to ONNX "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    program.metadata["source"] = f"ONNX export of {path}"
    program = _renamed(program, f"teacher {tmeta.get('arch', '')}".strip())
    return TeacherGraph(path, tmeta.get("command"), program, shape)


def _renamed(program, name: str):
    import dataclasses
    return dataclasses.replace(program, name=name)


# ----------------------------------------------------------------------------- per-layer error

@dataclass
class LayerImages:
    dataset: str
    data_path: str | None
    split: str
    count: int
    images: object  # float tensor (N, C, H, W)


def layer_images(run: RunFolder, n: int) -> LayerImages:
    """The first ``n`` unlabeled training images of the run's data set."""
    from archnet.data import load_dataset
    from archnet.runs import resolve_recorded
    _, meta = run.student()
    name = meta.get("dataset") or run.dataset
    if not name:
        raise ReportError(f"{run.student_path}: metadata names no data set for the per-layer error; "
                          f"pass --images 0 to leave it out")
    data_path = meta.get("data_path")
    if data_path:
        data_path = str(resolve_recorded(str(data_path), run.path) or data_path)
    if data_path and str(data_path).endswith(".npy"):
        from archnet.data.datasets import distillation_images
        images = distillation_images(name, data_path, n)
    else:
        images = load_dataset(name, data_path, "train", labels=False).images[:n]
    return LayerImages(name, data_path, "train", len(images), images)


@dataclass
class LayerError:
    block: str
    step: str
    kind: str
    tensor: str
    elements: int
    rel_error: float          # ||fq - int|| / ||int||: each chain from the image
    rel_error_local: float    # the same with the block fed the simulator's block input
    mean_abs_lsb: float       # mean |fq - int| in steps of the tensor's grid (from the image)
    max_abs_lsb: float
    off_grid_local: float     # share of elements where the local fake-quant lands on another step


def _dequant(info, value: np.ndarray) -> np.ndarray:
    scale = np.asarray(info.scale if info.scale is not None else (1.0,), np.float64)
    zp = np.asarray(info.zero_point, np.float64)
    if scale.size > 1 or zp.size > 1:
        shape = [1] * value.ndim
        shape[info.axis if info.axis is not None else 1] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (value.astype(np.float64) - zp) * scale


def _like(t, shape: tuple[int, ...]) -> np.ndarray:
    """A traced step's values (a tensor) in the shape of its Program tensor; a per-sample
    constant (a class token, traced once) stands for every sample, as the re-batched Program
    holds it."""
    v = t.double().numpy()
    if v.size * shape[0] == math.prod(shape) and v.size != math.prod(shape):
        return np.broadcast_to(v.reshape(1, *shape[1:]), shape)
    return v.reshape(shape)


def layer_errors(run: RunFolder, profile, images) -> list[LayerError]:
    """Every student step in network order: the fake-quant float tensor against the simulator's
    integer tensor (dequantized) on ``profile``'s arithmetic, for ``images``.

    ``rel_error`` runs each side from the image (errors accumulate, as on the chip);
    ``rel_error_local`` feeds each block the simulator's own block input, so it shows what that
    block alone adds."""
    import torch

    from archnet.student_program import rebatch
    from simulator.execute import execute

    student, _ = run.student()
    program = run.program()
    n = len(images)
    pieces = student.export((1, *student.input_shape), feature_outputs=True) \
        .metadata["archnet"]["block_outputs"]
    prog_n = rebatch(program, n)
    pixels = student.input.integer_forward(images).value.numpy()
    try:
        sim = execute(prog_n, profile, {prog_n.inputs[0]: pixels}, trace=True).tensors
    except ArchnetError:
        raise
    except Exception as exc:
        raise ReportError(f"{run.program_path}: cannot run on {profile.name} for the per-layer "
                          f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    rows: list[LayerError] = []

    def deq(name: str) -> np.ndarray:
        return _dequant(prog_n.tensors[name], np.asarray(sim[name]))

    with torch.no_grad():
        x_fq = student.input(images)
        for i, block in enumerate(student.blocks):
            if i == 0:
                x_sim = torch.from_numpy(deq(prog_n.inputs[0]).astype(np.float32))
            else:
                x_sim = torch.from_numpy(np.concatenate([deq(p) for p in pieces[i - 1]], axis=1)
                                         .astype(np.float32))
            env = block.trace(x_fq, quantize=True)
            env_local = block.trace(x_sim, quantize=True)
            for step in block.spec["steps"]:
                tensor = f"{block.name}.{step['name']}"
                if tensor not in sim:
                    continue
                info = prog_n.tensors[tensor]
                ref = deq(tensor)
                fq = _like(env[step["name"]], ref.shape)
                fq_local = _like(env_local[step["name"]], ref.shape)
                norm = float(np.linalg.norm(ref))
                denom = norm if norm > 0 else 1.0
                step_size = float(np.max(info.scale)) if info.scale else 1.0
                diff = np.abs(fq - ref) / step_size
                diff_local = np.abs(fq_local - ref) / step_size
                rows.append(LayerError(
                    block=block.name, step=step["name"], kind=step["kind"], tensor=tensor,
                    elements=int(ref.size),
                    rel_error=float(np.linalg.norm(fq - ref)) / denom,
                    rel_error_local=float(np.linalg.norm(fq_local - ref)) / denom,
                    mean_abs_lsb=float(diff.mean()), max_abs_lsb=float(diff.max()),
                    off_grid_local=float((diff_local > 0.5).mean())))
            outs = [env[ref] for ref in block.spec["outputs"]]
            x_fq = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    return rows


__all__ = ["LayerError", "LayerImages", "TeacherGraph", "host_npu_ms", "layer_errors",
           "layer_images", "profile_for", "teacher_graph"]
