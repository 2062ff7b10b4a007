"""The chip-driven choice: for every teacher node, the form its student computes it with.

Native first: every rule lists the teacher's own op as its first form; the chip's constraints
(``simulator.constraints``, through ``forms.probe``) say which forms fit. Among the forms that
fit, an exact one (equal to the teacher in float before training) beats a learned one, and the
cost model picks the cheapest; ties keep the earlier form, so the teacher's op stays where it
costs no more. ``recipe="paper"`` admits only forms inside the paper's op set. A node no form
fits is an error naming every such node, before any training; ``allow_fallback`` runs it on the
host instead (costed as a host fallback).

The plan also builds the teacher and the student as whole estimate-only Programs, so that the
user sees before training what the conversion buys on this chip.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace

from archnet.capture.graph import TeacherGraph, TeacherNode
from archnet.errors import ConversionError
from archnet.rules import activation, attention, conv, elementwise, embedding, linear, norm, pool, shape
from archnet.rules.context import RuleContext
from archnet.rules.forms import (IMAGE_DTYPE, Form, Judgement, Step, add_form, output_shape,
                                 probe)
from simulator.errors import SimulatorError
from simulator.cost import Estimate, estimate
from simulator.ir.builder import ProgramBuilder
from simulator.profiles import ChipProfile

RULE_MODULES = (conv, pool, linear, elementwise, activation, shape, norm, embedding, attention)
RULES = {op: m.forms for m in RULE_MODULES for op in m.FAMILY}
RECIPES = ("native", "paper")
# the LayerNorm forms a user may ask for (``layer_norm``; "auto": the chip and the cost model
# choose): per token from chip ops, or the paper's fixed statistics (alone or folded); an
# embedding's LayerNorm folds into its table either way
LAYER_NORMS = {"auto": None,
               "per_token": {"layer_norm.per_token", "layer_norm.folded_embedding"},
               "per_token_fc": {"layer_norm.per_token_fc", "layer_norm.folded_embedding"},
               "fixed": {"layer_norm.fixed_affine", "layer_norm.folded_affine",
                         "layer_norm.folded_embedding"}}
STREAM_WIDTHS = (8, 16)
# the embedding forms a user may ask for: the rows looked up (the chip's gather, or the host's
# at the input), or the paper's one-hot rows times a fully connected layer
EMBEDDINGS = {"auto": None, "gather": {"embedding.gather"},
              "one_hot": {"embedding.one_hot_fc"}}
FORM_CHOICES = {"layer_norm": LAYER_NORMS, "embedding": EMBEDDINGS}   # op -> its choices


@dataclass(frozen=True)
class Candidate:
    rule: str
    fits: bool
    cycles: float | None
    why_not: str | None        # the chip's reasons, a shape mismatch, or the recipe


@dataclass(frozen=True)
class Decision:
    node: str
    op: str
    module: str
    module_type: str
    form: Form
    reason: str
    cycles: float
    candidates: tuple[Candidate, ...] = ()
    bits: tuple[int, int] | None = None      # (weight, activation) of this node's student ops

    @property
    def rule(self) -> str:
        return self.form.rule

    @property
    def last_op(self) -> str | None:
        """The op that computes the form's values: its last step but views (a clamp or a
        scale after a view folds into the op before it)."""
        ops = [s.op for s in self.form.steps if s.op not in ("reshape", "flatten")]
        return ops[-1] if ops else None

    def to_dict(self) -> dict:
        return {"node": self.node, "op": self.op, "module": self.module,
                "module_type": self.module_type, "rule": self.rule,
                "description": self.form.description, "native": self.form.native,
                "exact": self.form.exact, "host": self.form.host, "reason": self.reason,
                "cycles": round(self.cycles, 1),
                "student_ops": [s.op for s in self.form.steps],
                "candidates": [{"rule": c.rule, "fits": c.fits,
                                "cycles": None if c.cycles is None else round(c.cycles, 1),
                                "why_not": c.why_not} for c in self.candidates]}


@dataclass(frozen=True)
class ConversionPlan:
    chip: str
    bits: tuple[int, int]
    recipe: str
    decisions: tuple[Decision, ...]
    teacher: Estimate
    student: Estimate
    notes: tuple[str, ...] = field(default_factory=tuple)
    layer_norm: str = "auto"
    stream_bits: int | None = None      # the residual stream's width; None: the chip's
    embedding: str = "auto"

    def widths(self) -> str:
        """``4w4a``, or the distinct widths in node order where they differ per block."""
        seen = dict.fromkeys(d.bits or self.bits for d in self.decisions) or {self.bits: None}
        return " ".join(f"{w}w{a}a" for w, a in seen)

    def rules_fired(self) -> dict[str, int]:
        return dict(Counter(d.rule for d in self.decisions))

    def replaced(self) -> list[Decision]:
        return [d for d in self.decisions if not d.form.native]

    def describe(self, all_nodes: bool = False) -> str:
        """Both latencies, notes, the rules fired, and per replaced node (or every node) the
        rule and why: what ``archnet plan`` and ``archnet convert`` print."""
        t, s = self.teacher, self.student
        lines = [f"{self.chip} at {self.widths()}, recipe {self.recipe}",
                 f"  teacher {t.total_latency_ms:.3f} ms ({len(t.fallbacks)} host fallbacks, "
                 f"{_host_ms(t):.3f} ms on the host)",
                 f"  student {s.total_latency_ms:.3f} ms ({len(s.fallbacks)} host fallbacks)"
                 + (f": {t.total_latency_ms / s.total_latency_ms:.2f}x the teacher's speed"
                    if s.total_latency_ms > 0 else "")]
        lines += [f"  note: {n}" for n in self.notes]
        fired = ", ".join(f"{k} x{v}" for k, v in sorted(self.rules_fired().items()))
        lines.append(f"  rules fired: {fired}")
        shown = self.decisions if all_nodes else self.replaced()
        if shown:
            lines.append("")
            w = max(len(d.module or d.node) for d in shown)
            lines += [f"  {(d.module or d.node):<{w}}  {d.op:<16} {d.rule:<34} {d.reason}"
                      for d in shown]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        t, s = self.teacher, self.student
        return {"chip": self.chip, "bits": self.widths(),
                "recipe": self.recipe, "layer_norm": self.layer_norm,
                "stream_bits": self.stream_bits, "embedding": self.embedding,
                "notes": list(self.notes),
                "teacher_latency_ms": t.total_latency_ms,
                "teacher_host_ms": _host_ms(t), "teacher_fallbacks": len(t.fallbacks),
                "student_latency_ms": s.total_latency_ms, "student_host_ms": _host_ms(s),
                "student_fallbacks": len(s.fallbacks), "rules_fired": self.rules_fired(),
                "decisions": [d.to_dict() for d in self.decisions]}


def _host_ms(est: Estimate) -> float:
    return sum(op.cost.cycles for op in est.ops if op.on_host) / est.clock_hz * 1e3


def _context(graph: TeacherGraph, node: TeacherNode, profile: ChipProfile,
             decided: dict[str, Decision], readers: Counter) -> RuleContext:
    ops = []
    for i in node.inputs:
        d = decided.get(i)
        while d is not None and not d.form.steps:        # folded forms pass their input on
            src = graph.node(d.node).inputs
            d = decided.get(src[0]) if src else None
        ops.append(d.last_op if d is not None else None)
    absorbable = tuple(_chain(graph, i, decided, readers) for i in node.inputs)
    branches = tuple(_branch(graph, i, decided, readers) for i in node.inputs)
    return RuleContext(graph, profile, tuple(graph.shape(i) for i in node.inputs), tuple(ops),
                       tuple(readers[i] for i in node.inputs), absorbable, branches, readers)


_VIEWS = ("flatten.native", "flatten.reshape", "reshape.native")
_CHAIN_ENDS = re.compile(r"conv2d\.native|global_avg_pool\.(halve\d+(_dw)?_|window\d+_)?"
                         r"fully_connected")


def _chain(graph: TeacherGraph, value: str, decided: dict[str, Decision], readers: Counter):
    """The producers of ``value`` a form may take over (``RuleContext.absorbable``)."""
    chain = []
    while (d := decided.get(value)) is not None and readers[value] == 1 and \
            value not in graph.outputs:
        chain.append((graph.node(value), d.form))
        if _CHAIN_ENDS.fullmatch(d.rule):
            return tuple(chain)
        if d.rule not in _VIEWS:
            return None
        value = graph.node(value).inputs[0]
    return None


_BRANCH_LINKS = re.compile(r"conv2d\.native|(relu|clamp)\.fused")


def _branch(graph: TeacherGraph, value: str, decided: dict[str, Decision], readers: Counter):
    """The producers of ``value`` through kept convs, fused activations and views, each read
    by nothing else (``RuleContext.branches``)."""
    chain = []
    while (d := decided.get(value)) is not None and readers[value] == 1 and \
            value not in graph.outputs and (_BRANCH_LINKS.fullmatch(d.rule) or d.rule in _VIEWS):
        chain.append((graph.node(value), d.form))
        value = graph.node(value).inputs[0]
    return tuple(chain)


def _choose(node: TeacherNode, ctx: RuleContext, bits, recipe: str,
            decided: dict[str, Decision], layer_norm: str = "auto", embedding: str = "auto"
            ) -> tuple[Form | None, Judgement | None, tuple[Candidate, ...], str]:
    rule = RULES.get(node.op)
    if rule is None:
        return None, None, (), f"no rule for {node.op}"
    judged, cands = [], []
    for form in rule(node, ctx):
        j, why = None, None
        shapes = list(ctx.in_shapes)
        if form.absorbs is not None:       # it reads the absorbed chain's input
            shapes[form.absorbs] = ctx.graph.shape(ctx.chain_input(form))
        chosen = {"layer_norm": layer_norm, "embedding": embedding}.get(node.op, "auto")
        wanted = FORM_CHOICES[node.op][chosen] if chosen != "auto" else None
        if wanted is not None and form.rule not in wanted:
            why = f"not a {node.op}={chosen} form"
        elif recipe == "paper" and not form.in_paper_op_set():
            why = "outside the paper's op set"
        elif recipe == "paper" and form.rule == "add.merge_into_conv":
            why = "the paper merges a residual in a layer of its own"
        else:
            try:
                j = probe(form, shapes, bits, ctx.profile, _image_inputs(node, ctx, form))
            except SimulatorError as e:     # a form the simulator's shape rules refuse
                why = f"not expressible here ({str(e).splitlines()[0]})"
        if j is not None and form.steps and form.input_shapes is None and \
                tuple(j.shape) != tuple(node.shape):
            why = f"gives shape {list(j.shape)}, the teacher {list(node.shape)}"
        elif j is not None and not j.fits:
            why = "; ".join(j.reasons)
        cands.append(Candidate(form.rule, why is None, None if j is None else j.cycles, why))
        if why is None:
            judged.append((form, j))
    if not judged:
        reasons = "; ".join(f"{c.rule}: {c.why_not}" for c in cands) or f"no form for {node.op}"
        return None, None, tuple(cands), reasons
    def cost(f: Form, j: Judgement) -> float:
        """A form's cycles, less those of the producers it absorbs."""
        saved = 0.0 if f.absorbs is None else \
            sum(decided[n.name].cycles for n, _ in ctx.absorbed(f))
        return round(j.cycles - saved, 6)

    natives = [(i, fj) for i, fj in enumerate(judged) if fj[0].native]
    if natives:        # native first: the chip runs the teacher's op, keep it (the cheapest way)
        _, (form, j) = min(natives, key=lambda ifj: (cost(*ifj[1]), ifj[0]))
        return form, j, tuple(cands), "the chip runs it"
    # exact before approximate (bounded error) before learned, then cheapest; ties keep the
    # rule's order
    _, (form, j) = min(enumerate(judged), key=lambda ifj: (_fidelity(ifj[1][0]), cost(*ifj[1]),
                                                           ifj[0]))
    lacks = cands[0].why_not if cands and not cands[0].fits else "no native form"
    others = len(judged) - 1
    kind = ("cheapest exact" if form.exact else
            f"cheapest approximate (within {form.max_error:.3g}, {form.max_error_is})"
            if form.max_error is not None else "cheapest learned")
    return form, j, tuple(cands), (f"the chip lacks the teacher's op ({lacks}); {kind} "
                                   f"replacement" + (f" of {others + 1} that fit" if others else ""))


