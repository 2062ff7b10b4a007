"""Per-block bit widths under a latency budget (HAQ-style), and per-block latency tables.

``latency_table(teacher, profile, input_shape)``: for each bit option, the teacher converted with
every block at that option, exported and costed by ``simulator.cost.estimate``; every op's cycles
are attributed to the block its node name starts with (``<block>.``), so the rows add up to the
estimate's total exactly.

``allocate_bits(teacher, profile, input_shape, budget_ms, images)``: HAQ (Wang et al., "HAQ:
Hardware-Aware Automated Quantization with Mixed Precision", CVPR 2019) searches per-layer widths
under a latency budget taken from the hardware (here: the chip profile's cost model, not a
proxy such as bits x MACs). Its search is reinforcement learning; this is the greedy
latency-constrained variant:

1. *Sensitivity* of each (block, option): the student with that block at the option and every
   other block at the widest option, calibrated on the calibration inputs as the conversion
   will calibrate it (``archnet.lowering.prepare``); distortion = mean over inputs of
   ``1 - cos(student fake-quant output, teacher output)``: an image network's logits, a text
   network's mean-pooled sentence embedding (over the tokens its mask keeps). The widest
   option's entry is the all-widest student's distortion (the baseline).
2. Start with every block at the widest option. While the *exact* estimate of the whole student
   (converted with the current per-block list, exported, estimated) exceeds the budget, apply the
   single-block downgrade with the best ``latency saved / (sensitivity increase + eps)`` among
   downgrades that save any latency. (A block's activation width also sets the input width of
   the next block's MACs, so savings are measured on the whole network, never summed per block.)
3. Then undo what the budget no longer needs: while some single-block upgrade still fits, apply
   the one that lowers the sensitivity most.

Greedy single-block moves are myopic where blocks interact: on rk3588 a block at 4w4a still
runs 8-bit MACs while the block before it writes 8-bit activations, so the first of two
neighbouring downgrades may save little. For the hand-written ResNet lowering the calibrations
are shared between the bits lists (``_Calibrated``: both read only the float path), so
sensitivities cost one forward each; the chip-driven converter's students are prepared one by
one (their fits and smoothing depend on the widths).

The calibration inputs are images (a float tensor, or ``ImageInputs``) or token ids with their
mask (``TokenInputs``): what differs between images and text is data.

The widest feasible assignment is returned unchanged when it fits; a budget below the all-narrowest
latency is a ``ConversionError`` naming the budget, the smallest latency and the chip.

Options are ordered narrow to wide by (w + a, a, w); "narrower" means earlier in that order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from archnet.bits import SUPPORTED_BITS
from archnet.errors import ConversionError
from archnet.lowering.calibrate import (calibrate_activations, calibrate_batchnorm,
                                      new_batchnorm_layers)
from archnet.lowering.resnet import (_block_names, convert_resnet, inspect_resnet, parse_bits,
                                     resolve_bits)
from simulator.cost import Estimate, estimate
from simulator.profiles import ChipProfile, load_profile

BIT_OPTIONS = SUPPORTED_BITS
EPS = 1e-6            # added to a sensitivity increase: free downgrades win, never divide by 0
UNASSIGNED = "(no block)"
METHOD = ("HAQ-style greedy latency-constrained allocation (Wang et al. 2019): downgrade the "
          "block with the best exact latency saved / (distortion increase + 1e-6) until the "
          "chip's cost-model estimate fits the budget, then undo downgrades the budget no longer "
          "needs; distortion = mean (1 - cos) of fake-quant student logits vs teacher logits")


# ----------------------------------------------------------------------------- options

def _profile(profile: ChipProfile | str) -> ChipProfile:
    return load_profile(profile) if isinstance(profile, str) else profile


def _shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    return shape[1:] if len(shape) == 4 else shape


def canonical(option) -> str:
    """'4W4A ' -> '4w4a' (``ConversionError`` for anything that is not '<w>w<a>a')."""
    w, a = parse_bits(option)
    return f"{w}w{a}a"


def _rank(option: str) -> tuple[int, int, int]:
    w, a = parse_bits(option)
    return (w + a, a, w)


def order_options(options: Sequence[str]) -> list[str]:
    """Canonical, de-duplicated, narrow to wide."""
    if isinstance(options, str):
        options = [o for o in options.split(",") if o.strip()]
    out = sorted({canonical(o) for o in options}, key=_rank)
    if not out:
        raise ConversionError("bit options: none given (e.g. 2w4a,4w4a,8w8a)")
    return out


def block_names(teacher) -> list[str]:
    """The student blocks ``convert_resnet`` makes of ``teacher``: stem, each residual block, head."""
    return _block_names(inspect_resnet(teacher))


class ResNetStudents:
    """The hand-written ResNet lowering's students of ``teacher``, at per-block widths."""

    def __init__(self, teacher, profile: ChipProfile, input_shape: Sequence[int]):
        self.teacher, self.profile, self.shape = teacher, profile, _shape(input_shape)
        self.blocks = block_names(teacher)

    def check(self, bits: Sequence[str]) -> None:
        """A ``ConversionError`` where the chip cannot run these per-block widths."""
        resolve_bits(list(bits), self.blocks, self.profile)

    def build(self, bits: Sequence[str]):
        return convert_resnet(self.teacher, self.profile, list(bits), self.shape)


