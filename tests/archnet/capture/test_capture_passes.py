"""Each normalising pass computes the same outputs as the graph it rewrites, removes what it
says it removes, and leaves its input graph untouched."""

import copy

import torch
from torch import nn

from archnet.capture import export_graph
from archnet.capture.passes import PASSES, drop_identities, fold_batchnorm


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.3)
        self.conv2 = nn.Conv2d(6, 6, 1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)
        self.bn3 = nn.BatchNorm1d(5)

    def forward(self, x):
        y = self.drop(torch.relu(self.bn(self.conv(x))))
        z = self.conv2(y)
        y = self.bn2(z) + z            # conv2's output is read twice: bn2 cannot fold into it
        return self.bn3(self.fc(y.mean(dim=(2, 3))))


def _net():
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():        # statistics far from (0, 1), so that a wrong fold shows
        for bn in (net.bn, net.bn2, net.bn3):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net.eval()


def _outputs(graph, x):
    return graph.run(x)[0]


def test_every_pass_keeps_the_outputs_and_its_input():
    graph = export_graph(_net(), (torch.randn(1, 3, 8, 8),))
    x = torch.randn(4, 3, 8, 8)
    for p in PASSES:
        before_nodes, before_params = list(graph.nodes), dict(graph.params)
        snapshot = copy.deepcopy(graph.nodes)
        after = p(graph)
        assert torch.allclose(_outputs(after, x), _outputs(graph, x), atol=1e-5), p.__name__
        assert graph.nodes == before_nodes == snapshot and graph.params.keys() == before_params.keys()
        graph = after


def test_drop_identities_removes_dropout():
    graph = export_graph(_net(), (torch.randn(1, 3, 8, 8),))
    assert "identity" in graph.op_counts()
    assert "identity" not in drop_identities(graph).op_counts()


def test_fold_batchnorm_folds_single_reader_layers_only():
    graph = drop_identities(export_graph(_net(), (torch.randn(1, 3, 8, 8),)))
    folded = fold_batchnorm(graph)
    assert graph.op_counts()["batch_norm"] == 3
    assert folded.op_counts()["batch_norm"] == 1          # bn2: its conv's output is read twice
    left = next(n for n in folded.nodes if n.op == "batch_norm")
    assert left.module == "bn2"


class _FusedQKV(nn.Module):
    """Self-attention with a fused query-key-value projection cut two ways."""

    def __init__(self, chunk: bool):
        super().__init__()
        self.chunk = chunk
        self.qkv = nn.Linear(8, 24)

    def forward(self, t):
        b, n, _ = t.shape
        if self.chunk:
            q, k, v = self.qkv(t).chunk(3, dim=-1)
        else:
            q, k, v = self.qkv(t).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
            q, k, v = (z.transpose(1, 2).reshape(b, n, 8) for z in (q, k, v))
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v


def test_split_fused_projections_gives_one_linear_per_part():
    from archnet.capture.passes import split_fused_projections
    torch.manual_seed(0)
    for chunk in (True, False):
        graph = drop_identities(export_graph(_FusedQKV(chunk).eval(), (torch.randn(1, 5, 8),)))
        assert {"select", "slice"} & set(graph.op_counts())
        snapshot = copy.deepcopy(graph.nodes)
        split = split_fused_projections(graph)
        counts = split.op_counts()
        assert not {"select", "slice"} & set(counts) and counts["linear"] == 3, counts
        assert graph.nodes == snapshot
        x = torch.randn(3, 5, 8)
        assert torch.allclose(split.run(x)[0], graph.run(x)[0], atol=1e-5)
        assert {n.module for n in split.nodes if n.op == "linear"} == {"qkv"}
