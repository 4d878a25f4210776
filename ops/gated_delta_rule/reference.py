"""The math of ``qwen35::gated_delta_rule`` and its pure-PyTorch forms, oracle beside the chunked forms.

- `recurrent_gated_delta_rule`: the token-by-token oracle, also the eager kernel's decode step;
- `chunked_gated_delta_rule`: the chunked form, the eager kernel's prefill;
- `single_chunk_gated_delta_rule`: the whole call as one chunk of dynamic length, with no loop
  (the portable ONNX profile's prefill branch, `ops.gated_delta_rule.onnx`).

Not here: the op's schema and kernels (`ops.gated_delta_rule`), the ExecuTorch form built from the
ops XNNPACK delegates (`ops.gated_delta_rule.executorch`).

Shapes: B batch, T time, Hk query/key heads, Hv value heads (a multiple of Hk), Dk key dim, Dv value dim.
q, k ``[B, T, Hk, Dk]``; v ``[B, T, Hv, Dv]``; g, beta ``[B, T, Hv]``; state ``[B, Hv, Dk, Dv]``.

Math
----
Value head h reads q/k head ``h // (Hv // Hk)``. q and k arrive L2-normalised; the op scales q.
With S the ``[Dk, Dv]`` state of one head, each step t does (g is the log-decay, g <= 0)::

    S      <- exp(g_t) S
    delta  =  beta_t (v_t - S^T k_t)          # the delta rule: write only what S mispredicts
    S      <- S + k_t delta^T
    o_t    =  S^T (scale q_t)

Chunked (WY / UT-transform) form. Cut time into chunks of C steps, S_0 the state entering a chunk,
gamma_i = g_1 + ... + g_i the decay accumulated inside it, and D_ij = exp(gamma_i - gamma_j) for
j <= i. Unrolling the recurrence inside the chunk gives a unit lower-triangular system for the deltas::

    (I + A) Delta = beta V - beta exp(gamma) K S_0,      A_ij = beta_i D_ij k_i.k_j  (j < i)
    Delta = U - W S_0,   U = (I + A)^-1 beta V,   W = (I + A)^-1 beta exp(gamma) K
    O     = exp(gamma) Q S_0 + ((Q K^T) * D, causal) Delta
    S_C   = exp(gamma_C) S_0 + (exp(gamma_C - gamma) K)^T Delta

Everything but the short loop over chunks is batched matmuls.

Inverting I + A. A is strictly lower triangular, hence nilpotent, so (I + A)^-1 equals the Neumann
product (I - A)(I + A^2)(I + A^4)... with log2(C) factors. That product is exact algebraically but
not in floating point: its factors hold powers of A whose entries grow like binomial coefficients
when keys are correlated, and the alternating sum then cancels catastrophically (fp32, keys
sharing one direction, beta ~0.95: max error 4e-5 at C = 16, 0.4 at C = 32, 4e7 at C = 64 on an
inverse whose entries are <= 1; see tests/ops/test_gated_delta_rule.py). We use the other
log2(C)-step, matmul-only inverse instead: recursive doubling on diagonal blocks,
[[T11, 0], [-T22 A21 T11, T22]] for block sizes 1, 2, 4, ..., C/2. It is as accurate as
torch.linalg.solve_triangular (~1e-7), needs no per-row loop, and lowers to batched matmuls
(XNNPACK). C must therefore be a power of two.

Numerics. All math is fp32 whatever the input dtype; out is cast back to v's dtype, the state stays
fp32. Decays are exponentiated only where they are products of steps, i.e. exp of sums of g <= 0:
D_ij comes from segment sums g_(j+1) + ... + g_i (computed directly, not as a difference of two large
cumulative sums, which would lose the small ones when |g| is large) and is masked to -inf above the
diagonal before exp. So large |g| underflows to 0 instead of overflowing, and g = 0 gives exactly 1.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import statically_known_true

DEFAULT_CHUNK_SIZE = 32  # fastest at T = 128, 512 and 2048 in bench/bench_gated_delta_rule.py


def _heads_first_fp32(q, k, v, g, beta, scale: float):
    """Repeat q/k heads for grouped values, move heads before time, and go to fp32."""
    groups = v.shape[2] // k.shape[2]
    q = q.repeat_interleave(groups, dim=2) if groups > 1 else q  # [B, T, Hv, Dk]
    k = k.repeat_interleave(groups, dim=2) if groups > 1 else k  # [B, T, Hv, Dk]
    # One copy into heads-first memory here (clone, not contiguous(): no shape guard under export)
    # saves a copy inside every matmul that reads these.
    heads_first = lambda x: x.transpose(1, 2).float().clone(memory_format=torch.contiguous_format)  # noqa: E731
    q, k, v = (heads_first(x) for x in (q, k, v))  # [B, Hv, T, D]
    g, beta = (heads_first(x) for x in (g, beta))  # [B, Hv, T]
    return q * scale, k, v, g, beta


def _start_state(initial_state: Optional[torch.Tensor], k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The fp32 state to start from; k [B, H, ..., Dk] and v [B, H, ..., Dv] are heads-first."""
    if initial_state is not None:
        return initial_state.float()  # [B, H, Dk, Dv]
    return v.new_zeros(v.shape[0], v.shape[1], k.shape[-1], v.shape[-1])  # [B, H, Dk, Dv]




