"""Normalising passes over a ``TeacherGraph``: each a pure function graph -> graph, computing
the same outputs in float (``tests/capture/test_passes.py`` proves each before/after).

- ``drop_identities``: dropout in eval, clone, contiguous, detach: gone, their readers rewired.
- ``fold_batchnorm``: a batch-norm that reads a conv or linear layer read by nothing else is
  folded into that layer's weights and bias (the student quantizes folded weights, as chips do).

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


PASSES = (drop_identities, fold_batchnorm)


def normalise(graph: TeacherGraph) -> TeacherGraph:
    for p in PASSES:
        graph = p(graph)
    return graph