class GraphStudents:
    """The chip-driven converter's students of a captured teacher (``archnet.capture``), at
    per-block widths: the plan is made with each block's nodes at its width."""

    def __init__(self, graph, profile: ChipProfile, recipe: str = "native",
                 layer_norm: str = "auto", stream_bits: int | None = None,
                 embedding: str = "auto"):
        from archnet.lowering.graph import block_names as graph_blocks, partition
        self.graph, self.profile, self.recipe = graph, profile, recipe
        self.layer_norm, self.stream_bits, self.embedding = layer_norm, stream_bits, embedding
        self._parts = partition(graph)
        self.blocks = graph_blocks(self._parts)
        self._plans: dict[tuple[str, ...], object] = {}

    def plan(self, bits: Sequence[str]):
        from archnet.rules import plan_conversion
        key = tuple(bits)
        if len(key) != len(self.blocks):
            raise ConversionError(f"{len(key)} widths for {len(self.blocks)} blocks")
        if key not in self._plans:
            node_bits = {n.name: parse_bits(b) for b, nodes in zip(key, self._parts)
                         for n in nodes}
            try:
                self._plans[key] = plan_conversion(self.graph, self.profile, parse_bits(key[-1]),
                                                   self.recipe, node_bits=node_bits,
                                                   layer_norm=self.layer_norm,
                                                   stream_bits=self.stream_bits,
                                                   embedding=self.embedding)
            except ConversionError as exc:
                self._plans[key] = exc
        found = self._plans[key]
        if isinstance(found, ConversionError):
            raise found
        return found

    def check(self, bits: Sequence[str]) -> None:
        """A ``ConversionError`` where the chip cannot run these per-block widths (the plan's
        forms are judged at them, precision modes included)."""
        self.plan(bits)

    def build(self, bits: Sequence[str]):
        from archnet.lowering.graph import build_graph_student
        return build_graph_student(self.graph, self.plan(bits), self.profile)[0]


def _students(teacher, profile: ChipProfile, input_shape, students):
    return students if students is not None else ResNetStudents(teacher, profile, input_shape)


def feasible_options(teacher, profile: ChipProfile | str, input_shape: Sequence[int],
                     options: Sequence[str] = BIT_OPTIONS, students=None) -> list[str]:
    """The options (narrow to wide) ``profile`` runs for every block of ``teacher``'s student.

    ``resolve_bits`` decides: a block's MACs need (w, previous a) and (w, a) to fit some
    precision mode at least as wide, so an 8-bit-only chip accepts 4w4a (run on its 8-bit
    datapath). A teacher that cannot be converted at all raises its ``ConversionError``.
    ``input_shape`` is accepted for symmetry with the other functions (widths do not depend on it).
    """
    profile = _profile(profile)
    students = _students(teacher, profile, input_shape, students)
    out = []
    for opt in order_options(options):
        try:
            students.check([opt] * len(students.blocks))
        except ConversionError:
            continue
        out.append(opt)
    return out


