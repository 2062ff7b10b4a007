"""Forms: the ways a student can compute one teacher node, as simulator ops, and what the chip
says of each.

A ``Form`` is a small template of simulator ops (``Step``) over the node's inputs (``in0``,
``in1`` ...) and earlier steps (``s0``, ``s1`` ...). ``probe`` builds it as an estimate-only
simulator Program at the student's bit widths and asks the simulator what it asks of any
Program: ``simulator.constraints.place`` for every reason an op would leave the NPU (the
same predicates that decide fallbacks, not a second copy of the chip's limits) and
``simulator.cost.estimate`` for its cycles. Rules only propose forms; the chip decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.constraints import place
from simulator.contract import INTERPOLATED_TABLE_ENTRIES
from simulator.cost import estimate
from simulator.ir import OpKind
from simulator.ir.builder import ProgramBuilder, unique_name
from simulator.profiles import ChipProfile

# the paper's op set (Arch-Net, Xu et al. 2021): 3x3 conv, 2x2 max-pool, fully connected,
# concat, ReLU (a MAC's clamp); views only relabel
PAPER_OPS = frozenset({"conv2d", "maxpool2d", "fully_connected", "concat", "requantize",
                       "reshape", "flatten"})
_REQUANTIZED = frozenset({OpKind.CONV2D.value, OpKind.FULLY_CONNECTED.value, OpKind.MATMUL.value})


@dataclass(frozen=True)
class Step:
    """One simulator op: ``inputs`` name the node's inputs (``in0`` ...) or earlier steps
    (``s0`` ...); ``weight`` is a MAC op's weight shape; ``attrs`` the simulator op's."""

    op: str
    inputs: tuple[str, ...]
    attrs: dict = field(default_factory=dict)
    weight: tuple[int, ...] | None = None
    relu: bool = False          # a MAC's requantize clamps at zero (ReLU fused)
    out_shape: tuple[int, ...] | None = None   # a host fallback's (the simulator cannot infer it)
    bits: int | None = None     # its output's width where not the student's (16-bit internals)
    # a lookup_table whose table holds f(gain * x) / gain: the function on the input's grid and
    # the output's grid relabelled ``gain`` times coarser (the chip's table takes any scales)
    gain: float = 1.0

    def in_paper_op_set(self) -> bool:
        if self.op not in PAPER_OPS:
            return False
        if self.op == "conv2d":
            return tuple(self.weight[2:]) == (3, 3) and self.attrs.get("groups", 1) == 1
        if self.op == "maxpool2d":
            return list(self.attrs.get("kernel", [])) == [2, 2]
        return True


@dataclass(frozen=True)
class Form:
    """One way to compute a node. ``rule`` names it (``conv2d.native``,
    ``conv2d.centre_tap_3x3`` ...); ``native`` is the teacher's op kept as it is; ``exact``
    says whether the form equals the teacher's op in float before any training."""

    rule: str
    description: str
    steps: tuple[Step, ...]
    native: bool = False
    exact: bool = True
    # an inexact form's largest deviation from the teacher's op in float where it is bounded (a
    # close approximation, such as GELU as x * sigmoid(1.702 x)); None: recovered by training
    max_error: float | None = None
    max_error_is: str = "absolute, in float"   # what max_error bounds, for the planner's reason
    host: bool = False
    constants: tuple[tuple[int, ...], ...] = ()   # constant operands, read as c0, c1 ...
    input_shapes: tuple[tuple[int, ...], ...] | None = None   # the student's own input encoding
    # the input whose chain of producers this form takes over (``RuleContext.absorbable``):
    # the form reads the chain's input in its place, and the chain computes nothing of its own
    absorbs: int | None = None
    # ... taking the first ``absorbs_depth`` producers of ``RuleContext.branches`` instead
    absorbs_depth: int | None = None

    def in_paper_op_set(self) -> bool:
        return not self.host and all(s.in_paper_op_set() for s in self.steps)


@dataclass(frozen=True)
class Judgement:
    reasons: tuple[str, ...]     # why ops of the form would leave the NPU (empty: it fits)
    cycles: float
    macs: int
    shape: tuple[int, ...]       # the form's output shape

    @property
    def fits(self) -> bool:
        return not self.reasons


def _dtype(bits: int | None, signed: bool = True) -> str:
    return "f32" if bits is None else f"{'s' if signed else 'u'}{bits}"