def _fidelity(form: Form) -> int:
    """0 exact, 1 approximate within a known bound, 2 learned."""
    return 0 if form.exact else 1 if form.max_error is not None else 2


def _image_inputs(node: TeacherNode, ctx: RuleContext, form: Form) -> tuple[bool, ...]:
    ins = list(node.inputs)
    if form.absorbs is not None:        # it reads the absorbed chain's input instead
        ins[form.absorbs] = ctx.chain_input(form)
    return tuple(i in ctx.graph.inputs for i in ins)


def plan_conversion(graph: TeacherGraph, profile: ChipProfile, bits: tuple[int, int] = (8, 8),
                    recipe: str = "native", allow_fallback: bool = False,
                    node_bits: dict[str, tuple[int, int]] | None = None,
                    layer_norm: str = "auto", stream_bits: int | None = None,
                    embedding: str = "auto") -> ConversionPlan:
    """Every node's form on ``profile`` at ``bits`` (weight, activation), or at
    ``node_bits[node]`` for the nodes it names (per-block widths: ``archnet.bit_allocation``);
    ``layer_norm`` restricts LayerNorm to one family of forms (``LAYER_NORMS``),
    ``stream_bits`` sets the residual stream's width (None: the chip's, see
    ``archnet.lowering.widths``), ``embedding`` restricts embeddings to one form
    (``EMBEDDINGS``)."""
    node_bits = dict(node_bits or {})
    if recipe not in RECIPES:
        raise ConversionError(f"unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    for op, chosen in (("layer_norm", layer_norm), ("embedding", embedding)):
        if chosen not in FORM_CHOICES[op]:
            raise ConversionError(f"unknown {op} {chosen!r} (known: "
                                  f"{', '.join(FORM_CHOICES[op])})")
    if stream_bits is not None and stream_bits not in STREAM_WIDTHS:
        raise ConversionError(f"stream_bits {stream_bits!r}: one of "
                              f"{', '.join(map(str, STREAM_WIDTHS))} (or None: the chip's)")
    readers = Counter(i for n in graph.nodes for i in n.inputs)
    decided: dict[str, Decision] = {}
    unplaced = []
    for node in graph.nodes:
        ctx = _context(graph, node, profile, decided, readers)
        nb = tuple(node_bits.get(node.name, bits))
        form, j, cands, reason = _choose(node, ctx, nb, recipe, decided, layer_norm, embedding)
        if form is None:
            if not allow_fallback:
                unplaced.append(f"{node.where} ({node.op}): {reason}")
                continue
            form = _host_form(node)
            j = probe(form, list(ctx.in_shapes), nb, profile, _image_inputs(node, ctx, form))
            reason = f"on the host (--allow-fallback): {reason}"
        if form.absorbs is not None:
            for taken, _ in ctx.absorbed(form):
                was = decided[taken.name]
                decided[taken.name] = replace(
                    was, form=Form(f"{taken.op}.merged", f"computed by {node.where} "
                                   f"({form.rule})", ()),
                    reason=f"merged into {node.where} ({form.rule})", cycles=0.0)
        decided[node.name] = Decision(node.name, node.op, node.module, node.module_type, form,
                                      reason, j.cycles, cands, nb)
    if unplaced:
        raise ConversionError(
            f"{len(unplaced)} teacher node(s) cannot run on {profile.name}"
            f"{' with the paper recipe' if recipe == 'paper' else ''}: " + " | ".join(unplaced)
            + " (`archnet plan --allow-fallback` costs them on the host; a conversion needs a "
              "chip that runs them)")
    decisions = tuple(decided[n.name] for n in graph.nodes)
    notes = tuple(n for b in dict.fromkeys(d.bits for d in decisions)
                  for n in _precision_notes(profile, b))
    teacher = estimate(_teacher_program(graph, profile), profile)
    student = estimate(whole_program(graph, decisions, bits, "student"), profile)
    return ConversionPlan(profile.name, tuple(bits), recipe, decisions, teacher, student, notes,
                          layer_norm, stream_bits, embedding)


def _host_form(node: TeacherNode) -> Form:
    return Form(f"{node.op}.host", f"{node.op} on the host",
                (Step("fallback", tuple(f"in{i}" for i in range(len(node.inputs))),
                      {"op_type": node.op}, out_shape=node.shape),), host=True)


def _precision_notes(profile: ChipProfile, bits) -> tuple[str, ...]:
    w, a = bits
    mode = profile.mode_for(w, a)
    if mode is None or (mode.weight_bits, mode.activation_bits) == (w, a):
        return ()
    return (f"{w}w{a}a runs in {profile.name}'s w{mode.weight_bits}a{mode.activation_bits} mode "
            f"(precision.modes has no narrower one): no faster than "
            f"{mode.weight_bits}w{mode.activation_bits}a, and the narrower grids cost accuracy",)


def whole_program(graph: TeacherGraph, decisions, bits, name: str):
    """The chosen forms of all nodes as one estimate-only Program (``bits`` None: float; else
    each node at its decision's widths, ``bits`` where it has none)."""
    b = ProgramBuilder(name, {"estimate_only": True})
    values = {i: b.input(i, graph.input_shapes[i], "f32" if bits is None else IMAGE_DTYPE)
              for i in graph.inputs}
    for d in decisions:
        node = graph.node(d.node)
        nb = None if bits is None else (d.bits or tuple(bits))
        ins = [values[i] for i in node.inputs]
        if d.form.input_shapes is not None:    # the student reads its own encoding of the input
            ins = [b.input(f"{node.name}_in{i}", s, "f32" if nb is None else f"s{nb[1]}")
                   for i, s in enumerate(d.form.input_shapes)]
        values[node.name] = add_form(b, d.form, ins, nb, node.name)
    b.output(*[values[o] for o in graph.outputs if o in values])
    return b.build()


def _teacher_program(graph: TeacherGraph, profile: ChipProfile):
    """The teacher as it is, in float (taken at the chip's default widths, as an imported float
    ONNX graph is): native forms, which the estimate places on the host where the chip lacks
    them, and host fallbacks for ops with none."""
    readers = Counter(i for n in graph.nodes for i in n.inputs)
    decided: dict[str, Decision] = {}
    for node in graph.nodes:
        ctx = _context(graph, node, profile, decided, readers)
        rule = RULES.get(node.op)
        native = next((f for f in (rule(node, ctx) if rule else []) if f.native), None)
        if native is not None and native.steps:
            try:
                if tuple(output_shape(native, list(ctx.in_shapes))) != tuple(node.shape):
                    native = None
            except SimulatorError:     # a native form the simulator cannot express here
                native = None
        form = native or _host_form(node)
        decided[node.name] = Decision(node.name, node.op, node.module, node.module_type, form,
                                      "teacher", 0.0)
    return whole_program(graph, [decided[n.name] for n in graph.nodes], None, "teacher")