def _options_or_fail(teacher, profile: ChipProfile, input_shape, options, students=None
                     ) -> list[str]:
    asked = order_options(BIT_OPTIONS if options is None else options)
    feasible = feasible_options(teacher, profile, input_shape, asked, students)
    if not feasible:
        modes = ", ".join(f"{m.weight_bits}w{m.activation_bits}a" for m in profile.precision)
        raise ConversionError(f"bit options {', '.join(asked)}: profile {profile.name} runs none "
                              f"of them for every block (precision.modes: {modes})")
    return feasible


# ----------------------------------------------------------------------------- cost

def block_costs(est: Estimate, blocks: Sequence[str]) -> dict[str, dict]:
    """Per block (in order, plus ``UNASSIGNED`` if some op belongs to none): cycles, latency in
    ms, op count and fallback count, attributing each op by its node-name prefix ``<block>.``
    (the longest block name that prefixes it)."""
    rows = {b: {"cycles": 0.0, "ops": 0, "fallbacks": 0} for b in blocks}
    by_length = sorted(blocks, key=len, reverse=True)
    for op in est.ops:
        owner = next((b for b in by_length if op.name.startswith(b + ".")), UNASSIGNED)
        row = rows.setdefault(owner, {"cycles": 0.0, "ops": 0, "fallbacks": 0})
        row["cycles"] += op.cost.cycles
        row["ops"] += 1
        row["fallbacks"] += op.fallback_reason is not None
    for row in rows.values():
        row["ms"] = row["cycles"] / est.clock_hz * 1e3
    return rows


class _Costs:
    """Exact estimates of converted students, cached by their per-block bits."""

    def __init__(self, students):
        self.students, self.profile = students, students.profile
        self.blocks = students.blocks
        self._cache: dict[tuple[str, ...], Estimate | None] = {}

    def estimate(self, bits: Sequence[str]) -> Estimate | None:
        """The estimate, or None where the chip cannot run this per-block list."""
        key = tuple(bits)
        if key not in self._cache:
            try:
                self.students.check(key)
            except ConversionError:
                self._cache[key] = None
            else:
                self._cache[key] = estimate(self.students.build(key).export(), self.profile)
        return self._cache[key]

    def ms(self, bits: Sequence[str]) -> float | None:
        est = self.estimate(bits)
        return None if est is None else est.total_latency_ms


# ----------------------------------------------------------------------------- latency table

def latency_table(teacher, profile: ChipProfile | str, input_shape: Sequence[int],
                  options: Sequence[str] | None = None, students=None):
    """A ``pandas.DataFrame``: rows the student's blocks in order and ``total``; per option a
    column ``'<option> ms'`` (latency per image) and ``'<option> fallbacks'`` (ops that fall back
    to the host; 0 for a converted student). ``options=None``: the feasible ones of
    ``BIT_OPTIONS``; an option given explicitly that the chip cannot run is a ``ConversionError``.
    ``df.attrs`` holds chip, clock_hz, options, input_shape.
    """
    import pandas as pd

    profile = _profile(profile)
    students = _students(teacher, profile, input_shape, students)
    if options is None:
        opts = _options_or_fail(teacher, profile, input_shape, None, students)
    else:
        opts = order_options(options)
    costs = _Costs(students)
    columns: dict[str, dict] = {}
    index = list(costs.blocks)
    names = costs.blocks
    for opt in opts:
        students.check([opt] * len(names))  # the chip's own message for an option it cannot run
        est = costs.estimate([opt] * len(names))
        rows = block_costs(est, names)
        if UNASSIGNED in rows and UNASSIGNED not in index:
            index.append(UNASSIGNED)
        columns[f"{opt} ms"] = {b: r["ms"] for b, r in rows.items()}
        columns[f"{opt} ms"]["total"] = est.total_latency_ms
        columns[f"{opt} fallbacks"] = {b: r["fallbacks"] for b, r in rows.items()}
        columns[f"{opt} fallbacks"]["total"] = len(est.fallbacks)
    index.append("total")
    df = pd.DataFrame({c: [v.get(b, 0) for b in index] for c, v in columns.items()},
                      index=pd.Index(index, name="block"))
    for opt in opts:
        df[f"{opt} fallbacks"] = df[f"{opt} fallbacks"].astype(int)
    df.attrs.update({"chip": profile.name, "clock_hz": profile.clock_hz, "options": opts,
                     "input_shape": list(_shape(input_shape))})
    return df


