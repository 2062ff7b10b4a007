"""Attention masks, recognised at capture: ``softmax(scores + M)`` where ``M`` is computed from
one graph input alone (a padding mask ``[batch, keys]``: 1 keeps a key, 0 drops it) becomes one
``softmax`` node with that input as its key mask.

Models build ``M`` in many ways (casts, indexing, ``where``, ``(1 - m) * -10000``), none of them
chip ops; what the chip runs is a softmax that skips masked keys (``simulator``'s softmax with
a mask operand). The rewrite is checked, not assumed: ``M`` is evaluated on random masks by the
model's own ATen calls, and must be 0 wherever the key is kept and at most -1e4 wherever it is
dropped, for every query and head.
"""

from __future__ import annotations

import torch

_DROPPED = -1e4          # exp(-1e4) is 0 in float32: a key this far below the others is masked


def _graph_inputs(fx_graph, lifted: set[str]) -> list:
    return [n for n in fx_graph.nodes if n.op == "placeholder" and n.name not in lifted]


def _ancestry(node, inputs: set[str]) -> tuple[set[str], list]:
    """(graph inputs ``node`` depends on, the call nodes computing it, in graph order)."""
    seen, order, found, stack = set(), [], set(), [node]
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.op == "placeholder":
            if n.name in inputs:
                found.add(n.name)
            continue
        order.append(n)
        stack += [a for a in n.all_input_nodes]
    index = {n.name: i for i, n in enumerate(node.graph.nodes)}
    return found, sorted(order, key=lambda n: index[n.name])


def call(n, env: dict):
    """An fx call node's value, its node arguments taken from ``env`` by name."""
    def sub(a):
        if isinstance(a, (list, tuple)):
            return type(a)(sub(x) for x in a)
        return env[a.name] if hasattr(a, "op") else a
    with torch.no_grad():
        return n.target(*sub(n.args), **{k: sub(v) for k, v in n.kwargs.items()})


def _evaluate(chain: list, feeds: dict) -> torch.Tensor:
    env = dict(feeds)
    for n in chain:
        env[n.name] = call(n, env)
    return env[chain[-1].name]


def _is_key_mask(chain: list, mask_input, params: dict, scores_shape) -> bool:
    """Whether the value ``chain`` computes from ``mask_input`` is an additive key mask."""
    example = mask_input.meta.get("val")
    if not isinstance(example, torch.Tensor) or example.dim() != 2:
        return False
    batch, keys = example.shape
    gen = torch.Generator().manual_seed(0)
    trials = [torch.ones(batch, keys)]
    for _ in range(3):
        m = (torch.rand(batch, keys, generator=gen) < 0.6).float()
        m[:, 0] = 1                     # every row keeps a key
        trials.append(m)
    for m in trials:
        try:
            value = _evaluate(chain, {**params, mask_input.name: m.to(example.dtype)})
        except Exception:   # noqa: BLE001 - a chain the example's values do not fit
            return False
        if not isinstance(value, torch.Tensor) or value.dim() != len(scores_shape):
            return False
        keep = (m != 0).reshape(batch, *([1] * (value.dim() - 2)), keys)
        try:
            keep = keep.expand(value.shape)
        except RuntimeError:
            return False
        value = value.float()
        if value.shape[-1] != keys or not torch.all(value[keep] == 0) or \
                not torch.all(value[~keep] <= _DROPPED):
            return False
    return True


def key_masks(fx_graph, lifted: set[str], params: dict) -> dict[str, tuple[str, str, set[str]]]:
    """For each softmax over ``scores + M`` with ``M`` an additive key mask of one graph input:
    ``{softmax: (scores value, mask input, nodes only the mask needs)}``."""
    inputs = {n.name for n in _graph_inputs(fx_graph, lifted)}
    found = {}
    for sm in fx_graph.nodes:
        if sm.op != "call_function" or "softmax" not in getattr(sm.target, "__name__", "") or \
                not sm.args or not hasattr(sm.args[0], "op"):
            continue
        add = sm.args[0]
        if add.op != "call_function" or not getattr(add.target, "__name__", "").startswith("add") \
                or len(add.users) != 1:
            continue
        operands = [a for a in add.args[:2] if hasattr(a, "op")]
        if len(operands) != 2:
            continue
        dim = int(sm.args[1]) if len(sm.args) > 1 else -1
        rank = len(sm.meta["val"].shape)
        if dim % rank != rank - 1:
            continue
        for k in (0, 1):
            scores, m = operands[1 - k], operands[k]
            deps, chain = _ancestry(m, inputs)
            if len(deps) != 1 or not chain:
                continue
            mask_input = next(n for n in fx_graph.nodes if n.name in deps)
            if _is_key_mask(chain, mask_input, params, tuple(sm.meta["val"].shape)):
                found[sm.name] = (scores.name, mask_input.name, {n.name for n in chain} | {add.name})
                break
    return found


__all__ = ["call", "key_masks"]
