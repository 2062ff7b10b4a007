"""Normalising passes over a ``TeacherGraph``: each a pure function graph -> graph, computing
the same outputs in float (``tests/capture/test_passes.py`` proves each before/after).

- ``drop_identities``: dropout in eval, clone, contiguous, detach: gone, their readers rewired.
- ``fold_batchnorm``: a batch-norm that reads a conv or linear layer read by nothing else is
  folded into that layer's weights and bias (the student quantizes folded weights, as chips do).
- ``split_fused_projections``: a linear layer only ever cut into parts (a fused query-key-value
  projection) becomes one linear layer per part.

Constant subgraphs (``torch.arange`` positions, a weight's transpose) are folded during capture
(``archnet.capture.export``), where the ATen call that computes them is still at hand.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from archnet.capture.graph import TeacherGraph, TeacherNode, renamed_inputs

_FOLDS_INTO = ("conv2d", "linear")


def _rewire(graph: TeacherGraph, keep: list[TeacherNode], mapping: dict[str, str],
            params: dict | None = None) -> TeacherGraph:
    def resolve(name: str) -> str:
        while name in mapping:
            name = mapping[name]
        return name
    flat = {k: resolve(k) for k in mapping}
    nodes = [renamed_inputs(n, flat) for n in keep]
    outputs = [flat.get(o, o) for o in graph.outputs]
    return graph.with_nodes(nodes, params, outputs)


def drop_identities(graph: TeacherGraph) -> TeacherGraph:
    mapping = {n.name: n.inputs[0] for n in graph.nodes if n.op == "identity" and n.inputs}
    return _rewire(graph, [n for n in graph.nodes if n.name not in mapping], mapping)


def fold_batchnorm(graph: TeacherGraph) -> TeacherGraph:
    params = dict(graph.params)
    readers: dict[str, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
    by_name = {n.name: n for n in graph.nodes}
    folded: dict[str, TeacherNode] = {}   # layer name -> the layer with the norm folded in
    mapping: dict[str, str] = {}
    for bn in graph.nodes:
        src = by_name.get(bn.inputs[0]) if bn.op == "batch_norm" and bn.inputs else None
        if src is None or src.op not in _FOLDS_INTO or readers.get(src.name) != 1 \
                or src.name in graph.outputs or src.name in folded:
            continue
        w, b = _folded(params, src, bn)
        wname, bname = f"{src.name}__folded_weight", f"{src.name}__folded_bias"
        params[wname], params[bname] = w, b
        folded[src.name] = replace(src, params={"weight": wname, "bias": bname})
        mapping[bn.name] = src.name
    keep = [folded.get(n.name, n) for n in graph.nodes if n.name not in mapping]
    return _rewire(graph, keep, mapping, params)


def _folded(params: dict, layer: TeacherNode, bn: TeacherNode) -> tuple[torch.Tensor, torch.Tensor]:
    weight = params[layer.params["weight"]].double()
    bias = params[layer.params["bias"]].double() if "bias" in layer.params else \
        torch.zeros(weight.shape[0], dtype=torch.float64)
    mean = params[bn.params["running_mean"]].double()
    var = params[bn.params["running_var"]].double()
    gamma = params[bn.params["weight"]].double() if "weight" in bn.params else torch.ones_like(mean)
    beta = params[bn.params["bias"]].double() if "bias" in bn.params else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.attrs["eps"])
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return (weight * scale.reshape(shape)).float(), ((bias - mean) * scale + beta).float()


def split_fused_projections(graph: TeacherGraph) -> TeacherGraph:
    """A linear layer whose output is only ever cut into parts (a fused query-key-value
    projection: ``qkv(x).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)`` then ``unbind``,
    or ``qkv(x).chunk(3, -1)``) becomes one linear layer per part, with its rows of the weight:
    the chips have no slice op, and each part is a fully connected layer of its own."""
    readers: dict[str, list[TeacherNode]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            readers.setdefault(i, []).append(n)
    params = dict(graph.params)
    replaced: dict[str, list[TeacherNode]] = {}     # a cut's name -> the nodes computing it
    dropped: set[str] = set()
    for lin in graph.nodes:
        plan = _fused_parts(graph, lin, readers)
        if plan is None:
            continue
        chain, cuts = plan
        dropped |= {lin.name, *(n.name for n in chain)}
        for cut, (lo, hi), tail in cuts:
            w = f"{lin.name}__rows{lo}_{hi}_weight"
            params[w] = graph.params[lin.params["weight"]][lo:hi]
            part_params = {"weight": w}
            if "bias" in lin.params:
                params[f"{lin.name}__rows{lo}_{hi}_bias"] = graph.params[lin.params["bias"]][lo:hi]
                part_params["bias"] = f"{lin.name}__rows{lo}_{hi}_bias"
            shape = (*lin.shape[:-1], hi - lo)
            part = replace(lin, name=f"{cut.name}__linear", params=part_params, shape=shape)
            nodes, prev = [part], part.name
            for k, (op, attrs, out_shape) in enumerate(tail):
                last = k == len(tail) - 1
                nodes.append(TeacherNode(cut.name if last else f"{cut.name}__{op}{k}", op,
                                         (prev,), {}, attrs, lin.module, lin.module_type,
                                         out_shape))
                prev = nodes[-1].name
            if not tail:           # the part is the cut itself
                nodes[-1] = replace(part, name=cut.name)
            replaced[cut.name] = nodes
    if not replaced:
        return graph
    keep: list[TeacherNode] = []
    for n in graph.nodes:
        if n.name in replaced:
            keep += replaced[n.name]
        elif n.name not in dropped:
            keep.append(n)
    return graph.with_nodes(keep, params)


def _fused_parts(graph: TeacherGraph, lin: TeacherNode, readers):
    """(the nodes between the linear and its cuts, [(cut, (first row, end row), the ops that
    follow the part)]) where ``lin`` is only cut into row ranges, else None."""
    if lin.op != "linear" or lin.name in graph.outputs:
        return None
    out = lin.shape[-1]
    nxt = readers.get(lin.name, [])
    if nxt and all(n.op == "slice" and n.attrs["dim"] == len(lin.shape) - 1 for n in nxt):
        return [], [(n, (n.attrs["start"], min(n.attrs["end"], out)), []) for n in nxt]
    if len(nxt) != 1 or nxt[0].op != "reshape":
        return None
    reshape = nxt[0]
    lead = len(lin.shape) - 1
    split = reshape.shape[lead:]
    if tuple(reshape.shape[:lead]) != tuple(lin.shape[:-1]) or len(split) < 2 or             reshape.name in graph.outputs:
        return None
    chain, cut_src, perm = [reshape], reshape, list(range(len(reshape.shape)))
    after = readers.get(reshape.name, [])
    if len(after) == 1 and after[0].op == "transpose" and after[0].name not in graph.outputs:
        chain.append(after[0])
        cut_src, perm = after[0], list(after[0].attrs["perm"])
    cuts = readers.get(cut_src.name, [])
    if not cuts or not all(n.op == "select" for n in cuts) or             len({n.attrs["dim"] for n in cuts}) != 1 or perm[cuts[0].attrs["dim"]] != lead:
        return None
    per = out // split[0]
    rest = [d for i, d in enumerate(reshape.shape) if i != lead]
    part_shape = [0 if i == 0 else d for i, d in enumerate(rest)]   # batch stays free
    new_perm = [p - (p > lead) for p in perm if p != lead]
    tail_shape = tuple(rest[p] for p in new_perm)
    result = []
    for cut in cuts:
        i = cut.attrs["index"]
        tail = [("reshape", {"shape": part_shape}, tuple(rest))]
        if new_perm != sorted(new_perm):
            tail.append(("transpose", {"perm": new_perm}, tail_shape))
        result.append((cut, (i * per, (i + 1) * per), tail))
    return chain, result


PASSES = (drop_identities, fold_batchnorm, split_fused_projections)


def normalise(graph: TeacherGraph) -> TeacherGraph:
    for p in PASSES:
        graph = p(graph)
    return graph
