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
