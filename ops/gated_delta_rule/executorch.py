"""The ExecuTorch lowerings of ``qwen35::gated_delta_rule``, one per kernel set of the `.pte`.

- "stock": `executorch_decomposition` over `delegable_gated_delta_rule`, the whole call as one chunk
  of dynamic length T, written for what XNNPACK delegates with a dynamic T;
- "llm": `executorch_llm_decomposition`, a call of ExecuTorch's own `llama::gated_delta_rule`.

Both take the op's schema signature and replace its node before `to_edge`. Not here: the math
and the reference forms (`ops.gated_delta_rule.reference`), the exporter (`exporter.executorch`).
"""

import torch

# XNNPACK has no delta-rule kernel, so for the stock kernels the exporter replaces the node by
# `executorch_decomposition` (ep.run_decompositions): `delegable_gated_delta_rule`, the whole
# sequence as one chunk of dynamic length T, written for what XNNPACK delegates with a dynamic T.
# XNNPACK takes bmm, elementwise math, clamp, permute, cat and reshapes whose shape is all ints
# (-1 for T); it refuses symbolic reshapes, slices of dynamic tensors, expand, cumsum, where and
# integer math. Each refused op between two delegated ones splits the delegate, and every split
# costs export time (each partition is traced and serialised on its own) and a runtime hand-off.
# So the T x T masks come from one float table of index pairs, by clamps, never by comparisons;
# the only portable ops are the index table, two cumsums and one row select, all tiny.
# No loop and nothing sized by the prefill bound: decode (T = 1) pays for 1 x 1 matrices.


def _pair_tables(steps_like: torch.Tensor):
    """Float [T, T] tables from the indices i (rows), j (cols) of a [.., T] tensor's last dim.

    Returns (diff, xor): i - j and i XOR j, as float32. Integer-valued, so clamps turn them into
    exact 0/1 masks.
    """
    index = torch.arange(steps_like.shape[-1], device=steps_like.device)  # [T]
    rows, cols = index.unsqueeze(1), index.unsqueeze(0)  # [T, 1], [1, T]
    return (rows - cols).float(), torch.bitwise_xor(rows, cols).float()


def _unit_lower_inverse_masked(a: torch.Tensor, xor: torch.Tensor, rounds: int) -> torch.Tensor:
    """(I + a)^-1 for strictly lower-triangular a [L, T, T], T <= 2**rounds, on unpadded T x T matrices.

    The block doubling of `reference.invert_unit_lower`, with the blocks picked by masks instead of
    reshapes: X_b, the inverse of the block-diagonal part of I + a with blocks of size b, becomes
    X_2b = X_b - X_b (a * N_b) X_b, where N_b keeps the entries (i, j) in one block of size 2b but
    in different blocks of size b, i.e. b <= i XOR j < 2b. Exact in exact arithmetic and as
    accurate as the block form in fp32 (the extra products are with exact zeros).
    """
    inv = (1.0 - xor).clamp(0.0, 1.0) - a * xor.clamp(0.0, 1.0) * (2.0 - xor).clamp(0.0, 1.0)  # [L, T, T]: b = 1
    for level in range(1, rounds):
        block = float(2**level)
        mask = (xor - (block - 1.0)).clamp(0.0, 1.0) * (2.0 * block - xor).clamp(0.0, 1.0)  # [T, T]: N_b
        inv = inv - torch.bmm(torch.bmm(inv, a * mask), inv)  # [L, T, T]
    return inv


