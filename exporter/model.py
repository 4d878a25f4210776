"""The reference Qwen3.5 decoder in PyTorch: the exporter's input and the parity oracle of every artifact.

Each layer's kind comes from `config.layer_types[i]`: Gated DeltaNet
(`linear_attention`) or gated GQA attention (`full_attention`); the MLP is
SwiGLU or a sparse MoE with a shared expert. The three stateful or routed
computations go through the `qwen35::` custom ops (`ops/`), the one seam the
lowerings replace. The model is functional in its state: `forward` takes the
per-layer state and returns the next one, so the same code serves eager
reference runs, ExecuTorch's mutable buffers and ONNX's explicit state I/O.

Not here: the vision tower (only `splice_image_embeds`, which puts its output into a prompt), checkpoint loading (`exporter.checkpoint`), sampling.

Shapes: B batch, T new tokens, P tokens already in the cache, D hidden,
H/Hkv attention heads/KV heads of size Dh, Hk/Hv DeltaNet key/value heads of
size Dk/Dv, C conv channels, K conv taps, V vocab.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ops
from runtime.config import FULL, TextConfig
from runtime.contract import state_names, state_shape

# Per layer: (conv_state [B, C, K-1], recurrent_state [B, Hv, Dk, Dv] fp32) for DeltaNet layers,
# (key [B, Hkv, P, Dh], value [B, Hkv, P, Dh]) for attention layers.
LayerState = tuple[Tensor, Tensor]


@dataclass
class ForwardOutput:
    logits: Tensor  # [B, T, V]
    state: list[LayerState]
    hidden_states: list[Tensor] | None = None  # the embeddings, then every layer's output: [B, T, D] each


def mean_last(x: Tensor) -> Tensor:
    """mean(x, dim=-1, keepdim=True), taken as a mean over the last two dims of a [1, N, D, 1] view.

    The same numbers; the 4-D form is the one mean XNNPACK delegates (a rank-3 mean would fall back
    to a portable kernel and split the ExecuTorch delegate at every norm). The views spell the token
    dim as -1 so that they stay static-shaped when T is dynamic.
    """
    mean = x.reshape(1, -1, x.shape[-1], 1).mean(dim=(-2, -1), keepdim=True)  # [1, N, 1, 1]
    return mean.reshape(-1, 1) if x.dim() == 2 else mean.reshape(x.shape[0], -1, *x.shape[2:-1], 1)  # [..., 1]


def splice_image_embeds(embeds: Tensor, ids: Tensor, image_embeds: Tensor, image_token_id: int) -> Tensor:
    """embeds [B, T, D] with the k-th `image_token_id` of ids [B, T] (row-major) replaced by image_embeds[k].

    image_embeds [N, D] holds at least as many rows as ids has image tokens. Tensor ops only
    (a cumulative count and a gather), so the exported decoders take image embeddings next to
    the token ids: text embeddings come from the graph's own table, never a host-side copy.
    """
    is_image = (ids == image_token_id).reshape(-1).to(torch.long)  # [B T]
    index = (torch.cumsum(is_image, 0) * is_image).view(ids.shape)  # [B, T]: 0 for text, k for image token k
    table = torch.cat([image_embeds.new_zeros(1, embeds.shape[-1]), image_embeds.to(embeds.dtype)])  # [N + 1, D]
    return torch.where(index.unsqueeze(-1) > 0, F.embedding(index, table), embeds)


def mean_square(x: Tensor) -> Tensor:
    """mean(x², dim=-1, keepdim=True) in mean_last's XNNPACK-friendly form."""
    return mean_last(x * x)


class RMSNorm(nn.Module):
    """Zero-centred RMSNorm of the decoder: `x̂ * (1 + w)`, computed in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(mean_square(xf) + self.eps)
        return (xf * (1.0 + self.weight.float())).type_as(x)


class GatedRMSNorm(nn.Module):
    """DeltaNet's output norm, not zero-centred: `(x̂ * w) * silu(z)`."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(mean_square(xf) + self.eps)
        # The weight multiplies in the input dtype, the gate in fp32: the checkpoints were trained so.
        out = self.weight * xf.to(x.dtype)
        return (out * F.silu(z.float())).to(x.dtype)


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """`x / sqrt(|x|² + eps)` in fp32, the DeltaNet q/k normalisation of the checkpoints."""
    x = x.float()
    return x * torch.rsqrt(mean_square(x) * x.shape[-1] + eps)  # the sum as D x mean: see mean_square