def recurrent_gated_delta_rule(q, k, v, g, beta, *, scale: float, initial_state: Optional[torch.Tensor]):
    """Token-by-token oracle (and the decode path): one state update per step. Returns (out, state)."""
    out_dtype = v.dtype
    q, k, v, g, beta = _heads_first_fp32(q, k, v, g, beta, scale)  # [B, Hv, T, D], [B, Hv, T]
    state = _start_state(initial_state, k, v)  # [B, Hv, Dk, Dv]
    outs = []
    for t in range(q.shape[2]):
        state = state * g[:, :, t, None, None].exp()  # [B, Hv, Dk, Dv]
        k_t = k[:, :, t, None, :]  # [B, Hv, 1, Dk]
        delta = beta[:, :, t, None, None] * (v[:, :, t, None, :] - k_t @ state)  # [B, Hv, 1, Dv]
        state = state + k_t.transpose(-1, -2) @ delta  # [B, Hv, Dk, Dv]
        outs.append(q[:, :, t, None, :] @ state)  # [B, Hv, 1, Dv]
    return torch.cat(outs, dim=2).transpose(1, 2).to(out_dtype), state  # [B, T, Hv, Dv], [B, Hv, Dk, Dv]


def segment_sums(g: torch.Tensor) -> torch.Tensor:
    """[..., C] -> [..., C, C] with [i, j] = g[j+1] + ... + g[i] for j <= i and -inf above the diagonal.

    Summed directly per segment (Mamba-2's segsum), not as cumsum[i] - cumsum[j]: with large |g| the
    cumulative sums are large and their difference would lose the small steps in between.
    """
    size = g.shape[-1]
    above = torch.ones(size, size, dtype=torch.bool, device=g.device).triu(1)
    steps = g.unsqueeze(-1).expand(*g.shape, size).tril(-1)  # [..., C, C]: [i, j] = g_i where i > j, else 0
    sums = steps.cumsum(dim=-2)  # [..., C, C]: [i, j] = sum of g_l over j < l <= i
    return sums.masked_fill(above, float("-inf"))


