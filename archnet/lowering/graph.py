"""Lowering a conversion plan: the forms ``archnet.rules`` chose for a captured teacher become
the student's blocks, steps, quantizers and transfer table (images).

Blocks are where blockwise distillation cuts the network: after a node where one activation is
live (nothing else computed so far is read later), grouped by the teacher's module paths (two
levels: ``layer1.0``, ``features.3``), a group without a MAC layer joining its neighbour. Each
block imitates the teacher value at its end (its *tap*: a node of the captured graph).

Each chosen form's simulator ops become student steps (``archnet.student``): a conv keeps any
kernel, stride, padding, dilation and groups; add, mul, pools and tables are steps of their
own; a ReLU or clamp the planner fused becomes its producer's ReLU. Operands of a concat must
share one quantizer, so the producers of concatenated values are given one (a union of their
grids). Exact forms start as the teacher (``TransferRow`` rules of ``archnet.lowering.transfer``:
copies, centre taps, shift layers, identity sums, averaging kernels); learned forms start fresh.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from archnet.capture.graph import TeacherGraph, TeacherNode
from archnet.errors import ConversionError
from archnet.lowering.calibrate import init_weight_quantizers
from archnet.lowering.transfer import TransferRow, row_value
from archnet.lowering.widths import stream_width, widen_grids
from archnet.rules.elementwise import inverted_residual
from archnet.rules.planner import ConversionPlan, Decision
from archnet.rules.pool import window_cover
from archnet.quant.attention import PROB_STEP
from archnet.student import CONFIG_FORMAT, CONFIG_VERSION, IMAGE, SIDE
from simulator.ir.builder import unique_name
from simulator.profiles import ChipProfile

MAC_NODE_OPS = ("conv2d", "linear", "matmul", "embedding")
_FORWARD = ("global_avg_pool", "flatten")      # pooling to a vector belongs with the head
SHIFT_STEP = 1.0 / 255.0                        # the image grid: shift channels copy pixels


def _ident(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text) or "x"


# ----------------------------------------------------------------------------- blocks

def partition(graph: TeacherGraph) -> list[list[TeacherNode]]:
    """The teacher's nodes cut into blocks (see the module doc)."""
    last_use = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            last_use[v] = i
    # the first input flows through the blocks; the others (a key mask) are side inputs every
    # block may read, never what keeps a cut from being made
    segments, cur, live = [], [], set(graph.inputs[:1])
    for i, n in enumerate(graph.nodes):
        cur.append(n)
        live = {v for v in live | {n.name} if last_use.get(v, -1) > i or v in graph.outputs}
        if live == {n.name}:
            segments.append(cur)
            cur = []
    if cur:
        segments.append(cur)

    groups: list[list[TeacherNode]] = []
    keys: list[str] = []
    for seg in segments:
        k = module_key(seg)
        if groups and keys[-1] == k:
            groups[-1] += seg
        else:
            groups.append(list(seg))
            keys.append(k)
    blocks: list[list[TeacherNode]] = []
    pending: list[TeacherNode] = []          # a MAC-free group waiting for the next block
    for g in groups:
        has_mac = any(n.op in MAC_NODE_OPS for n in g)
        if not has_mac and blocks and not pending and not any(n.op in _FORWARD for n in g):
            blocks[-1] += g
        elif not has_mac:
            pending += g
        else:
            blocks.append(pending + g)
            pending = []
    if pending:
        if blocks:
            blocks[-1] += pending
        else:
            blocks.append(pending)
    return blocks


def module_key(nodes: list[TeacherNode]) -> str:
    """What groups nodes into a block, and names it: the module path of the first MAC node (else
    of the last node) up to its first index in a repeated container (``layer1.0``,
    ``features.3``, ``encoder.layer.2``, ``layers.encoder_layer_2``), else two levels deep."""
    macs = [n for n in nodes if n.op in MAC_NODE_OPS]
    path = (macs[0] if macs else nodes[-1]).module
    if not path:
        return nodes[-1].name
    parts = path.split(".")
    for pattern in (r"\d+", r".*_\d+"):
        at = next((i for i, c in enumerate(parts) if re.fullmatch(pattern, c)), None)
        if at is not None:
            return ".".join(parts[:at + 1])
    return ".".join(parts[:2])


# ----------------------------------------------------------------------------- lowering

@dataclass
class Lowered:
    config: dict
    rows: list[TransferRow]
    derived: dict[str, torch.Tensor]     # teacher-side tensors the rows read (params + made)
    taps: list[str]                      # per block: the teacher graph value it imitates
    learned: list[str]                   # steps that start fresh (learned forms)


class _Grids:
    """Quantizer keys with unions (concat operands share one grid)."""

    def __init__(self):
        self.parent: dict[str, str] = {}
        self.fixed: dict[str, float] = {}

    def new(self, hint: str) -> str:
        key = unique_name(_ident(hint), self.parent, (IMAGE,))
        self.parent[key] = key
        return key

    def find(self, key: str) -> str:
        while key != IMAGE and self.parent[key] != key:
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if IMAGE in (a, b):
            raise ConversionError("a concat mixes the input image with a computed value; the "
                                  "image's grid is fixed")
        self.parent[b] = a


# the per-token LayerNorm rules and the student step kind each lowers to
_TOKEN_NORM_STEPS = {"layer_norm.per_token": "token_norm",
                     "layer_norm.per_token_fc": "token_norm_fc"}