def _ms_columns(df) -> list[str]:
    return [c for c in df.columns if c.endswith(" ms")]


def format_latency_table(df, marks: Sequence[str] | None = None) -> str:
    """Plain text of a ``latency_table`` (ms with 6 decimals). ``marks``: bits per block (e.g. a
    student's own) whose cells get a ``*``. Fallback counts print as one column, per option in
    column order."""
    ms_cols = _ms_columns(df)
    fb_cols = [c for c in df.columns if c.endswith(" fallbacks")]
    marked = {}
    if marks is not None:
        blocks = [b for b in df.index if b not in ("total", UNASSIGNED)]
        marked = dict(zip(blocks, (canonical(m) for m in marks)))
    name_w = max(len("block"), *(len(str(b)) for b in df.index))
    col_w = max(11, *(len(c) + 1 for c in ms_cols))
    chip, clock = df.attrs.get("chip"), df.attrs.get("clock_hz")
    lines = []
    if chip:
        lines.append(f"latency per image on {chip}" + (f" ({clock / 1e6:g} MHz)" if clock else "")
                     + ": cost-model estimate of the converted student, every block at one option")
    fb_head = "fallbacks" + (f" ({'/'.join(c[:-len(' fallbacks')] for c in fb_cols)})"
                             if len(fb_cols) > 1 else "")
    lines.append(f"{'block':<{name_w}}" + "".join(f"{c:>{col_w}}" for c in ms_cols)
                 + f"  {fb_head}")
    for block, row in df.iterrows():
        cells = []
        for c in ms_cols:
            star = "*" if marked.get(block) == c[:-len(" ms")] else " "
            cells.append(f"{row[c]:>{col_w - 1}.6f}{star}")
        fbs = "/".join(str(int(row[c])) for c in fb_cols)
        lines.append(f"{str(block):<{name_w}}" + "".join(cells) + f"  {fbs}")
    if marked:
        lines.append("* the model's own bits")
    return "\n".join(lines)


def latency_table_dict(df, marks: Sequence[str] | None = None) -> dict:
    """A JSON-able form of a ``latency_table``: per row, latency and fallbacks per option."""
    opts = [c[:-len(" ms")] for c in _ms_columns(df)]
    blocks = [b for b in df.index if b not in ("total", UNASSIGNED)]
    own = dict(zip(blocks, (canonical(m) for m in marks))) if marks is not None else {}
    rows = []
    for block, row in df.iterrows():
        r = {"block": block, "ms": {o: float(row[f"{o} ms"]) for o in opts},
             "fallbacks": {o: int(row[f"{o} fallbacks"]) for o in opts
                           if f"{o} fallbacks" in df.columns}}
        if block in own:
            r["model_bits"] = own[block]
        rows.append(r)
    return {"chip": df.attrs.get("chip"), "clock_hz": df.attrs.get("clock_hz"),
            "input_shape": df.attrs.get("input_shape"), "options": df.attrs.get("options", opts),
            "unit": "ms per image",
            "rows": rows}


# ----------------------------------------------------------------------------- sensitivity

@dataclass
class _Calibration:
    """The calibration inputs as each side reads them."""
    data: object                    # archnet.distill.inputs: ImageInputs or TokenInputs
    idx: torch.Tensor
    x: torch.Tensor                 # the student's input
    side: dict                      # its side inputs (a token mask)
    teacher_in: tuple
    mask: torch.Tensor | None       # which tokens are real (text), else None

    def __len__(self) -> int:
        return len(self.idx)


def _calibration(images) -> _Calibration:
    from archnet.distill.inputs import ImageInputs, TokenInputs
    if isinstance(images, TokenInputs):
        data = images
    else:
        x = torch.as_tensor(getattr(images, "images", images))
        if x.dim() != 4 or not x.is_floating_point() or len(x) == 0:
            raise ConversionError(f"calibration images: expected float (N, C, H, W) with N > 0, "
                                  f"got {tuple(x.shape)} {x.dtype}")
        data = ImageInputs(x.float())
    if len(data) == 0:
        raise ConversionError("calibration inputs: none given (N = 0)")
    idx = torch.arange(len(data))
    x, side = data.student(idx)
    return _Calibration(data, idx, x, side, data.teacher(idx), data.token_mask(idx))


