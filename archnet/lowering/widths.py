"""Activation widths per grid. A student's ``a_bits`` is the width of what its MAC arrays read
(the paper's 4w4a: 4-bit weights times 4-bit activations). Some values carry more than a MAC
input needs: what a table lookup, a matmul of two activations or a softmax reads or writes (a
table's index is its full width; attention scores, keys and their products), and LayerNorm's
output, the Transformer's residual stream, with the sums its replacements write. These grids
keep ``WIDE_BITS`` however narrow ``a_bits`` is: on 4-bit grids a Transformer loses the
sentence. A MAC reading a wide grid at a narrower ``a_bits`` reads it through a per-channel
requantize onto its own grid (a depthwise 1x1), one per wide value and block, shared by its MAC
readers (the query, key and value layers read one); calibration sets its per-channel factors
(``archnet.lowering.calibrate.smooth_narrowed_inputs``: the smoothing that lets outlier channels
share a narrow grid). An embedding's one-hot table keeps ``WIDE_BITS`` weights: its weights are
the values the lookup writes, not factors of a product.

The residual stream (the grids LayerNorm's forms mark: their outputs and the sums they read)
is ``stream_bits`` wide: 16 where the chip runs 16-bit activations (``stream_width``: an 8-bit
per-tensor stream alone costs MiniLM a fifth of its nearest neighbours, a 12-bit one 2 %,
reports/minilm/ceilings.md), else ``WIDE_BITS``; what reads it at ``a_bits`` reads it through
the per-channel requantize above (8-bit per channel: 96.5 % of the neighbours kept). Tables,
attention scores and softmax stay at ``WIDE_BITS`` whatever the stream: the chips' 8-bit
tables and int8 matmuls (Ethos-U55's BATCH_MATMUL) take no more.

CNNs without such ops are untouched: every grid keeps its writer's ``a_bits``."""

from __future__ import annotations

from simulator.ir.builder import unique_name

WIDE_BITS = 8          # tables, attention and softmax: the chips' 8-bit units
STREAM_BITS = 16       # the residual stream where the chip runs 16-bit activations
WIDE_OPS = ("lut", "matmul", "softmax")      # their operands and outputs stay wide
MACS = ("conv", "linear")


def stream_width(profile) -> int:
    """The residual stream's width on ``profile``: ``STREAM_BITS`` where its MACs read 16-bit
    activations (so every op of the stream runs at 16 bits: ``precision.modes``), else
    ``WIDE_BITS``."""
    return STREAM_BITS if profile.mode_for(8, STREAM_BITS) is not None else WIDE_BITS


def widen_grids(low, block_of: dict[str, int], stream_bits: int = WIDE_BITS) -> int:
    """Widen ``low``'s grids as the module says and insert the requantizes MACs then need;
    returns how many requantizes it inserted. ``low`` is the lowering (its ``steps``,
    ``grids``, ``grid_bits`` and the grids its LayerNorm forms marked ``wide``: the stream,
    ``stream_bits`` wide); ``block_of`` maps each teacher node to its block (a requantize is
    shared only within one)."""
    for name in low.tables:
        low.steps[name]["w_bits"] = max(low.steps[name]["w_bits"], WIDE_BITS)
    stream = {low.grids.find(k) for k in low.wide}
    width = {}
    for st in low.steps.values():
        if st["kind"] in WIDE_OPS:
            width |= {low.grids.find(q): WIDE_BITS
                      for q in map(low._quant_of, [*st["inputs"], st["name"]])
                      if q in low.grids.parent}
    width |= {root: max(stream_bits, width.get(root, 0)) for root in stream}
    if all(low.grid_bits[k] >= width.get(low.grids.find(k), 0) for k in low.grid_bits):
        return 0
    mac_bits = {s: low.grid_bits[st["quant"]] for s, st in low.steps.items()
                if st["kind"] in MACS and "quant" in st}
    for key in low.grid_bits:
        low.grid_bits[key] = max(low.grid_bits[key], width.get(low.grids.find(key), 0))
    wide = set(width)
    inserted: dict[tuple[str, int], str] = {}      # (wide value, block) -> its requantize
    for name in list(low.steps):
        st = low.steps[name]
        if name not in mac_bits:
            continue
        ref = st["inputs"][0]
        q = low._quant_of(ref)
        if q not in low.grids.parent or low.grids.find(q) not in wide or \
                mac_bits[name] >= width[low.grids.find(q)]:
            continue
        key = (ref, block_of[low.step_node[name]])
        if key not in inserted:
            inserted[key] = _requantize(low, ref, name, mac_bits[name])
        st["inputs"][0] = inserted[key]
    return len(inserted)


def _requantize(low, ref: str, reader: str, bits: int) -> str:
    """A per-channel requantize of ``ref`` onto a new ``bits`` grid, placed before ``reader``
    (in its block), starting as the identity: a depthwise 1x1 conv before a conv, a per-channel
    affine over the last axis before a fully connected layer."""
    mac = low.steps[reader]
    conv = mac["kind"] == "conv"
    channels = mac["in_channels"] if conv else mac["in_features"]
    name = unique_name(f"{ref}_narrow", low.steps)
    quant = low.grids.new(name)
    low.grid_bits[quant] = bits
    if conv:
        step = {"name": name, "inputs": [ref], "kind": "conv", "in_channels": channels,
                "out_channels": channels, "kernel": [1, 1], "strides": [1, 1], "pads": [0, 0],
                "dilations": [1, 1], "groups": channels, "relu": False,
                "w_bits": mac["w_bits"], "batch_norm": False, "role": "teacher",
                "quant": quant}
        low.rows += [(name, "weight", "ones", None, {}), (name, "bias", "zeros", None, {})]
    else:
        step = {"name": name, "inputs": [ref], "kind": "channel_affine", "features": channels,
                "w_bits": mac["w_bits"], "quant": quant, "role": "teacher"}
        low.rows += [(name, "weight", "ones", None, {}), (name, "bias", "zeros", None, {}),
                     (name, "bn.weight", "ones", None, {}), (name, "bn.bias", "zeros", None, {}),
                     (name, "bn.running_mean", "zeros", None, {}),
                     (name, "bn.running_var", "ones", None, {})]
    step["narrows"] = True          # calibration smooths its channels (smooth_narrowed_inputs)
    items = list(low.steps.items())
    at = [key for key, _ in items].index(reader)
    low.steps = dict(items[:at] + [(name, step)] + items[at:])
    low.step_node[name] = low.step_node[reader]
    return name