class GatedDeltaNet(nn.Module):
    """Linear attention with the gated delta rule; state = (conv taps, recurrent matrix)."""

    def __init__(self, t: TextConfig):
        super().__init__()
        self.hk, self.hv = t.linear_num_key_heads, t.linear_num_value_heads
        self.dk, self.dv = t.linear_key_head_dim, t.linear_value_head_dim
        key_dim, value_dim = self.hk * self.dk, self.hv * self.dv
        self.in_proj_qkv = nn.Linear(t.hidden_size, t.conv_dim, bias=False)
        self.in_proj_z = nn.Linear(t.hidden_size, value_dim, bias=False)
        self.in_proj_b = nn.Linear(t.hidden_size, self.hv, bias=False)
        self.in_proj_a = nn.Linear(t.hidden_size, self.hv, bias=False)
        self.conv1d = nn.Conv1d(t.conv_dim, t.conv_dim, t.linear_conv_kernel_dim, groups=t.conv_dim, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(self.hv))
        self.A_log = nn.Parameter(torch.zeros(self.hv))
        self.norm = GatedRMSNorm(self.dv, t.rms_norm_eps)
        self.out_proj = nn.Linear(value_dim, t.hidden_size, bias=False)
        self.split = (key_dim, key_dim, value_dim)

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        B, T, _ = x.shape
        conv_state, recurrent_state = state
        qkv, conv_state = ops.causal_conv1d(
            self.in_proj_qkv(x), self.conv1d.weight.squeeze(1), initial_state=conv_state
        )  # [B, T, C]
        q, k, v = torch.split(qkv, self.split, dim=-1)
        q = l2norm(q.reshape(B, T, self.hk, self.dk))  # [B, T, Hk, Dk] fp32
        k = l2norm(k.reshape(B, T, self.hk, self.dk))  # [B, T, Hk, Dk] fp32
        v = v.reshape(B, T, self.hv, self.dv)  # [B, T, Hv, Dv]
        beta = self.in_proj_b(x).sigmoid()  # [B, T, Hv]
        # Log-decay in fp32: exp(A_log) overflows fp16 for the larger heads.
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(x).float() + self.dt_bias)  # [B, T, Hv]
        out, recurrent_state = ops.gated_delta_rule(
            q, k, v, g, beta, scale=self.dk**-0.5, initial_state=recurrent_state
        )  # [B, T, Hv, Dv]
        z = self.in_proj_z(x).reshape(B, T, self.hv, self.dv)  # [B, T, Hv, Dv]
        out = self.norm(out, z).reshape(B, T, -1)  # [B, T, Hv*Dv]
        return self.out_proj(out), (conv_state, recurrent_state)