def _pooled(out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[N, ...] -> [N, features]: token rows [N, T, D] averaged over the tokens ``mask`` keeps
    (a sentence embedding), anything else flattened (logits)."""
    if mask is not None and out.dim() == 3:
        m = mask.to(out.dtype).unsqueeze(-1)
        return (out * m).sum(1) / m.sum(1).clamp_min(1)
    return out.reshape(len(out), -1)


@torch.no_grad()
def logit_distortion(student, images: torch.Tensor, teacher_logits: torch.Tensor,
                     side: dict | None = None, mask: torch.Tensor | None = None) -> float:
    """Mean over inputs of 1 - cos(student fake-quant output, teacher output), each pooled as
    ``_pooled`` says (``side``: the student's side inputs; ``mask``: text's real tokens)."""
    out = student(images, side=side) if side else student(images)
    cos = torch.nn.functional.cosine_similarity(_pooled(out, mask).double(),
                                                _pooled(teacher_logits, mask).double(), dim=1)
    return float((1.0 - cos).mean())


class _Calibrated:
    """Converted students calibrated as ``calibrate_batchnorm`` + ``calibrate_activations`` would
    calibrate them, without repeating the float passes for every per-block bits list.

    Both calibrations read the student's *float* path (no quantizer), which the bit widths do not
    change: the new batch-norms' statistics are the same for every bits list, and so are the
    values written to each activation quantizer; only a quantizer's own width (and sign) changes
    its MSE-optimal step. So the batch-norms are calibrated once and copied, and the steps are
    taken from students with every block at one option, by (quantizer, bits, signed); a quantizer
    seen at no such width is calibrated directly. ``tests/archnet/test_bit_allocation.py`` checks
    the result equals a direct calibration.
    """

    def __init__(self, students, calib: _Calibration, options: Sequence[str]):
        self.students, self.x = students, calib.x
        self.blocks = students.blocks
        self._bn: dict[tuple[int, str], dict] | None = None
        self._steps: dict[tuple[str, int, bool], float] = {}
        seen_a = set()
        for opt in reversed(order_options(options)):   # widest first: it sets the batch-norms
            a = parse_bits(opt)[1]
            if a not in seen_a:
                seen_a.add(a)
                self.student([opt] * len(self.blocks))

    def student(self, bits: Sequence[str]):
        student = self.students.build(bits)
        layers = new_batchnorm_layers(student)
        if self._bn is None:
            calibrate_batchnorm(student, self.x)
            self._bn = {(i, name): {k: v.clone() for k, v in
                                    student.blocks[i].layers[name].bn.state_dict().items()}
                        for i, name in layers}
        else:
            for i, name in layers:
                student.blocks[i].layers[name].bn.load_state_dict(self._bn[(i, name)])
        specs = student.config["quantizers"]
        todo = {k: (k, s["bits"], s["signed"]) for k, s in specs.items() if s.get("step") is None}
        if all(key in self._steps for key in todo.values()):
            with torch.no_grad():
                for k, key in todo.items():
                    q = student.quantizers[k]
                    q.scale.fill_(self._steps[key])
                    q.initialised.fill_(True)
        else:
            for k, step in calibrate_activations(student, self.x).items():
                self._steps[todo[k]] = step
        return student.eval()


class _Prepared:
    """The chip-driven converter's students, each prepared as the conversion prepares its own
    (``archnet.lowering.prepare``): their fits and smoothing depend on the widths, so nothing
    is shared between bits lists."""

    def __init__(self, students: GraphStudents, calib: _Calibration):
        self.students, self.calib = students, calib

    def student(self, bits: Sequence[str]):
        from archnet.lowering.prepare import prepare_student
        return prepare_student(self.students.build(bits), self.calib.data, self.calib.idx,
                               self.students.graph).eval()


def _candidates(students, calib: _Calibration, options: Sequence[str]):
    """Calibrated candidate students by their per-block bits (``.student(bits)``)."""
    if isinstance(students, GraphStudents):
        return _Prepared(students, calib)
    return _Calibrated(students, calib, options)


@torch.no_grad()
def sensitivity_table(teacher, profile: ChipProfile | str, input_shape: Sequence[int], images,
                      options: Sequence[str], students=None) -> dict[str, dict[str, float]]:
    """``{block: {option: distortion}}``: that block at the option, all others at the widest
    of ``options``, calibrated on ``images``; the widest entry of every block is the all-widest
    student's distortion. Options the chip cannot run in that position are left out."""
    profile = _profile(profile)
    students = _students(teacher, profile, input_shape, students)
    calib = images if isinstance(images, _Calibration) else _calibration(images)
    names = students.blocks
    opts = order_options(options)
    widest = opts[-1]
    was_training = teacher.training
    teacher.eval()
    try:
        ref = teacher(*calib.teacher_in)
    finally:
        teacher.train(was_training)
    calibrated = _candidates(students, calib, opts)

    def measure(bits: list[str]) -> float:
        return logit_distortion(calibrated.student(bits), calib.x, ref, calib.side, calib.mask)

    base = measure([widest] * len(names))
    table = {}
    for i, block in enumerate(names):
        table[block] = {}
        for opt in opts[:-1]:
            bits = [widest] * len(names)
            bits[i] = opt
            try:
                students.check(bits)
            except ConversionError:
                continue
            table[block][opt] = measure(bits)
        table[block][widest] = base
    return table


# ----------------------------------------------------------------------------- allocation

@dataclass
class Allocation:
    """The result of ``allocate_bits``; ``to_dict()`` is JSON-able (saved with the model)."""

    chip: str
    blocks: list[str]
    options: list[str]                       # feasible, narrow to wide
    bits: list[str]                          # one per block
    estimated_ms: float                      # exact estimate of the student with ``bits``
    budget_ms: float
    widest_ms: float                         # every block at the widest option
    narrowest_ms: float                      # every block at the narrowest option
    distortion: float | None                 # sum over blocks of sensitivity increases + base
    calibration_images: int
    steps: list[dict] = field(default_factory=list)
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)
    method: str = METHOD

    def to_dict(self) -> dict:
        return asdict(self)