def invert_unit_lower(a: torch.Tensor) -> torch.Tensor:
    """(I + a)^-1 for strictly lower-triangular a [..., C, C], C a power of two, by recursive doubling.

    inv holds the inverses of the diagonal blocks of I + a, first of size 1 (all ones), then 2, 4, ...:
    two neighbours T11, T22 with the block A21 between them merge into [[T11, 0], [-T22 A21 T11, T22]].
    log2(C) rounds of batched matmuls; no per-row loop (see the module docstring for why not the
    Neumann product).
    """
    size = a.shape[-1]
    lead = a.shape[:-2]
    a = a.reshape(-1, size, size)  # [L, C, C]: at most 5-D below (XNNPACK takes up to 6 dims)
    inv = a.new_ones(a.shape[0], size, 1, 1)  # [L, C, 1, 1]
    block = 1
    while block < size:
        pairs = size // (2 * block)
        diagonal = a.unflatten(-1, (pairs, 2 * block)).unflatten(-3, (pairs, 2 * block))  # [..., P, 2b, P, 2b]
        diagonal = diagonal.diagonal(dim1=-4, dim2=-2).movedim(-1, -3)  # [..., P, 2b, 2b]
        a21 = diagonal[..., block:, :block]  # [..., P, b, b]
        inv = inv.unflatten(-3, (pairs, 2))  # [..., P, 2, b, b]
        t11, t22 = inv[..., 0, :, :], inv[..., 1, :, :]  # [..., P, b, b]
        # 3-D bmm, not a 5-D matmul: aten would expand + view around it, and XNNPACK takes neither.
        flat = (-1, block, block)
        t21 = -torch.bmm(torch.bmm(t22.reshape(flat), a21.reshape(flat)), t11.reshape(flat))  # [L*P, b, b]
        t21 = t21.view(t11.shape)  # [L, P, b, b]
        top = torch.cat([t11, torch.zeros_like(t11)], dim=-1)  # [..., P, b, 2b]
        inv = torch.cat([top, torch.cat([t21, t22], dim=-1)], dim=-2)  # [..., P, 2b, 2b]
        block *= 2
    return inv.squeeze(-3).reshape(*lead, size, size)  # [..., C, C]