def delegable_gated_delta_rule(q, k, v, g, beta, *, scale: float, initial_state, max_len: int):
    """The whole sequence as one chunk of dynamic length T <= max_len: the ExecuTorch form. Returns (out, state).

    Same math as `single_chunk_gated_delta_rule` (the chunk equations of `ops.gated_delta_rule.reference`
    with one chunk), built from ops XNNPACK delegates with a dynamic T (see the comment above). max_len
    (a power of two) only fixes the number of doubling rounds.
    """
    if max_len < 1 or max_len & (max_len - 1):
        raise ValueError(f"delegable_gated_delta_rule: max_len must be a power of two, got {max_len}.")
    out_dtype = v.dtype
    batch, _, heads, v_dim = v.shape
    k_heads, k_dim = k.shape[2:]
    groups = heads // k_heads
    if groups > 1:  # value head h reads key head h // groups: a cat of views, since XNNPACK has no expand
        q, k = (torch.cat([x.unsqueeze(3)] * groups, dim=3).view(batch, -1, heads, k_dim) for x in (q, k))
    lanes = batch * heads
    heads_first = lambda x: x.float().permute(0, 2, 1, 3).reshape(lanes, -1, x.shape[-1])  # noqa: E731
    q, k, v = heads_first(q), heads_first(k), heads_first(v)  # [L, T, D]
    g, beta = (x.float().permute(0, 2, 1).reshape(lanes, -1) for x in (g, beta))  # [L, T]
    # The state enters every product as S^T [L, Dv, Dk], the left operand: XNNPACK packs the right
    # operand of a batched matmul on each call, which for the 1 MB state cost more than the product.
    # The caller's [B, H, Dk, Dv] state comes in and goes out through a transpose; ExecuTorch's
    # decoder keeps its buffer as S^T so that the two transposes meet and cancel (`exporter.executorch.fold_round_trips`).
    state_t = initial_state.float().transpose(-1, -2).reshape(lanes, v_dim, k_dim)  # [L, Dv, Dk]: S^T

    diff, xor = _pair_tables(g)  # [T, T] each
    lower = diff.clamp(0.0, 1.0)  # [T, T]: i > j
    # [i, j] = g_(j+1) + ... + g_i for j < i, else 0: Mamba-2's segment sum (see `reference.segment_sums`).
    sums = (g.unsqueeze(-1) * lower).cumsum(dim=-2)  # [L, T, T]
    decay = sums.exp() * (diff + 1.0).clamp(0.0, 1.0)  # [L, T, T]: D_ij, zero above the diagonal
    from_start = g.cumsum(dim=-1).exp().unsqueeze(-1)  # [L, T, 1]: exp(gamma_i)
    to_end = sums.select(1, -1).exp().unsqueeze(-1)  # [L, T, 1]: exp(gamma_T - gamma_j)

    k_beta = k * beta.unsqueeze(-1)  # [L, T, Dk]
    a = torch.bmm(k_beta, k.transpose(1, 2)) * decay * lower  # [L, T, T]: strictly lower
    inv = _unit_lower_inverse_masked(a, xor, max(1, max_len.bit_length() - 1))  # [L, T, T]
    u = torch.bmm(inv, v * beta.unsqueeze(-1))  # [L, T, Dv]
    w = torch.bmm(inv, k_beta * from_start)  # [L, T, Dk]
    attn = torch.bmm(q, k.transpose(1, 2)) * (decay * scale)  # [L, T, T]
    delta_t = u.transpose(1, 2) - torch.bmm(state_t, w.transpose(1, 2))  # [L, Dv, T]
    out_t = torch.bmm(state_t, (q * (from_start * scale)).transpose(1, 2)) + torch.bmm(delta_t, attn.transpose(1, 2))  # [L, Dv, T]
    state_t = state_t * from_start[:, -1:] + torch.bmm(delta_t, k * to_end)  # [L, Dv, Dk]
    out = out_t.view(batch, heads, v_dim, -1).permute(0, 3, 1, 2)  # [B, T, H, Dv]
    return out.to(out_dtype), state_t.view(batch, heads, v_dim, k_dim).transpose(-1, -2)


def executorch_decomposition(q, k, v, g, beta, scale, initial_state, *, max_len: int):
    """The op's schema signature over `delegable_gated_delta_rule`; bind max_len with functools.partial."""
    if initial_state is None:
        initial_state = v.new_zeros(v.shape[0], v.shape[2], k.shape[-1], v.shape[-1], dtype=torch.float32)
    return delegable_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state, max_len=max_len)


# ExecuTorch, kernels "llm": ExecuTorch's own recurrent kernel `llama::gated_delta_rule`, from the LLM
# custom-ops library its LLM runners and Android/iOS LLM packages link (extension/llm/custom_ops).
# One native call per layer and token chunk instead of the delegable form's ~300 small XNNPACK ops,
# which at T = 1 cost more in per-op overhead than the math. Its kernel is single-threaded and
# token-by-token, so it pays at prefill what it saves at decode (bench/bench_quant.py measures both).
# Its signature: q (already scaled), k [B, H, T, Dk], v [B, H, T, Dv], decay = exp(g) and beta
# [B, H, T], state [B, H, Dk, Dv] -> (out [B, H, T, Dv], new state); the state is S, not S^T.


def executorch_llm_decomposition(q, k, v, g, beta, scale, initial_state):
    """The op's schema signature over `llama::gated_delta_rule` (the ExecuTorch LLM custom-ops kernel)."""
    batch, _, heads, v_dim = v.shape
    k_heads, k_dim = k.shape[2:]
    groups = heads // k_heads
    if groups > 1:  # value head h reads key head h // groups
        q, k = (torch.cat([x.unsqueeze(3)] * groups, dim=3).view(batch, -1, heads, k_dim) for x in (q, k))
    heads_first = lambda x: x.float().transpose(1, 2).clone(memory_format=torch.contiguous_format)  # noqa: E731
    if initial_state is None:
        initial_state = v.new_zeros(batch, heads, k_dim, v_dim, dtype=torch.float32)
    out, state = torch.ops.llama.gated_delta_rule.default(
        heads_first(q * scale), heads_first(k), heads_first(v), heads_first(g.exp()), heads_first(beta),
        initial_state.float())
    return out.transpose(1, 2).to(v.dtype), state  # [B, T, H, Dv], [B, H, Dk, Dv]
