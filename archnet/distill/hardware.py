"""The simulator inside the loop: run the student's trained prefix exactly as the chip would.

After a period, the blocks that will not be trained again (the *frozen prefix*) are exported to a
Program and run on the target profile's simulator. Their integer outputs, times the output grid's
step, are the inputs the next blocks train on: later blocks learn to correct what the integer
hardware computes (requantization rounding, accumulator saturation), not what float fake-quant
computes. ``HardwarePrefix`` owns that step: exporting (one Program per batch size), feeding the
u8 images, concatenating the output pieces, and timing the simulator.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from archnet import distributed as dist
from archnet.student import ArchNetStudent
from simulator.execute import execute
from simulator.profiles import ChipProfile


def _smallest_int_dtype(lo: int, hi: int) -> torch.dtype:
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return torch.int64


class HardwarePrefix:
    """Blocks ``0..n_blocks-1`` of ``student`` on ``profile``'s simulator."""

    def __init__(self, student: ArchNetStudent, n_blocks: int, profile: ChipProfile,
                 backend: str = "kernels", batch_size: int = 256):
        self.student = student
        self.n_blocks = n_blocks
        self.profile = profile
        self.backend = backend
        self.batch_size = batch_size
        self.seconds = 0.0
        self.images_run = 0
        self._programs: dict[int, object] = {}
        probe = self.program(1)
        out = probe.tensors[probe.outputs[0]]
        self.scale = float(out.scale[0])
        self.qtype = out.dtype
        self.dtype = _smallest_int_dtype(out.dtype.qmin, out.dtype.qmax)
        shapes = [probe.tensors[name].shape for name in probe.outputs]
        self.out_shape = (sum(s[1] for s in shapes), *shapes[0][2:])

    def program(self, batch: int):
        if batch not in self._programs:
            self._programs[batch] = self.student.export(
                (batch, *self.student.input_shape), upto=self.n_blocks,
                name=f"prefix_{self.n_blocks}")
        return self._programs[batch]

    def run(self, images: torch.Tensor, side: dict | None = None) -> torch.Tensor:
        """The prefix's output integers for float images [N, C, H, W] (or the student's other
        input encoding) and its side inputs (pieces concatenated)."""
        pixels = self.student.input.integer_forward(images).value.numpy().astype(np.uint8)
        program = self.program(pixels.shape[0])
        feeds = {program.inputs[0]: pixels}
        feeds.update({k: v.numpy().astype(np.uint8) for k, v in (side or {}).items()
                      if k in program.inputs})
        start = time.perf_counter()
        result = execute(program, self.profile, feeds, self.backend, trace=False)
        self.seconds += time.perf_counter() - start
        self.images_run += pixels.shape[0]
        pieces = [result.outputs[name] for name in program.outputs]
        value = np.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
        return torch.from_numpy(np.ascontiguousarray(value)).to(self.dtype)

    def run_all(self, data, desc: str = "simulator", progress: bool | None = None
                ) -> torch.Tensor:
        """``run`` over a whole input set (``archnet.distill.inputs``, or an image tensor) in
        fixed-size chunks (the last one padded, so one Program serves them all), sharded over
        the ranks of a torchrun group and gathered."""
        from tqdm import tqdm

        from archnet.distill.inputs import as_inputs
        data = as_inputs(data)
        mine = dist.shard(len(data))
        n, bs = len(mine), self.batch_size
        parts = []
        bar = tqdm(total=n, desc=desc, unit="img", leave=False,
                   disable=(not dist.is_main()) or (None if progress is None else not progress))
        for start in range(0, n, bs):
            idx = torch.arange(mine.start + start, mine.start + min(start + bs, n))
            real = len(idx)
            if real < bs and n > bs:      # padded with the chunk's first input
                idx = torch.cat([idx, idx[:1].expand(bs - real)])
            chunk, side = data.student(idx)
            parts.append(self.run(chunk, side)[:real])
            bar.update(real)
        bar.close()
        ours = torch.cat(parts, dim=0) if parts else torch.zeros((0, *self.out_shape), dtype=self.dtype)
        return dist.gather_shards(ours)

    def rescale(self, value: torch.Tensor) -> torch.Tensor:
        """Integers -> the float values the next block reads (value x grid step)."""
        return value.to(torch.float32) * self.scale
