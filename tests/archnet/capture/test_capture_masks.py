"""A padding mask added to attention scores is captured as the softmax's key mask: the
captured graph equals the model on masks with dropped keys, none of the model's mask
arithmetic is left, and the converter plans the whole BERT encoder on a chip that runs
softmax with a mask (the embedding as one-hot x fully connected, LayerNorm as the paper's
fixed-statistics affine)."""

import pytest
import torch

from archnet.capture import capture
from archnet.rules import plan_conversion
from simulator.profiles import load_profile

transformers = pytest.importorskip("transformers")


class _Encoder(torch.nn.Module):
    def __init__(self, attention: str = "eager"):
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=32,
                                         max_position_embeddings=16,
                                         attn_implementation=attention)
        self.bert = transformers.BertModel(config, add_pooling_layer=False).eval()

    def forward(self, ids, mask):
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def encoder(request):
    """Both of transformers' attentions: written out, and torch's fused
    scaled_dot_product_attention with a boolean mask (decomposed at capture)."""
    model = _Encoder(request.param).eval()
    ids = torch.randint(0, 40, (1, 8))
    return model, capture(model, (ids, torch.ones(1, 8, dtype=torch.long)))


def test_the_mask_becomes_the_softmax_operand(encoder):
    model, graph = encoder
    softmaxes = [n for n in graph.nodes if n.op == "softmax"]
    assert len(softmaxes) == 2
    assert all(n.inputs[1] == graph.inputs[1] and n.attrs["key_mask"] for n in softmaxes)
    assert not [n for n in graph.nodes if n.op.startswith("aten.")], graph.op_counts()
    ids = torch.randint(0, 40, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    with torch.no_grad():
        want = model(ids, mask)
    assert torch.allclose(graph.run(ids, mask)[0], want, atol=1e-5)


def test_an_encoder_is_planned_without_host_ops(encoder):
    _, graph = encoder
    plan = plan_conversion(graph, load_profile("ethos-u55-128"), (8, 8))
    fired = plan.rules_fired()
    assert fired["softmax.native"] == 2 and fired["embedding.one_hot_fc"] == 1
    assert fired["layer_norm.fixed_affine"] == 5 and fired["gelu.native"] == 2
    assert not plan.student.fallbacks