def add_form(b: ProgramBuilder, form: Form, inputs: list[str], bits: tuple[int, int] | None,
             prefix: str) -> str:
    """Append ``form``'s ops to ``b`` reading ``inputs``; return the name of its output.

    ``bits`` None builds the float model as it is (no requantize; the estimate takes float
    tensors at the chip's default widths, as for an imported float ONNX graph)."""
    w_bits, a_bits = bits if bits is not None else (None, None)
    table = 2 ** (a_bits or 8)
    names = {f"in{i}": n for i, n in enumerate(inputs)}
    for i, shape in enumerate(form.constants):
        names[f"c{i}"] = b.tensor(unique_name(f"{prefix}_c{i}", b.tensors), shape, _dtype(a_bits))
    out = inputs[0] if inputs else None
    for i, st in enumerate(form.steps):
        ins = [names[r] for r in st.inputs]
        if st.op in _REQUANTIZED and st.op != OpKind.MATMUL.value:
            ins.insert(1, b.tensor(unique_name(f"{prefix}_w{i}", b.tensors), st.weight,
                                   _dtype(w_bits)))
            # every MAC has a bias (folded batch-norm, requantize offsets): 32-bit on the chip
            ins.append(b.tensor(unique_name(f"{prefix}_b{i}", b.tensors), (st.weight[0],),
                                "s32" if bits is not None else "f32"))
        name = unique_name(f"{prefix}_s{i}", b.tensors)
        if st.op == OpKind.FALLBACK.value:
            out = b.node(st.op, ins, name, dtype="f32", out_shape=st.out_shape, **st.attrs)
        elif st.op in _REQUANTIZED and bits is None:
            out = b.node(st.op, ins, name, dtype="f32", **st.attrs)
        elif st.op in _REQUANTIZED:
            acc = b.node(st.op, ins, name + "_acc", **st.attrs)
            clamp = {"clamp_min": 0} if st.relu else {}
            width = a_bits if st.bits is None else st.bits
            out = b.node("requantize", [acc], name, dtype=_dtype(width), real_multiplier=[0.5],
                         **clamp)
        else:
            attrs = dict(st.attrs)
            if st.op == OpKind.LOOKUP_TABLE.value:     # values do not matter to the chip's rules
                attrs.setdefault("table", [0] * (INTERPOLATED_TABLE_ENTRIES
                                                 if attrs.get("interpolated") else table))
            if st.op == OpKind.SOFTMAX.value:
                attrs.setdefault("exp_table", [0] * table)
            width = a_bits if st.bits is None or bits is None else st.bits
            out = b.node(st.op, ins, name, dtype=_dtype(width), **attrs)
        names[f"s{i}"] = out
    return out


# the student reads images as 8-bit pixels (archnet.student's QInput), whatever its width
IMAGE_DTYPE = "u8"


def probe(form: Form, in_shapes: list[tuple[int, ...]], bits: tuple[int, int],
          profile: ChipProfile, image_inputs: tuple[bool, ...] = ()) -> Judgement:
    """What the chip says of ``form`` alone on inputs of these shapes (``image_inputs[i]``:
    input i is the network's image, read as 8-bit pixels)."""
    b = ProgramBuilder(form.rule, {"estimate_only": True})
    shapes = form.input_shapes or in_shapes
    image = tuple(image_inputs) if form.input_shapes is None else ()
    ins = [b.input(f"in{i}", s, IMAGE_DTYPE if i < len(image) and image[i] else _dtype(bits[1]))
           for i, s in enumerate(shapes)]
    out = add_form(b, form, ins, bits, "p")
    b.output(out)
    program = b.build()
    reasons = [] if form.host else [r for p in place(program, profile) for r in p.reasons]
    est = estimate(program, profile)
    return Judgement(tuple(dict.fromkeys(reasons)), est.total_cycles - est.invoke.cycles,
                     sum(op.cost.macs for op in est.ops), program.tensors[out].shape)


def output_shape(form: Form, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    b = ProgramBuilder(form.rule, {"estimate_only": True})
    ins = [b.input(f"in{i}", s, "s8") for i, s in enumerate(form.input_shapes or in_shapes)]
    return b.tensors[add_form(b, form, ins, (8, 8), "p")].shape


__all__ = ["Form", "IMAGE_DTYPE", "Judgement", "PAPER_OPS", "Step", "add_form", "output_shape", "probe"]
