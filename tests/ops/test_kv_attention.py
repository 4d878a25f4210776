"""qwen35::kv_attention: an attention layer on a capacity cache equals the same layer on a growing cache.

The layer is the model's own (`exporter.model.Attention`): with a `CapacityKV` state it rotates
q and k token-major and calls the op; with a (keys, values) state it runs the written-out math.
"""

import pytest
import torch

from exporter.config import preset
from exporter.model import Attention, Rotary
from exporter.onnx import CapacityKV
from ops.kv_attention import kv_attention

# fp32: the same products summed in another order (a batched matmul against a per-sequence one), observed ~1e-7.
FP32_ATOL = 1e-5
CAPACITY = 24


def layer_and_rotary():
    torch.manual_seed(0)
    text = preset("tiny").text
    layer = Attention(text).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return text, layer, Rotary(text)


@torch.no_grad()
@pytest.mark.parametrize("batch, chunks", [(1, (5, 3, 1, 1)), (2, (6, 1, 1))])
def test_a_capacity_cache_attends_as_a_growing_one(batch, chunks):
    text, layer, rotary = layer_and_rotary()
    hkv, dh = text.num_key_value_heads, text.head_dim
    grown = (torch.zeros(batch, hkv, 0, dh), torch.zeros(batch, hkv, 0, dh))
    buffers = (torch.zeros(batch, hkv, CAPACITY, dh), torch.zeros(batch, hkv, CAPACITY, dh))
    start = 0
    for steps in chunks:
        x = torch.randn(batch, steps, text.hidden_size)
        rope = rotary((start + torch.arange(steps)).expand(3, batch, steps), x.dtype)
        expected, grown = layer(x, rope, grown)
        mask = torch.ones(batch, start + steps, dtype=torch.long)
        actual, buffers = layer(x, rope, CapacityKV(*buffers, mask))
        start += steps
        torch.testing.assert_close(actual, expected, atol=FP32_ATOL, rtol=0)
        for cache, reference in zip(buffers, grown, strict=True):
            torch.testing.assert_close(cache[:, :, :start], reference, atol=0, rtol=0)  # the same entries, copied
            assert not cache[:, :, start:].any()  # slots past the held tokens untouched


def test_a_cache_too_small_for_the_call_is_refused_by_name():
    q, k = torch.zeros(1, 3, 4, 8), torch.zeros(1, 3, 2, 8)
    cache = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ValueError, match="would hold 6 tokens after 3 new ones, outside 3..4"):
        kv_attention(q, k, k, cache, cache, torch.ones(1, 6, dtype=torch.long))


def test_opcheck():
    q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 2, 8)
    cache = torch.zeros(1, 2, 6, 8)
    torch.library.opcheck(torch.ops.qwen35.kv_attention.default, (q, k, k.clone(), cache, cache.clone(),
                                                                  torch.ones(1, 3, dtype=torch.long)))