class Rotary(nn.Module):
    """Partial (M-)RoPE: the first `rotary_dim` dims of each head rotate; positions are (t, h, w).

    The frequency tables are tiny and rebuilt in forward from Python numbers rather than kept as
    buffers: they trace as graph constants, not weights, and nothing is stored for the full context.
    """

    def __init__(self, t: TextConfig):
        super().__init__()
        half = t.rotary_dim // 2
        self.inv_freq = [1.0 / (t.rope_theta ** (2 * i / t.rotary_dim)) for i in range(half)]
        self.axis = _mrope_axis(half, t.mrope_section, t.mrope_interleaved)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions [3, B, T] (t, h, w) -> cos, sin [B, T, rotary_dim]."""
        inv_freq = torch.tensor(self.inv_freq, dtype=torch.float32, device=positions.device)
        freqs = positions[..., None].float() * inv_freq  # [3, B, T, half]
        axis = torch.tensor(self.axis, device=positions.device)
        index = axis.view(1, 1, 1, -1).expand(1, *freqs.shape[1:])
        freqs = freqs.gather(0, index)[0]  # [B, T, half]: each frequency from its own axis
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, rotary_dim]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _mrope_axis(half: int, section: tuple[int, ...], interleaved: bool) -> list[int]:
    """Which position axis (0 t, 1 h, 2 w) drives each rotary frequency.

    Interleaved (Qwen3.5): t h w t h w ... with h and w limited to 3*section[i]
    frequencies. Otherwise contiguous blocks of section[0], section[1], section[2].
    With text-only positions all three axes agree, so the map only matters for images.
    """
    axis = [0] * half
    if not section:
        return axis
    if interleaved:
        for dim in (1, 2):
            for i in range(dim, min(section[dim] * 3, half), 3):
                axis[i] = dim
    else:
        start = section[0]
        for dim in (1, 2):
            axis[start : start + section[dim]] = [dim] * section[dim]
            start += section[dim]
    return axis


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, heads_first: bool = True) -> Tensor:
    """x [B, H, T, Dh] (or [B, T, H, Dh] with heads_first=False); cos/sin [B, T, R]: rotate the first R dims."""
    r = cos.shape[-1]
    cos, sin = (cos[:, None], sin[:, None]) if heads_first else (cos[:, :, None], sin[:, :, None])  # 1 for the heads
    if r == x.shape[-1]:  # the whole head rotates (the vision tower): no empty pass-through slice
        x1, x2 = x[..., : r // 2], x[..., r // 2 :]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin
    rot, rest = x[..., :r], x[..., r:]
    x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]
    rotated = torch.cat((-x2, x1), dim=-1)
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


class Attention(nn.Module):
    """GQA with q/k RMSNorm, partial rotary and a sigmoid output gate; state = the KV cache."""

    def __init__(self, t: TextConfig):
        super().__init__()
        self.h, self.hkv, self.dh = t.num_attention_heads, t.num_key_value_heads, t.head_dim
        self.q_proj = nn.Linear(t.hidden_size, self.h * self.dh * 2, bias=False)  # query and gate per head
        self.k_proj = nn.Linear(t.hidden_size, self.hkv * self.dh, bias=False)
        self.v_proj = nn.Linear(t.hidden_size, self.hkv * self.dh, bias=False)
        self.o_proj = nn.Linear(self.h * self.dh, t.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.dh, t.rms_norm_eps)
        self.k_norm = RMSNorm(self.dh, t.rms_norm_eps)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor],
                state: LayerState | StaticKV | FusedKV) -> tuple[Tensor, LayerState | StaticKV]:
        B, T, _ = x.shape
        q, gate = self.q_proj(x).view(B, T, self.h, 2 * self.dh).chunk(2, dim=-1)  # [B, T, H, Dh] each
        q = self.q_norm(q)  # [B, T, H, Dh]
        k = self.k_norm(self.k_proj(x).view(B, T, self.hkv, self.dh))  # [B, T, Hkv, Dh]
        v = self.v_proj(x).view(B, T, self.hkv, self.dh)  # [B, T, Hkv, Dh]
        if isinstance(state, FusedKV):  # the cache runs the attention core, token-major
            q, k = apply_rotary(q, *rope, heads_first=False), apply_rotary(k, *rope, heads_first=False)
            out, next_state = state.attend(q, k, v)  # [B, T, H*Dh]
            return self.o_proj(out * torch.sigmoid(gate.reshape(B, T, -1))), next_state
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, Dh]
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if isinstance(state, StaticKV):
            keys, values, mask = state.update(k, v)  # [B, Hkv, S, Dh] x 2, [T, S]
            next_state = state
        else:
            keys = torch.cat((state[0], k), dim=2)  # [B, Hkv, P+T, Dh]
            values = torch.cat((state[1], v), dim=2)  # [B, Hkv, P+T, Dh]
            mask = causal_mask(keys.shape[2] - T, T, x.device)  # [T, P+T]
            next_state = (keys, values)
        # Query head i reads KV head i // rep. The rep query heads of a KV head go in as T*rep rows
        # (token-major) against the unexpanded cache: expanding the cache to H heads copied it every
        # step. Token-major, and written out rather than through SDPA: with head-major rows or SDPA's
        # output strides, torch.export cannot prove the view back to heads valid for every dynamic T.
        # 3-D bmm on [B*Hkv, ...] views, not a 4-D matmul: aten wraps that in an expand and a view of the
        # whole cache, which ExecuTorch runs as a copy of every cache, every call, outside XNNPACK.
        rep, S = self.h // self.hkv, keys.shape[2]
        rows = q.view(B, self.hkv, rep, T, self.dh).transpose(2, 3).reshape(B * self.hkv, -1, self.dh)  # [B*Hkv, T*rep, Dh]
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))  # [T, S]
        bias = bias.unsqueeze(1).expand(-1, rep, -1).reshape(-1, S)  # [T*rep, S]
        keys, values = (c.reshape(B * self.hkv, S, self.dh) for c in (keys, values))  # [B*Hkv, S, Dh]
        scores = torch.bmm(rows, keys.transpose(1, 2)) * self.dh**-0.5 + bias  # [B*Hkv, T*rep, S]
        out = torch.bmm(torch.softmax(scores.float(), dim=-1).to(values.dtype), values)  # [B*Hkv, T*rep, Dh]
        out = out.view(B, self.hkv, -1, rep * self.dh).transpose(1, 2).reshape(B, T, -1)  # [B, T, H*Dh]
        out = out * torch.sigmoid(gate.reshape(B, T, -1))
        return self.o_proj(out), next_state


def causal_mask(past: int, steps: int, device) -> Tensor:
    """[T, P+T] bool: new token i, at cache index past+i, sees cache entries 0..past+i."""
    return torch.arange(past + steps, device=device)[None, :] <= (past + torch.arange(steps, device=device))[:, None]


class StaticKV(abc.ABC):
    """A fixed-capacity KV cache written in place (ExecuTorch's mutable buffers), instead of a growing pair.

    Subclasses implement `update(k, v) -> (keys, values, mask)`: store the T new entries and return
    the whole cache with the [T, S] mask of what each new token may see.
    """

    @abc.abstractmethod
    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """k, v [B, Hkv, T, Dh] -> keys, values [B, Hkv, S, Dh] and mask [T, S]."""


class FusedKV(abc.ABC):
    """A KV cache that also runs the attention core over itself (the ONNX decoder's, on GroupQueryAttention).

    `attend(q, k, v)`, token-major q [B, T, H, Dh] and k, v [B, T, Hkv, Dh] with rotary applied,
    stores the new entries and returns the attention output [B, T, H*Dh] (before the output gate)
    and the layer's next state.
    """

    @abc.abstractmethod
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, LayerState]:
        """q [B, T, H, Dh], k, v [B, T, Hkv, Dh] -> out [B, T, H*Dh], next state."""


class MLP(nn.Module):
    """SwiGLU."""

    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    def __init__(self, hidden: int, num_experts: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_experts, hidden))  # [E, D]


class Experts(nn.Module):
    """Expert weights stored fused, as transformers holds them: [E, 2I, D] and [E, D, I]."""

    def __init__(self, hidden: int, ffn: int, num_experts: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.zeros(num_experts, 2 * ffn, hidden))
        self.down_proj = nn.Parameter(torch.zeros(num_experts, hidden, ffn))


class SparseMoe(nn.Module):
    """Top-k routed experts plus a sigmoid-gated shared expert, through `qwen35::moe`."""

    def __init__(self, t: TextConfig):
        super().__init__()
        moe = t.moe
        self.top_k, self.norm_topk_prob = moe.num_experts_per_tok, moe.norm_topk_prob
        self.gate = Router(t.hidden_size, moe.num_experts)
        self.experts = Experts(t.hidden_size, moe.moe_intermediate_size, moe.num_experts)
        self.shared_expert = MLP(t.hidden_size, moe.shared_expert_intermediate_size)
        self.shared_expert_gate = nn.Linear(t.hidden_size, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        shared = self.shared_expert
        return ops.moe(
            x,
            self.gate.weight,
            self.experts.gate_up_proj,
            self.experts.down_proj,
            shared.gate_proj.weight,
            shared.up_proj.weight,
            shared.down_proj.weight,
            self.shared_expert_gate.weight,
            top_k=self.top_k,
            norm_topk_prob=self.norm_topk_prob,
        )


class DecoderLayer(nn.Module):
    def __init__(self, t: TextConfig, kind: str):
        super().__init__()
        self.kind = kind
        if kind == FULL:
            self.self_attn = Attention(t)
        else:
            self.linear_attn = GatedDeltaNet(t)
        self.mlp = SparseMoe(t) if t.moe else MLP(t.hidden_size, t.intermediate_size)
        self.input_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], state: LayerState) -> tuple[Tensor, LayerState]:
        h = self.input_layernorm(x)
        if self.kind == FULL:
            h, state = self.self_attn(h, rope, state)
        else:
            h, state = self.linear_attn(h, state)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), state


class Qwen35Model(nn.Module):
    """The text decoder with its LM head. Parameter names follow the text-only HF layout minus `model.`."""

    def __init__(self, t: TextConfig):
        super().__init__()
        self.config = t
        self.embed_tokens = nn.Embedding(t.vocab_size, t.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(t, kind) for kind in t.layer_types)
        self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps)
        self.rotary = Rotary(t)
        self.lm_head = nn.Linear(t.hidden_size, t.vocab_size, bias=False)
        if t.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def init_state(self, batch: int = 1, dtype: torch.dtype | None = None) -> list[LayerState]:
        """An empty state: zero conv taps and recurrent matrices, KV caches of length 0."""
        t, dtype = self.config, dtype or self.embed_tokens.weight.dtype
        device = self.embed_tokens.weight.device
        flat = [torch.zeros(state_shape(t, part, batch=batch), device=device,
                            dtype=torch.float32 if part == "recurrent" else dtype)  # the recurrence runs in fp32
                for _, part in state_names(t)]
        return list(zip(flat[::2], flat[1::2], strict=True))  # one (key, value) or (conv, recurrent) pair a layer

    def forward(
        self,
        input_ids: Tensor | None = None,
        state: list[LayerState] | None = None,
        *,
        positions: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        output_hidden_states: bool = False,
        last_only: bool = False,
    ) -> ForwardOutput:
        """Run T new tokens (ids [B, T] or embeddings [B, T, D]) after `state`.

        positions: [B, T] or M-RoPE [3, B, T]; by default the tokens continue the
        cached sequence. Returns logits for every new token ([B, T, V]), or only
        for the last one ([B, 1, V]) with `last_only`: what a decoder needs to pick
        the next token, and T times less LM-head work in a prefill.
        """
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, D]
        B, T, _ = x.shape
        state = self.init_state(B, x.dtype) if state is None else state
        positions = self._positions(positions, state, B, T, x.device)  # [3, B, T]
        rope = self.rotary(positions, x.dtype)
        hidden = [x] if output_hidden_states else None
        next_state = []
        for layer, layer_state in zip(self.layers, state, strict=True):
            x, layer_state = layer(x, rope, layer_state)
            next_state.append(layer_state)
            if hidden is not None:
                hidden.append(x)
        if last_only:
            x = x[:, -1:]  # [B, 1, D]
        logits = self.lm_head(self.norm(x))  # [B, T or 1, V]
        return ForwardOutput(logits, next_state, hidden)

    def _positions(self, positions: Tensor | None, state: list[LayerState], B: int, T: int, device) -> Tensor:
        if positions is None:
            past = next((s[0].shape[2] for s, kind in zip(state, self.config.layer_types) if kind == FULL), 0)
            positions = torch.arange(past, past + T, device=device).expand(B, T)
        if positions.dim() == 2:
            positions = positions.expand(3, B, T)
        return positions