class _Lowering:
    def __init__(self, graph: TeacherGraph, plan: ConversionPlan):
        self.graph, self.plan = graph, plan
        self.w_bits, self.a_bits = plan.bits          # of the node being lowered
        self.grid_bits: dict[str, int] = {}           # grid -> activation bits of its writer
        self.wide: set[str] = set()                   # grids LayerNorm's forms write (widths.py)
        self.tables: set[str] = set()                 # one-hot tables' steps (widths.py)
        self.grids = _Grids()
        self.steps: dict[str, dict] = {}           # global step name -> step dict
        self.step_node: dict[str, str] = {}        # step -> teacher node
        self.producer: dict[str, str] = {}         # teacher value -> student step (or IMAGE)
        self.rows: list[tuple[str, str, str | None, dict]] = []   # (step, leaf, rule, source, args)
        self.derived: dict[str, torch.Tensor] = dict(graph.params)
        self.learned: list[str] = []

    # -- helpers
    def _grid(self, hint: str) -> str:
        key = self.grids.new(hint)
        self.grid_bits[key] = self.a_bits
        return key

    def _name(self, node: str, i: int, n: int) -> str:
        return unique_name(_ident(node) if n == 1 else f"{_ident(node)}_{i}", self.steps)

    def _quant_of(self, ref: str) -> str:
        if ref == IMAGE:
            return IMAGE
        if ref.startswith("side:"):
            return SIDE
        return self.steps[ref].get("quant") or self._quant_of(self.steps[ref]["inputs"][0])

    def _value(self, v: str) -> str:
        if v == self.graph.inputs[0]:
            return IMAGE
        if v in self.graph.inputs:
            return f"side:{v}"
        if v not in self.producer:
            raise ConversionError(f"value {v!r} has no student producer")
        return self.producer[v]

    def _derive(self, name: str, tensor: torch.Tensor) -> str:
        self.derived[name] = tensor.detach().to(torch.float32)
        return name

    def _mac_rows(self, step: str, weight: tuple, bias: tuple) -> None:
        self.rows.append((step, "weight", *weight))
        self.rows.append((step, "bias", *bias))

    # -- per decision
    def lower(self, d: Decision) -> None:
        node = self.graph.node(d.node)
        self.w_bits, self.a_bits = d.bits or self.plan.bits
        form = d.form
        if form.host:
            raise ConversionError(f"{node.where} ({node.op}) runs on the host in this plan; the "
                                  f"student is built only from chip ops")
        if not form.steps:
            self._fold(node, d)
            return
        if d.rule == "layer_norm.fixed_affine":
            self._layer_norm(node)
            return
        if d.rule in _TOKEN_NORM_STEPS:
            self._token_norm(node, _TOKEN_NORM_STEPS[d.rule])
            return
        if d.rule == "embedding.gather":
            self._embedding(node)
            return
        if d.rule == "layer_norm.folded_affine":
            self._folded_layer_norm(node)
            return
        ins = [self._value(v) for v in node.inputs]
        refs = {f"in{i}": r for i, r in enumerate(ins)}
        made = []
        for i, shape in enumerate(form.constants):
            refs[f"c{i}"] = self._constant(node, i, shape)
        for i, st in enumerate(form.steps):
            if _merges_batch(st):          # token rows: the student's linear keeps them as rows
                refs[f"s{i}"] = refs[st.inputs[0]]
                continue
            name = self._name(node.name, i, len(form.steps))
            step = self._step(st, [refs[r] for r in st.inputs], name, node, d)
            self.steps[name] = step
            self.step_node[name] = node.name
            refs[f"s{i}"] = name
            made.append(name)
        self._init(node, d, made)
        if d.rule.startswith("embedding."):
            self.tables |= {s for s in made if self.steps[s]["kind"] == "linear"}
        self.producer[node.name] = made[-1]
        if any(s.op == "concat" for s in form.steps):
            for name in made:
                st = self.steps[name]
                if st["kind"] == "concat":
                    keys = [self._quant_of(r) for r in st["inputs"]]
                    for k in keys[1:]:
                        self.grids.union(keys[0], k)

    def _constant(self, node: TeacherNode, i: int, shape: tuple[int, ...]) -> str:
        """A constant operand of ``node`` as a step of its own (learned, on its own grid; a
        concat's shares the concat's grid: a class token)."""
        if node.op == "cat":
            at = node.attrs["constants_at"][i]
            value = self.graph.params[node.params[f"operand{at}"]]
            value = value[:1].reshape(shape)        # one sample's: the batch joins at run time
        elif "scalar" in node.attrs:
            value = torch.full(shape, float(node.attrs["scalar"]))
        else:
            value = self.graph.params[node.params["other"]].reshape(shape)
        if shape[0] != 1:
            raise ConversionError(f"{node.where}: a constant operand {list(shape)} per batch row")
        name = unique_name(f"{_ident(node.name)}_c{i}", self.steps)
        self.steps[name] = {"name": name, "inputs": [], "kind": "constant",
                            "shape": list(shape[1:]), "quant": self._grid(name)}
        self.step_node[name] = node.name
        self.rows.append((name, "value", "copy", self._derive(f"{node.name}:c{i}", value), {}))
        return name

    def _layer_norm(self, node: TeacherNode) -> None:
        """LayerNorm as one per-channel affine step: LayerNorm's scale and shift, statistics
        fixed by calibration (``bn_init`` "statistics")."""
        d = node.shape[-1]
        name = self._name(node.name, 0, 1)
        self.steps[name] = {"name": name, "inputs": [self._value(node.inputs[0])],
                            "kind": "channel_affine", "features": d, "w_bits": self.w_bits,
                            "quant": self._grid(name), "bn_init": "statistics",
                            "role": "teacher", "teacher_node": node.name}
        self.wide.add(self.steps[name]["quant"])
        self.step_node[name] = node.name
        self.producer[node.name] = name
        p = node.params
        self._mac_rows(name, ("ones", None, {}), ("zeros", None, {}))
        self.rows += [(name, "bn.weight", *(("copy", p["weight"], {}) if "weight" in p
                                            else ("ones", None, {}))),
                      (name, "bn.bias", *(("copy", p["bias"], {}) if "bias" in p
                                          else ("zeros", None, {}))),
                      (name, "bn.running_mean", "zeros", None, {}),
                      (name, "bn.running_var", "ones", None, {})]

    def _embedding(self, node: TeacherNode) -> None:
        """The table looked up by the student's token ids (``QEmbedding``), the teacher's rows
        copied: the chip's gather, or the host's at the input."""
        vocab, dim = self.graph.params[node.params["weight"]].shape
        name = self._name(node.name, 0, 1)
        self.steps[name] = {"name": name, "inputs": [self._value(node.inputs[0])],
                            "kind": "embedding", "vocab": int(vocab), "features": int(dim),
                            "quant": self._grid(name), "role": "teacher",
                            "teacher_node": node.name}
        self.step_node[name] = node.name
        self.producer[node.name] = name
        table = self.graph.params[node.params["weight"]]
        self.rows.append((name, "weight", "copy", self._derive(f"{node.name}:table", table.t()),
                          {}))

    def _token_norm(self, node: TeacherNode, kind: str) -> None:
        """LayerNorm per token from the chip's mean, sub, mul and tables (``token_norm``:
        ``QTokenNorm``) or from its fully connected layers, add, mul and sigmoid table
        (``token_norm_fc``: ``QTokenNormFc``): the teacher's scale and shift become its
        depthwise affine, exactly; its internal grids are set by calibration."""
        d = node.shape[-1]
        name = self._name(node.name, 0, 1)
        self.steps[name] = {"name": name, "inputs": [self._value(node.inputs[0])],
                            "kind": kind, "features": d, "w_bits": self.w_bits,
                            "eps": float(node.attrs.get("eps", 1e-5)),
                            "quant": self._grid(name), "role": "teacher",
                            "teacher_node": node.name}
        # the stream: LayerNorm's output and, where it reads a residual sum, the sum and its
        # operands (the sublayer's output and the skip) stay wide
        self.wide.add(self.steps[name]["quant"])
        src = self._through_views(self.steps[name]["inputs"][0])
        if src in self.steps and self.steps[src]["kind"] == "add":
            self.wide |= {self._quant_of(r) for r in (src, *self.steps[src]["inputs"])
                          if r in self.steps}
        self.step_node[name] = node.name
        self.producer[node.name] = name
        p = node.params
        weight = self.graph.params[p["weight"]] if "weight" in p else torch.ones(d)
        bias = self.graph.params[p["bias"]] if "bias" in p else torch.zeros(d)
        self.rows += [(name, "affine.weight", "copy",
                       self._derive(f"{node.name}:norm_scale", weight.reshape(d, 1, 1, 1)), {}),
                      (name, "affine.bias", "copy", self._derive(f"{node.name}:norm_shift", bias),
                       {})]

    def _folded_layer_norm(self, node: TeacherNode) -> None:
        """LayerNorm folded into the residual add it reads: a depthwise 1x1 (a per-channel
        scale, no statistics) on the skip operand, placed before the add; the MAC writing the
        other operand takes the affine's scale and shift (``fit_layer_norms`` sets both from
        the teacher); the add's output is LayerNorm's."""
        add = self._value(node.inputs[0])
        spec = self.steps.get(add)
        macs = [self._through_views(r) for r in (spec or {}).get("inputs", [])]
        k = next((i for i, m in enumerate(macs)
                  if m in self.steps and self.steps[m]["kind"] in ("linear", "conv")), None)
        if spec is None or spec["kind"] != "add" or k is None:
            raise ConversionError(f"{node.where}: layer_norm.folded_affine needs the chip's add "
                                  f"of a fully connected layer's output and a skip")
        d = node.shape[-1]
        name = self._name(node.name, 0, 1)
        skip = spec["inputs"][1 - k]
        step = {"name": name, "inputs": [skip], "kind": "channel_affine", "features": d,
                "w_bits": self.w_bits, "quant": self._grid(name), "role": "teacher",
                "teacher_node": node.name, "folded_into": macs[k]}
        items = list(self.steps.items())
        at = [key for key, _ in items].index(add)
        self.steps = dict(items[:at] + [(name, step)] + items[at:])   # the add reads it
        spec["inputs"][1 - k] = name
        self.step_node[name] = node.name
        self.wide |= {step["quant"], spec["quant"], self.steps[macs[k]]["quant"]}
        self.producer[node.name] = add
        self._mac_rows(name, ("ones", None, {}), ("zeros", None, {}))
        self.rows += [(name, "bn.weight", "ones", None, {}), (name, "bn.bias", "zeros", None, {}),
                      (name, "bn.running_mean", "zeros", None, {}),
                      (name, "bn.running_var", "ones", None, {})]

    def _fold(self, node: TeacherNode, d: Decision) -> None:
        """A form with no op of its own: a fused activation, a folded scale or offset, a
        transpose that moves nothing."""
        src = self._value(node.inputs[0])
        self.producer[node.name] = src
        rule = d.rule
        computed = self._through_views(src)    # a clamp or rescale commutes with a view
        if rule.endswith(".fused"):
            step = self.steps.get(computed)
            if step is None or step["kind"] not in ("conv", "linear", "add", "mul"):
                raise ConversionError(f"{node.where}: {rule} needs a MAC, add or mul producer")
            if node.op == "clamp":
                lo, hi = node.attrs["min"], node.attrs["max"]
                if lo is None or float(lo) != 0.0:
                    raise ConversionError(f"{node.where}: clamp [{lo}, {hi}] does not start at 0; "
                                          f"the student fuses only ReLU and ReLU6-style clamps")
                if hi is not None and step.get("clamp_max") is None:
                    step["clamp_max"] = float(hi)
            step["relu"] = True
            return
        if rule in ("mul.requantize_scale", "add.requantize_offset"):
            scalar = float(node.attrs["scalar"])
            src = computed
            if self.steps[src]["kind"] == "matmul":
                if rule.startswith("add") or scalar <= 0:
                    raise ConversionError(f"{node.where}: {rule} by {scalar:g} after a matmul; "
                                          f"only a positive scale folds into its requantize")
                self.steps[src]["scale"] = self.steps[src].get("scale", 1.0) * scalar
                return
            self._scale_rows(src, scalar if rule.startswith("mul") else None,
                             scalar if rule.startswith("add") else None)
            return
        if rule == "transpose.identity" or rule.endswith(".merged"):   # its reader computes it
            return
        if rule == "layer_norm.folded_embedding":
            self._fold_embedding_norm(node, src)
            return
        raise ConversionError(f"{node.where}: the student builder has no lowering for {rule}")

    def _fold_embedding_norm(self, node: TeacherNode, add: str) -> None:
        """LayerNorm folded into the embedding sum ``add`` writes: the one-hot layer at the
        chain's root records the LayerNorm and the constants beside it, for ``fit_layer_norms``
        to fold the affine into them; the last add writes LayerNorm's output."""
        constants, ref = [], add
        while ref in self.steps and self.steps[ref]["kind"] == "add":
            a, b = self.steps[ref]["inputs"]
            if self.steps.get(b, {}).get("kind") != "constant":
                break
            constants.append(b)
            self.wide.add(self.steps[ref]["quant"])
            ref = self._through_views(a)
        step = self.steps.get(ref)
        if not constants or step is None or step["kind"] not in ("linear", "embedding"):
            raise ConversionError(f"{node.where}: layer_norm.folded_embedding needs the chip's "
                                  f"adds of constants over a one-hot fully connected layer")
        step["teacher_node"] = node.name
        step["folded_norm"] = constants[::-1]
        self.wide |= {self.steps[s]["quant"] for s in (ref, *constants)}

    def _through_views(self, ref: str) -> str:
        """The step that computes ``ref``'s values: ``ref`` itself, or what a chain of views
        (reshape, flatten) reads."""
        while ref in self.steps and self.steps[ref]["kind"] in ("reshape", "flatten"):
            ref = self.steps[ref]["inputs"][0]
        return ref

    def _scale_rows(self, step: str, scale: float | None, offset: float | None) -> None:
        """Fold ``* scale`` or ``+ offset`` into a MAC step's initial weight and bias: each row's
        value (whatever its rule) is made, rescaled, and written back as a copy."""
        s = self.steps[step]
        out = s.get("out_channels", s.get("out_features"))
        shapes = {"weight": self._weight_shape(step), "bias": (out,)}
        for k, (name, leaf, rule, source, args) in enumerate(self.rows):
            if name != step:
                continue
            value = row_value(TransferRow("", rule, source, args), self.derived, shapes[leaf])
            if scale is not None:
                value = value * scale
            elif leaf == "bias":
                value = value + offset
            self.rows[k] = (name, leaf, "copy", self._derive(f"{step}.{leaf}:folded", value), {})

    def _step(self, st, inputs: list[str], name: str, node: TeacherNode, d: Decision) -> dict:
        op = st.op
        base = {"name": name, "inputs": inputs}
        if op == "conv2d":
            cout, cin_g, kh, kw = st.weight
            groups = st.attrs.get("groups", 1)
            pads = st.attrs.get("pads", [0, 0, 0, 0])
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise ConversionError(f"{node.where}: asymmetric padding {pads}")
            step = {**base, "kind": "conv", "in_channels": cin_g * groups, "out_channels": cout,
                    "kernel": [kh, kw], "strides": list(st.attrs.get("strides", [1, 1])),
                    "pads": [pads[0], pads[1]], "dilations": list(st.attrs.get("dilations", [1, 1])),
                    "groups": groups, "relu": st.relu, "w_bits": self.w_bits,
                    "batch_norm": False, "role": "teacher"}
        elif op == "fully_connected":
            m, k = st.weight
            step = {**base, "kind": "linear", "in_features": k, "out_features": m,
                    "relu": st.relu, "w_bits": self.w_bits, "role": "teacher"}
        elif op in ("maxpool2d", "avgpool2d"):
            pads = st.attrs.get("pads", [0, 0, 0, 0])
            step = {**base, "kind": op[:7], "kernel": list(st.attrs["kernel"]),
                    "stride": list(st.attrs.get("strides", st.attrs["kernel"])),
                    "pads": [pads[0], pads[1]]}
        elif op == "global_avgpool2d":
            step = {**base, "kind": "global_avgpool"}
        elif op == "flatten":
            step = {**base, "kind": "flatten"}
        elif op == "reshape" and st.attrs["shape"][0] == 1:     # batch-1 plan shapes
            step = {**base, "kind": "reshape", "shape": list(st.attrs["shape"][1:])}
        elif op == "concat":
            if st.attrs.get("axis", 1) != 1:
                raise ConversionError(f"{node.where}: concat on axis {st.attrs['axis']}")
            step = {**base, "kind": "concat"}
        elif op in ("add", "mul"):
            step = {**base, "kind": op, "relu": False}
        elif op == "lookup_table":
            step = {**base, "kind": "lut", "function": st.attrs["function"]}
            if st.gain != 1.0:
                step["gain"] = st.gain
        elif op == "matmul":
            step = {**base, "kind": "matmul", "scale": 1.0}
        elif op == "softmax":
            rank = len(self.graph.shape(node.inputs[0]))
            if st.attrs["axis"] not in (-1, rank - 1):
                raise ConversionError(f"{node.where}: softmax over axis {st.attrs['axis']}; the "
                                      f"student's softmax runs over the last axis")
            step = {**base, "kind": "softmax"}
        elif op == "transpose":
            perm = list(st.attrs["perm"])
            if perm[0] != 0:
                raise ConversionError(f"{node.where}: transpose {perm} moves the batch axis")
            step = {**base, "kind": "transpose", "perm": [q - 1 for q in perm[1:]]}
        else:
            raise ConversionError(f"{node.where}: the student builder has no {op} step yet "
                                  f"(rule {d.rule})")
        if step["kind"] in ("conv", "linear", "add", "mul", "lut", "matmul", "softmax"):
            step["quant"] = self._grid(name)
        if step["kind"] == "softmax":
            self.grids.fixed[step["quant"]] = PROB_STEP
        return step

    # -- initialisation
    def _init(self, node: TeacherNode, d: Decision, made: list[str]) -> None:
        rule, p = d.rule, node.params
        macs = [s for s in made if self.steps[s]["kind"] in ("conv", "linear")]
        w = self.graph.params.get(p.get("weight", ""), None)
        b = p.get("bias")
        bias = ("copy", b, {}) if b else ("zeros", None, {})
        if rule in ("conv2d.native", "linear.native"):
            self._mac_rows(macs[0], ("copy", p["weight"], {}), bias)
        elif rule == "conv2d.centre_tap_3x3":
            self._mac_rows(macs[0], ("centre_tap", p["weight"], {}), bias)
        elif rule in ("conv2d.dense", "conv2d.dense_centre_tap_3x3"):
            dense = _block_diagonal(w, node.attrs["groups"])
            key = self._derive(f"{node.name}:dense", dense)
            self._mac_rows(macs[0], ("centre_tap" if "centre" in rule else "copy", key, {}), bias)
        elif rule.startswith("conv2d.split_out"):
            n = len(macs)
            per = w.shape[0] // n
            for j, s in enumerate(macs):
                cut = {"out": [j * per, (j + 1) * per]}
                self._mac_rows(s, ("copy", p["weight"], cut),
                               ("copy", b, cut) if b else ("zeros", None, {}))
        elif rule == "conv2d.shift_3x3":
            cin = w.shape[1]
            stride = node.attrs["stride"][0]
            reaches = [1] if stride == 2 else list(range(1, w.shape[2] // 2))
            reach = 0
            for s, out_reach in zip(macs[:-1], reaches):
                self._mac_rows(s, ("shift", None, {"c_in": cin, "in_reach": reach,
                                                  "out_reach": out_reach, "grid": 1}),
                               ("zeros", None, {}))
                self.steps[s]["role"] = "structural"
                self.steps[s]["relu"] = False
                reach = out_reach
            self._mac_rows(macs[-1], ("stem_kernel", p["weight"],
                                      {"c_in": cin, "in_reach": reach,
                                       "grid": 2 if stride == 2 else 1}), bias)
            self._shift_grids(macs[:-1])
        elif rule in ("add.concat_conv", "add.concat_conv_1x1"):
            c = self.steps[macs[0]]["out_channels"]
            if rule == "add.concat_conv":
                self._mac_rows(macs[0], ("identity_sum", None, {"channels": c, "operands": 2}),
                               ("zeros", None, {}))
            else:
                key = self._derive(f"{node.name}:sum", torch.eye(c).repeat(1, 2)[:, :, None, None])
                self._mac_rows(macs[0], ("copy", key, {}), ("zeros", None, {}))
        elif rule.startswith("conv2d.patchify_"):
            *copies, last = macs
            for i, s in enumerate(copies):
                s2d = _space_to_depth(self.steps[s]["in_channels"], self._weight_shape(s)[2])
                self._mac_rows(s, ("copy", self._derive(f"{node.name}:s2d{i}", s2d), {}),
                               ("zeros", None, {}))
                self.steps[s]["role"] = "structural"
                self.steps[s]["relu"] = False
            self._mac_rows(last, ("copy", self._derive(f"{node.name}:patch",
                                                       self._patch_weight(w, copies)), {}), bias)
            self._shift_grids(copies)
        elif rule == "select.fully_connected":       # 0/1 weights: token k's features
            tokens, features = self.graph.shape(node.inputs[0])[1:]
            k = node.attrs["index"] % tokens
            sel = torch.zeros(features, tokens * features)
            sel[:, k * features:(k + 1) * features] = torch.eye(features)
            self._mac_rows(macs[0], ("copy", self._derive(f"{node.name}:select", sel), {}),
                           ("zeros", None, {}))
            self.steps[macs[0]]["role"] = "structural"
        elif rule == "add.merge_into_conv":
            conv = self.graph.node(node.inputs[d.form.absorbs])
            wc = self.graph.params[conv.params["weight"]]
            c, kh, kw = wc.shape[0], wc.shape[2], wc.shape[3]
            ident = torch.zeros(c, c, kh, kw)
            ident[:, :, kh // 2, kw // 2] = torch.eye(c)
            key = self._derive(f"{node.name}:merged", torch.cat([wc, ident], dim=1))
            cb = conv.params.get("bias")
            self._mac_rows(macs[0], ("copy", key, {}),
                           ("copy", cb, {}) if cb else ("zeros", None, {}))
        elif rule == "add.carry_through_block":
            self._carry(node, d, macs)
        elif rule == "embedding.one_hot_fc":       # the table's rows are the layer's columns
            table = self.graph.params[p["weight"]]
            self._mac_rows(macs[0], ("copy", self._derive(f"{node.name}:table", table.t()), {}),
                           ("zeros", None, {}))
        elif rule == "avg_pool2d.depthwise":
            c, _, kh, kw = self._weight_shape(macs[0])
            key = self._derive(f"{node.name}:avg", torch.full((c, 1, kh, kw), 1.0 / (kh * kw)))
            self._mac_rows(macs[0], ("copy", key, {}), ("zeros", None, {}))
        elif rule == "global_avg_pool.fully_connected" or \
                re.fullmatch(r"global_avg_pool\.(halve\d+(_dw)?|window\d+)_fully_connected", rule):
            c = self.graph.shape(node.inputs[0])[1]
            self._pool_fc(node, macs, torch.eye(c), ("zeros", None, {}), made)
        elif rule == "linear.global_pool_head":
            pool = node
            while pool.op != "global_avg_pool":      # through the views between them
                pool = self.graph.node(pool.inputs[0])
            self._pool_fc(pool, macs, w, bias, made)
        elif rule in ("batch_norm.depthwise_1x1", "batch_norm.dense_1x1",
                      "batch_norm.fully_connected"):
            scale, shift = _bn_affine(self.graph, node)
            c = scale.numel()
            if rule == "batch_norm.depthwise_1x1":
                weight = scale.view(c, 1, 1, 1)
            else:
                weight = torch.diag(scale)
                weight = weight if rule.endswith("connected") else weight[:, :, None, None]
            self._mac_rows(macs[0], ("copy", self._derive(f"{node.name}:w", weight), {}),
                           ("copy", self._derive(f"{node.name}:b", shift), {}))
        elif macs:   # a learned form: fresh weights, trained by distillation
            for s in macs:
                self._mac_rows(s, ("fresh", None, {}), ("zeros", None, {}))
                self.learned.append(s)

    def _patch_weight(self, w: torch.Tensor, copies: list[str]) -> torch.Tensor:
        """The teacher's k x k patch weights moved onto the channels the space-to-depth convs
        write: each of those channels copies one input (channel, row, column) of the patch,
        found by pushing each position's index through the copies."""
        cout, cin, k, _ = w.shape
        x = torch.arange(cin * k * k, dtype=torch.float64).reshape(1, cin, k, k)
        for s in copies:
            sz = self._weight_shape(s)[2]
            x = torch.nn.functional.conv2d(x, _space_to_depth(x.shape[1], sz, torch.float64),
                                           stride=sz)
        src = x[0].round().long()                   # [channels, r, r]: the position each copies
        return w.reshape(cout, -1)[:, src.reshape(-1)].reshape(cout, *src.shape)

    def _carry(self, node: TeacherNode, d: Decision, macs: list[str]) -> None:
        """``add.carry_through_block``: the inverted residual's three convs, each wider by the
        carried channels ``relu(x)``, ``relu(-x)`` (scale 1 here; ``fit_carried_residuals``
        sets it): identity rows in the expand, identity centre taps in the depthwise conv,
        +1/-1 columns in the projection."""
        k = d.form.absorbs
        branch, value = [], node.inputs[k]
        for _ in range(5):
            branch.append(self.graph.node(value))
            value = branch[-1].inputs[0]
        expand, act1, dw, act2, proj = inverted_residual(branch, node.inputs[1 - k])
        g = self.graph.params
        c = node.shape[1]
        eye = torch.eye(c)[:, :, None, None]

        def bias_of(conv, n):
            b = conv.params.get("bias")
            return g[b] if b else torch.zeros(n)
        we, wd, wp = (g[n.params["weight"]] for n in (expand, dw, proj))
        kh, kw = wd.shape[2:]
        taps = torch.zeros(2 * c, 1, kh, kw)
        taps[:, 0, kh // 2, kw // 2] = 1.0
        zeros = torch.zeros(2 * c)
        for step, weight, bias in (
                (macs[0], torch.cat([we, eye, -eye]), torch.cat([bias_of(expand, we.shape[0]), zeros])),
                (macs[1], torch.cat([wd, taps]), torch.cat([bias_of(dw, wd.shape[0]), zeros])),
                (macs[2], torch.cat([wp, eye, -eye], dim=1), bias_of(proj, wp.shape[0]))):
            self._mac_rows(step, ("copy", self._derive(f"{step}:carried", weight), {}),
                           ("copy", self._derive(f"{step}:carried_bias", bias), {}))
        for step, act in ((macs[0], act1), (macs[1], act2)):
            hi = act.attrs.get("max") if act.op == "clamp" else None
            if hi is not None:
                self.steps[step]["clamp_max"] = float(hi)
        self.steps[macs[0]]["carried"] = {"value": node.inputs[1 - k], "channels": c,
                                          "through": macs[1], "into": macs[2]}

    def _pool_fc(self, pool: TeacherNode, macs: list[str], head: torch.Tensor, bias,
                 made: list[str]) -> None:
        """A global pool as 2x2-averaging convs (or one average window) and a fully connected
        layer over the positions left, whose weights spread ``head`` [out, channels] (the
        identity for the pool alone, the next layer's weight for the pool and that layer as
        one) over the positions."""
        window = next((self.steps[s] for s in made if self.steps[s]["kind"] == "avgpool"), None)
        if window is not None:
            c, h, w_ = self.graph.shape(pool.inputs[0])[1:]
            (k, _), (ph, pw) = window["kernel"], window["pads"]
            share = []
            for size, pad in ((h, ph), (w_, pw)):
                cells, _ = window_cover(size, k)
                share.append(torch.tensor([min(size, (i + 1) * k - pad) - max(0, i * k - pad)
                                           for i in range(cells)], dtype=torch.float32))
            cell = torch.outer(*share).reshape(-1) / (h * w_)   # each cell's share of the map
            weight = head.repeat_interleave(cell.numel(), dim=1) * cell.repeat(head.shape[1])
            self._mac_rows(macs[-1], ("copy", self._derive(f"{pool.name}:window:{macs[-1]}",
                                                           weight), {}), bias)
            return
        nonneg = self._nonnegative(self.steps[macs[0]]["inputs"][0]) if macs[:-1] else False
        for s in macs[:-1]:
            c = self.steps[s]["out_channels"]
            cells = ("sum_pool", None, {"channels": c})
            if self.steps[s]["groups"] > 1:      # one 2x2 average per channel
                cells = ("copy", self._derive(f"{s}:dwpool", _depthwise_sum_pool(c)), {})
            self._mac_rows(s, cells, ("zeros", None, {}))
            self.steps[s]["role"] = "structural"
            self.steps[s]["relu"] = nonneg   # averages of a non-negative map stay so
        c, h, w_ = self.graph.shape(pool.inputs[0])[1:]
        positions = self.steps[macs[-1]]["in_features"] // c
        key = self._derive(f"{pool.name}:pool:{macs[-1]}", head)
        self._mac_rows(macs[-1], ("fc_spatial", key,
                                  {"positions": positions,
                                   "scale": 4.0 ** len(macs[:-1]) / (h * w_)}), bias)

    def _nonnegative(self, ref: str) -> bool:
        """Whether a value can never be negative: the image, a ReLU'd step, or a view or pool
        of such values."""
        if ref == IMAGE:
            return True
        step = self.steps[ref]
        if step["kind"] in ("conv", "linear", "add", "mul", "matmul", "channel_affine"):
            return bool(step.get("relu", False))
        if step["kind"] == "softmax":
            return True
        if step["kind"] == "constant":
            return False
        if step["kind"] == "lut":
            return step["function"] in _NON_NEGATIVE
        return all(self._nonnegative(r) for r in step["inputs"])

    def _weight_shape(self, step: str) -> tuple[int, ...]:
        s = self.steps[step]
        if s["kind"] == "linear":
            return (s["out_features"], s["in_features"])
        return (s["out_channels"], s["in_channels"] // s["groups"], *s["kernel"])

    def _shift_grids(self, shift_steps: list[str]) -> None:
        """Shift layers copy their input onto its own grid: the image's fixed u8 grid, or the
        input's quantizer (lossless either way)."""
        for s in shift_steps:
            src = self._quant_of(self.steps[s]["inputs"][0])
            if src == IMAGE or self.grids.find(src) in self.grids.fixed:
                self.grids.fixed[self.steps[s]["quant"]] = SHIFT_STEP
                self.steps[s]["relu"] = True
            else:
                self.grids.union(src, self.steps[s]["quant"])


def _space_to_depth(c: int, s: int, dtype=torch.float32) -> torch.Tensor:
    """An s x s/s conv's kernel that copies input channel k's cell position (i, j) to output
    channel k*s*s + i*s + j."""
    return torch.eye(c * s * s, dtype=dtype).reshape(c * s * s, c, s, s)


def _merges_batch(st) -> bool:
    """A reshape of the plan's batch-1 shapes to token rows ([rows, features]), which merges
    the batch axis into the rows at any other batch size."""
    return st.op == "reshape" and len(st.attrs["shape"]) == 2 and st.attrs["shape"][0] != 1


def _depthwise_sum_pool(c: int) -> torch.Tensor:
    """The depthwise form of transfer's sum_pool: taps (1,1), (1,2), (2,1), (2,2) at 1/4."""
    w = torch.zeros(c, 1, 3, 3)
    w[:, :, 1:, 1:] = 0.25
    return w


def _block_diagonal(w: torch.Tensor, groups: int) -> torch.Tensor:
    cout, cin_g = w.shape[:2]
    per_out = cout // groups
    dense = torch.zeros(cout, cin_g * groups, *w.shape[2:])
    for g in range(groups):
        dense[g * per_out:(g + 1) * per_out, g * cin_g:(g + 1) * cin_g] = w[g * per_out:(g + 1) * per_out]
    return dense


def _bn_affine(graph: TeacherGraph, node: TeacherNode) -> tuple[torch.Tensor, torch.Tensor]:
    p = {k: graph.params[v].double() for k, v in node.params.items()}
    scale = p.get("weight", torch.ones_like(p["running_var"])) / torch.sqrt(
        p["running_var"] + node.attrs["eps"])
    shift = p.get("bias", torch.zeros_like(scale)) - p["running_mean"] * scale
    return scale.float(), shift.float()


_NON_NEGATIVE = ("sigmoid", "hardsigmoid")


def _signed_grids(low: "_Lowering") -> dict[str, bool]:
    """A grid is unsigned only if every step writing it clamps at zero (ReLU, a non-negative
    table); one writer that does not makes it signed."""
    signed: dict[str, bool] = {}
    for step in low.steps.values():
        if "quant" not in step:
            continue
        root = low.grids.find(step["quant"])
        if step["kind"] == "lut":
            writes_negative = step["function"] not in _NON_NEGATIVE
        else:
            writes_negative = step["kind"] != "softmax" and not step.get("relu", False)
        signed[root] = signed.get(root, False) or writes_negative
    return signed


def lower_plan(graph: TeacherGraph, plan: ConversionPlan, profile: ChipProfile) -> Lowered:
    """The student config, transfer table and block taps of ``plan`` for ``graph``."""
    low = _Lowering(graph, plan)
    decisions = {d.node: d for d in plan.decisions}
    blocks = partition(graph)
    for nodes in blocks:
        for n in nodes:
            low.lower(decisions[n.name])
    widen_grids(low, {n.name: bi for bi, nodes in enumerate(blocks) for n in nodes},
                plan.stream_bits or stream_width(profile))
    # the head writes logits on a signed grid of at least 8 bits (as the paper's head)
    last = low._value(graph.outputs[0])
    grids = low.grids
    quantizers = {}
    head_key = grids.find(low.steps[last]["quant"]) if "quant" in low.steps.get(last, {}) else None
    signed_of = _signed_grids(low)
    for key in grids.parent:
        root = grids.find(key)
        if root in quantizers:
            continue
        # a grid shared by writers of different widths (a concat across blocks) takes the widest
        a_bits = max(b for k, b in low.grid_bits.items() if grids.find(k) == root)
        bits = max(8, a_bits) if root == head_key else a_bits
        signed = signed_of.get(root, True)
        fixed = next((grids.fixed[k] for k in grids.fixed if grids.find(k) == root), None)
        if fixed is not None:
            bits, signed = 8, False
        quantizers[root] = {"bits": bits, "signed": signed, "step": fixed}
    config_blocks, taps, names_of_blocks = [], [], block_names(blocks)
    in_ref, in_quant, in_channels = IMAGE, IMAGE, [graph.input_shapes[graph.inputs[0]][1]]
    rows: list[TransferRow] = []
    widths = []
    for bi, nodes in enumerate(blocks):
        w_bits, a_bits = block_bits(decisions, nodes, plan.bits)
        widths.append(f"{w_bits}w{a_bits}a")
        names = [s for s in low.steps if low.step_node[s] in {n.name for n in nodes}]
        out_value = nodes[-1].name
        out_ref = low._value(out_value)
        local = {}
        steps = []
        for s in names:
            step = dict(low.steps[s])
            step["inputs"] = ["in:0" if r == in_ref else local.get(r, r) for r in step["inputs"]]
            for r in step["inputs"]:
                if r != "in:0" and r not in local.values() and not r.startswith("side:"):
                    raise ConversionError(f"step {s} reads {r!r} from an earlier block; blocks "
                                          f"must be cut where one value is live")
            if "quant" in step:
                step["quant"] = grids.find(step["quant"])
            local[s] = s
            steps.append(step)
        if out_ref == in_ref:
            raise ConversionError(f"block {bi} computes nothing")
        name = names_of_blocks[bi]
        out_quant = low._quant_of(out_ref)
        config_blocks.append({
            "name": name, "tap": out_value, "w_bits": w_bits, "a_bits": a_bits,
            "inputs": in_channels, "input_quant": grids.find(in_quant),
            "steps": steps, "outputs": [out_ref]})
        taps.append(out_value)
        for step_name, leaf, rule, source, args in low.rows:
            if step_name in names:
                rows.append(TransferRow(f"blocks.{bi}.layers.{step_name}.{leaf}", rule, source,
                                        dict(args)))
        shape = graph.shape(out_value)
        in_ref, in_quant, in_channels = out_ref, out_quant, [shape[1]]
    config = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION,
              **_input_spec(graph, plan), "quantizers": quantizers, "blocks": config_blocks,
              "meta": {"teacher": "graph", "profile": plan.chip, "recipe": plan.recipe,
                       "bits": widths,
                       "rules": plan.rules_fired(),
                       "requantize": profile.arithmetic.requant.mode.value}}
    return Lowered(config, rows, low.derived, taps, low.learned)



def _input_spec(graph: TeacherGraph, plan: ConversionPlan) -> dict:
    """The student's input: images as pixels, or the one-hot rows an embedding reads (the host
    writes each token as a one-hot vector); the other graph inputs as side inputs."""
    main = graph.inputs[0]
    spec = {"input_shape": list(graph.input_shapes[main][1:])}
    encoded = [d for d in plan.decisions if d.form.input_shapes is not None and
               graph.node(d.node).inputs[0] == main]
    gathered = [d for d in plan.decisions if d.rule == "embedding.gather" and
                graph.node(d.node).inputs[0] == main]
    if gathered:
        vocab = graph.params[graph.node(gathered[0].node).params["weight"]].shape[0]
        spec = {"input_shape": list(graph.input_shapes[main][1:]), "input_encoding": "token_ids",
                "vocab": int(vocab)}
    elif encoded:
        rows, vocab = encoded[0].form.input_shapes[0]
        tokens = graph.input_shapes[main][1:]
        if math.prod(tokens) != rows:
            raise ConversionError(f"{graph.node(encoded[0].node).where}: one-hot rows {rows} for "
                                  f"token input {list(tokens)}")
        spec = {"input_shape": [*tokens, vocab], "input_encoding": "one_hot"}
    side = {i: list(graph.input_shapes[i][1:]) for i in graph.inputs[1:]}
    return {**spec, "side_inputs": side} if side else spec


def block_bits(decisions: dict, nodes: list[TeacherNode], default) -> tuple[int, int]:
    """A block's widths: its nodes' (per-block bit allocation gives them all the same)."""
    found = {decisions[n.name].bits or tuple(default) for n in nodes}
    if len(found) != 1:
        raise ConversionError(f"block {module_key(nodes)!r} mixes widths {sorted(found)}; "
                              f"widths are chosen per block")
    return found.pop()


def block_names(blocks: list[list[TeacherNode]]) -> list[str]:
    """The student's block names for ``partition``'s blocks, in order (unique module keys)."""
    taken: set[str] = set()
    names = []
    for nodes in blocks:
        names.append(unique_name(module_key(nodes), taken))
        taken.add(names[-1])
    return names


def build_graph_student(graph: TeacherGraph, plan: ConversionPlan, profile: ChipProfile):
    """The student of ``plan``, initialised from the teacher: (student in eval mode, Lowered)."""
    from archnet.lowering.transfer import apply_transfers
    from archnet.student import build_student
    low = lower_plan(graph, plan, profile)
    student = build_student(low.config)
    apply_transfers(low.derived, student, low.rows)
    init_weight_quantizers(student)
    return student.eval(), low