def solve_unit_lower_padded(a: torch.Tensor, *rhs: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """(I + a)^-1 @ x for each x in rhs, a [..., C, C] strictly lower triangular with a dynamic C <= size.

    a and the right-hand sides are zero-padded to `size` rows; since the matrix is lower triangular,
    the first C rows of the padded solution are the solution. The doubling rounds are fixed by `size`,
    so this exports with a dynamic C, at the cost of a size x size inverse whatever C is. Only leading
    rows are gathered (index_select, not a slice: a sliced view is contiguous only when C == size,
    and export would guard on that).
    """
    steps = a.shape[-1]
    rows = torch.arange(steps, device=a.device)
    inv = invert_unit_lower(F.pad(a, (0, size - steps, 0, size - steps)))  # [..., size, size]
    return tuple((inv @ F.pad(x, (0, 0, 0, size - steps))).index_select(-2, rows) for x in rhs)  # [..., C, D]


def _chunk_major(x: torch.Tensor, chunks: int, chunk_size: int, heads: int) -> torch.Tensor:
    """[B, T, Hx, *D] (T <= chunks * chunk_size, Hx dividing heads) -> fp32 [N * B * H, C, *D], one copy.

    Time is zero-padded to N * C; grouped q/k heads are repeated for their value heads by a broadcast
    inside the same copy. Chunk-major order keeps every chunk's slice contiguous for the loop's bmm.
    """
    batch, steps, x_heads = x.shape[:3]
    x = x.float()
    if not statically_known_true(chunks * chunk_size == steps):  # F.pad copies even when it pads nothing
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, 0, 0, chunks * chunk_size - steps))  # [B, N*C, Hx, *D]
    x = x.unflatten(1, (chunks, chunk_size))  # [B, N, C, Hx, *D]
    if x_heads != heads:
        x = x.unsqueeze(4).expand(*x.shape[:4], heads // x_heads, *x.shape[4:]).flatten(3, 4)  # [B, N, C, H, *D]
    return x.movedim(1, 0).movedim(3, 2).reshape(chunks * batch * heads, chunk_size, *x.shape[4:])


def chunked_gated_delta_rule(
    q,
    k,
    v,
    g,
    beta,
    *,
    scale: float,
    initial_state: Optional[torch.Tensor],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """Chunked (WY / UT-transform) form: batched matmuls plus a loop over chunks. Returns (out, state).

    Time is zero-padded to whole chunks; padded steps (g = 0, beta = 0, k = 0) leave the state
    unchanged and their outputs are dropped.

    Written for eager speed (it is the op's prefill kernel): every [C, D]-sized product is a bmm
    whose left factor is a small [C, C] matrix that already carries the decays and betas, so only
    two elementwise passes touch [T, D] data (the layout copy, the decay of q). With
    P = (I + A)^-1 diag(beta), G = diag(exp(gamma)) and E = diag(exp(gamma_C - gamma))::

        U = P V,  W = P G K,  intra = attn U = (attn P) V,  Qa = scale G Q - (attn P G) K
        O = Qa S_0 + intra,   S_C = exp(gamma_C) S_0 + K^T (E U - E W S_0)
    """
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunked_gated_delta_rule: chunk_size must be a power of two, got {chunk_size}.")
    out_dtype = v.dtype
    batch, steps, heads, v_dim = v.shape
    k_dim = k.shape[-1]
    size = chunk_size
    chunks = -(-steps // size)  # N
    lanes = batch * heads  # L: one [Dk, Dv] state per lane
    q, k, v, g, beta = (_chunk_major(x, chunks, size, heads) for x in (q, k, v, g, beta))  # [NL, C, D], [NL, C]

    sums = segment_sums(g)  # [NL, C, C]
    decay = sums.exp()  # [NL, C, C]: D_ij, zero above the diagonal
    from_start = g.cumsum(dim=-1).exp()  # [NL, C]: exp(gamma_i), a prefix sum of g <= 0
    to_end = sums[:, -1, :].exp()  # [NL, C]: exp(gamma_C - gamma_j), a direct suffix sum
    k_t = k.transpose(1, 2)  # [NL, Dk, C]
    a = torch.bmm(k, k_t).mul_(decay * beta.unsqueeze(-1)).tril_(-1)  # [NL, C, C]: A_ij = beta_i D_ij k_i.k_j
    p = invert_unit_lower(a).mul_(beta.unsqueeze(-2))  # [NL, C, C]: (I + A)^-1 diag(beta)
    attn_p = torch.bmm(torch.bmm(q, k_t).mul_(decay * scale), p)  # [NL, C, C]: attn P, attn causal
    left = torch.cat([attn_p, p * to_end.unsqueeze(-1)], dim=1)  # [NL, 2C, C]: [attn P; E P]
    from_v = torch.bmm(left, v).view(chunks, lanes, 2 * size, v_dim)  # [N, L, 2C, Dv]: [intra; E U]
    reads = torch.bmm(left.mul_(from_start.unsqueeze(-2)), k)  # [NL, 2C, Dk]: [attn P G K; E W]
    reads[:, :size].neg_().addcmul_(q, (from_start * scale).unsqueeze(-1))  # [Qa; E W]
    reads = reads.view(chunks, lanes, 2 * size, k_dim)  # [N, L, 2C, Dk]
    k_t = k_t.view(chunks, lanes, k_dim, size)  # [N, L, Dk, C]
    chunk_decay = from_start.view(chunks, lanes, size, 1)[:, :, -1:]  # [N, L, 1, 1]: exp(gamma_C)

    # The state is updated in place (a private copy: the caller's initial_state is never written), and
    # each chunk's output goes straight into its place in [B, N, C, H, Dv]: no copy after the loop.
    state = v.new_zeros(lanes, k_dim, v_dim) if initial_state is None else initial_state.float().clone()
    state = state.reshape(lanes, k_dim, v_dim)  # [L, Dk, Dv]
    out = torch.empty(batch, chunks, size, heads, v_dim)  # [B, N, C, H, Dv]
    for i in range(chunks):  # two state reads (one bmm on [Qa; E W]) and one write per chunk
        read = torch.bmm(reads[i], state)  # [L, 2C, Dv]
        out_i = out[:, i].permute(0, 2, 1, 3)  # [B, H, C, Dv], a view
        torch.add(from_v[i, :, :size].view(out_i.shape), read[:, :size].view(out_i.shape), out=out_i)  # Qa S + intra
        delta = from_v[i, :, size:] - read[:, size:]  # [L, C, Dv]: E (U - W S)
        state.mul_(chunk_decay[i]).baddbmm_(k_t[i], delta)  # [L, Dk, Dv]
    # Flatten, then drop the padding: a slice that is never contiguous, so export does not guard T != padded.
    out = out.view(batch, chunks * size, heads, v_dim)[:, :steps]  # [B, T, H, Dv]
    return out.to(out_dtype), state.view(batch, heads, k_dim, v_dim)  # [B, T, H, Dv], [B, H, Dk, Dv]


def single_chunk_gated_delta_rule(q, k, v, g, beta, *, scale: float, initial_state, max_len: int):
    """The whole sequence as one chunk of dynamic length T <= max_len (a power of two). Returns (out, state).

    The export form: no loop at all, so one graph serves decode (T = 1) and prefill (T up to max_len)
    with a dynamic T. Every term is sized by T except the chunk-matrix inverse, which is taken on the
    matrix padded to max_len (solve_unit_lower_padded). Callers split longer prompts into pieces.
    Batch and heads are flattened into one batch dim L so that every product is a 3-D bmm, the form
    XNNPACK delegates without the expand/view pairs aten wraps around higher-rank matmuls.
    """
    if max_len < 1 or max_len & (max_len - 1):
        raise ValueError(f"single_chunk_gated_delta_rule: max_len must be a power of two, got {max_len}.")
    out_dtype = v.dtype
    batch, steps, heads, v_dim = v.shape
    k_dim = k.shape[-1]
    q, k, v, g, beta = _heads_first_fp32(q, k, v, g, beta, scale)  # [B, H, T, D], [B, H, T]
    state = _start_state(initial_state, k, v).reshape(batch * heads, k_dim, v_dim)  # [L, Dk, Dv]
    q, k, v, g, beta = (x.view(batch * heads, steps, *x.shape[3:]) for x in (q, k, v, g, beta))  # [L, T, D], [L, T]
    sums = segment_sums(g)  # [L, T, T]
    decay = sums.exp()  # [L, T, T]: D_ij, zero above the diagonal
    from_start = g.cumsum(dim=-1).unsqueeze(-1)  # [L, T, 1]: gamma_i
    to_end = sums[:, -1, :].unsqueeze(-1)  # [L, T, 1]: gamma_T - gamma_j
    k_beta = k * beta.unsqueeze(-1)  # [L, T, Dk]
    a = (torch.bmm(k_beta, k.transpose(1, 2)) * decay).tril(-1)  # [L, T, T]
    u, w = solve_unit_lower_padded(a, v * beta.unsqueeze(-1), k_beta * from_start.exp(), size=max_len)
    attn = torch.bmm(q, k.transpose(1, 2)) * decay  # [L, T, T], causal incl. the diagonal
    delta = u - torch.bmm(w, state)  # [L, T, Dv]
    out = torch.bmm(q * from_start.exp(), state) + torch.bmm(attn, delta)  # [L, T, Dv]
    state = state * from_start[:, -1:].exp() + torch.bmm((k * to_end.exp()).transpose(1, 2), delta)  # [L, Dk, Dv]
    out = out.view(batch, heads, steps, v_dim).transpose(1, 2)  # [B, T, H, Dv]
    return out.to(out_dtype), state.view(batch, heads, k_dim, v_dim)