def _predicted_distortion(sens: dict, blocks: Sequence[str], bits: Sequence[str],
                          widest: str) -> float | None:
    if not sens:
        return None
    base = sens[blocks[0]][widest]
    return base + sum(sens[b][o] - sens[b][widest] for b, o in zip(blocks, bits))


def allocate_bits(teacher, profile: ChipProfile | str, input_shape: Sequence[int],
                  budget_ms: float, images, options: Sequence[str] | None = None,
                  log: Callable[[str], None] | None = print, students=None) -> Allocation:
    """Per-block bits whose exact estimated latency on ``profile`` fits ``budget_ms`` (see the
    module doc for the method). ``images``: calibration images (float NCHW in [0, 1], no labels;
    a few hundred suffice); ``options``: candidate widths (default ``BIT_OPTIONS``; those the
    chip cannot run are dropped). ``log`` receives one line per step (None: silent).
    ``students``: whose students are allocated (default ``ResNetStudents``, the hand-written
    lowering; ``GraphStudents`` for the chip-driven converter's)."""
    log = log or (lambda line: None)
    profile = _profile(profile)
    try:
        budget = float(budget_ms)
    except (TypeError, ValueError):
        raise ConversionError(f"latency budget {budget_ms!r}: not a number of milliseconds") from None
    if not math.isfinite(budget) or budget <= 0:
        raise ConversionError(f"latency budget {budget_ms!r} ms: must be a positive number")
    students = _students(teacher, profile, input_shape, students)
    opts = _options_or_fail(teacher, profile, input_shape, options, students)
    calib = _calibration(images)
    costs = _Costs(students)
    names, n = costs.blocks, len(costs.blocks)
    widest, narrowest = opts[-1], opts[0]
    widest_ms = costs.ms([widest] * n)
    narrowest_ms = costs.ms([narrowest] * n)

    def result(bits, ms, steps, sens):
        return Allocation(profile.name, list(names), list(opts), list(bits), ms, budget, widest_ms,
                          narrowest_ms, _predicted_distortion(sens, names, bits, widest), len(calib),
                          steps, sens)

    log(f"bit allocation on {profile.name}: budget {budget:.6f} ms; all {widest} "
        f"{widest_ms:.6f} ms, all {narrowest} {narrowest_ms:.6f} ms")
    if widest_ms <= budget:
        log(f"bit allocation: every block at {widest} fits the budget")
        return result([widest] * n, widest_ms, [], {})
    fastest = min(reversed(opts), key=lambda o: costs.ms([o] * n))  # the widest of ties
    smallest = costs.ms([fastest] * n)
    if smallest > budget:
        raise ConversionError(
            f"latency budget {budget:g} ms cannot be met on {profile.name}: the smallest "
            f"achievable latency is {smallest:.6f} ms (every block at {fastest}; all {widest}: "
            f"{widest_ms:.6f} ms)")

    sens = sensitivity_table(teacher, profile, input_shape, calib, opts, students)
    rank = {o: i for i, o in enumerate(opts)}
    bits, ms, steps = [widest] * n, widest_ms, []

    def moves(narrower: bool):
        for i, block in enumerate(names):
            for o in opts:
                if (rank[o] < rank[bits[i]]) if narrower else (rank[o] > rank[bits[i]]):
                    if o not in sens[block]:
                        continue
                    cand = bits[:i] + [o] + bits[i + 1:]
                    cand_ms = costs.ms(cand)
                    if cand_ms is not None:
                        yield i, block, o, cand, cand_ms, sens[block][o] - sens[block][bits[i]]

    while ms > budget:
        best, best_key = None, None
        for i, block, o, cand, cand_ms, inc in moves(narrower=True):
            saved = ms - cand_ms
            if saved <= 1e-12 * max(ms, 1.0):
                continue
            key = (saved / (max(inc, 0.0) + EPS), saved, -i, rank[o])
            if best_key is None or key > best_key:
                best, best_key = (i, block, o, cand, cand_ms, inc, saved), key
        if best is None:
            raise ConversionError(
                f"latency budget {budget:g} ms cannot be met on {profile.name}: no single-block "
                f"downgrade of {', '.join(bits)} saves latency (it estimates {ms:.6f} ms)")
        i, block, o, cand, cand_ms, inc, saved = best
        steps.append({"action": "downgrade", "block": block, "from": bits[i], "to": o,
                      "estimated_ms": cand_ms, "saved_ms": saved, "distortion_increase": inc})
        log(f"bit allocation: {block} {bits[i]} -> {o}: {cand_ms:.6f} ms (saves {saved:.6f} ms, "
            f"distortion {inc:+.3e})")
        bits, ms = cand, cand_ms

    while True:  # undo downgrades the budget no longer needs, most useful first
        best, best_key = None, None
        for i, block, o, cand, cand_ms, inc in moves(narrower=False):
            if cand_ms > budget or -inc <= 0:
                continue
            key = (-inc, -cand_ms, -i, rank[o])
            if best_key is None or key > best_key:
                best, best_key = (i, block, o, cand, cand_ms, inc), key
        if best is None:
            break
        i, block, o, cand, cand_ms, inc = best
        steps.append({"action": "upgrade", "block": block, "from": bits[i], "to": o,
                      "estimated_ms": cand_ms, "saved_ms": ms - cand_ms, "distortion_increase": inc})
        log(f"bit allocation: {block} {bits[i]} -> {o} (still fits): {cand_ms:.6f} ms "
            f"(distortion {inc:+.3e})")
        bits, ms = cand, cand_ms

    log(f"bit allocation: {', '.join(f'{b}={o}' for b, o in zip(names, bits))}: {ms:.6f} ms "
        f"<= {budget:.6f} ms")
    return result(bits, ms, steps, sens)


__all__ = ["BIT_OPTIONS", "Allocation", "GraphStudents", "ResNetStudents", "allocate_bits", "block_costs", "block_names", "canonical",
           "feasible_options", "format_latency_table", "latency_table", "latency_table_dict",
           "logit_distortion", "order_options", "sensitivity_table"]
