"""Quantization schemes: what each one stores, how each backend runs it, and what stays in fp32.

The named schemes (`--quant`):

    fp32    the reference weights as they are
    fp16    weights and activations in fp16 (ExecuTorch/XNNPACK only, see SCHEMES)
    8w      int8 weights, one scale per output channel
    4w      int4 weights, one scale per group of `group_size` input channels, fp32 activations
    8da4w   int4 grouped weights run with dynamically quantized int8 activations (the default 4-bit scheme)

The embedding and the LM head are one matrix when tied (a third of the 0.8B's weights). Under
8w it is int8 per row; under the 4-bit schemes `--embedding-bits` picks int8 per row (default)
or int4 grouped. Both lowerings store the quantized tied matrix once where the backend can
share it (ONNX: MatMulNBits and GatherBlockQuantized read one initializer; ExecuTorch: the
int8 rows are byte-identical in the lookup and the head, and its data file de-duplicates them)
and report the bytes either way.

Scales, chosen with torchao (`scale_choice`), the same way in both formats, so the two
artifacts of a scheme carry the same integers:
- int4 grouped: torchao's HQQ scale-only solver (`intx_choose_qparams_algorithm="hqq_scale_only"`,
  what ExecuTorch's own LLM export uses), run in place by `hqq_scale_only` (bit-identical, 2.3x
  faster). It alternates rounding with a least-squares scale per group, i.e. it minimises the
  weight MSE with symmetric integers, which both XNNPACK (no zero points) and ORT's kernels take.
  Measured on the trained fixture (int4 g32 linears, perplexity increase on 2048 held-out tokens,
  reference model with dequantized weights): int8 embedding:
  round-to-nearest +7.1 %, ORT RTN asymmetric +5.6 %, ORT HQQ (asymmetric, float zero points)
  +4.8 %, ORT k-quant +3.8 %, HQQ scale-only +3.7 %; int4 embedding: +16.8 %, +14.9 %, -,
  +10.7 %, +8.6 %. ORT's HQQ cannot quantize a Gather and its float zero points cannot be shared
  with GatherBlockQuantized, so the best of ORT's own quantizers (k-quant) would miss the 10 %
  bound with an int4 embedding.
- int8 per row (the 8w linears, the int8 embedding / LM head): symmetric min-max without
  clipping (torchao's `SYMMETRIC_NO_CLIPPING_ERR`: the row's extreme lands on -128 or 127). HQQ
  gains nothing at 255 levels: on the fixture's embedding its relative weight MSE is 5.7e-5
  against 5.2e-5 here (its first scale, max/128, clips the extreme), and on the 0.8B's
  248 320 x 1024 matrix it takes 52 s against under 1 s.

What stays in higher precision is the table `HIGH_PRECISION` below, with the reason per line.

Not here: rewriting an ONNX graph (`exporter.onnx.quantize`), quantizing a model for
ExecuTorch (`exporter.executorch.quantize`), the tolerances per scheme (`runtime.tolerances`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.errors import QwenEdgeError

if TYPE_CHECKING:  # torch is imported where it is used: exporter.artifact imports this module, and runtime it
    from torch import Tensor, nn

DEFAULT_GROUP_SIZE = 32
GROUP_SIZES = (32, 64, 128)
EMBEDDING_BITS = (8, 4)
ALGORITHM = {  # as the manifest records it: see scale_choice
    "int4 grouped": "HQQ scale-only, torchao's algorithm (symmetric; least-squares scale per group, minimises "
                    "weight MSE), run by `hqq_scale_only` here: the same integers and scales, bit for bit",
    "int8 per row": "torchao affine SYMMETRIC_NO_CLIPPING_ERR (symmetric min-max per row, the extreme not clipped)",
}


class QuantizationError(QwenEdgeError):
    """A scheme, option or model that cannot be quantized as asked."""


@dataclass(frozen=True)
class Scheme:
    name: str
    weight_bits: int | None  # None: floating point
    grouped: bool  # int4 scales per group of input channels (else per output channel)
    runs: dict[str, str]  # format -> how its backend runs the scheme (activations, kernel)
    refused: dict[str, str]  # format -> why the scheme is not offered there
    summary: str


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("fp32", None, False,
           {"pte": "fp32 XNNPACK", "onnx": "fp32 ONNX Runtime"}, {}, "the reference weights"),
    Scheme("fp16", None, False,
           {"pte": "fp16 weights and activations, XNNPACK fp16 kernels (recurrent state stays fp32)"},
           {"onnx": "ONNX Runtime's CPU provider has fp16 GEMM kernels on ARM64 only; elsewhere it inserts "
                    "casts around fp32 kernels (slower than fp32). Use fp32, 8w or a 4-bit scheme for ONNX"},
           "fp16 weights and activations"),
    Scheme("8w", 8, False,
           {"pte": "XNNPACK qd8-f32-qc8w: int8 per-channel weights, activations quantized to int8 per token on "
                   "the fly (XNNPACK's only quantized-weight linear; it has no fp32 x int8 path in ExecuTorch)",
            "onnx": "MatMulNBits bits=8, one block per channel, accuracy_level 4 (ORT quantizes activations to int8 "
                    "per block; its fp32-activation 8-bit kernel measured 25x slower)"},
           {}, "int8 weights, per output channel"),
    Scheme("4w", 4, True,
           {"onnx": "MatMulNBits bits=4, accuracy_level 1: fp32 activations"},
           {"pte": "XNNPACK runs int4 weights only with dynamically quantized int8 activations, which is 8da4w; "
                   "export --quant 8da4w for ExecuTorch"},
           "int4 grouped weights, fp32 activations"),
    Scheme("8da4w", 4, True,
           {"pte": "XNNPACK qd8-f32-qb4w: int8 activations per token x int4 grouped weights",
            "onnx": "MatMulNBits bits=4, accuracy_level 4: int8 activations per block x int4 grouped weights"},
           {}, "dynamic int8 activations x int4 grouped weights (the default 4-bit scheme)"),
)}

# What is never quantized, and why: the one place this decision is written.
HIGH_PRECISION: tuple[tuple[str, str], ...] = (
    ("recurrent state S and the delta-rule math",
     "fp32 always: S accumulates decayed rank-1 updates over the whole sequence; rounding errors compound"),
    ("in_proj_a, in_proj_b (decay and write strength)",
     "their outputs pass through softplus/exp and sigmoid to set how fast S forgets and how hard it writes; "
     "0.05 % of the weights, so int4 buys nothing and its error would compound in S"),
    ("A_log, dt_bias", "per-head decay parameters (a few floats per layer) inside exp()"),
    ("conv1d taps", "4 taps per channel: 0.1 % of the weights, and the conv state they produce feeds every step"),
    ("RMSNorm weights (layer, final, q/k, gated)", "vectors; normalisation runs in fp32 by design"),
    ("MoE router and shared_expert_gate", "routing decisions flip on small errors; [E, D] and [1, D] are tiny"),
    ("MoE experts and shared expert", "the qwen35::moe op takes their fp32 tensors directly; a QMoE lowering "
                                      "is not written yet"),
    ("KV cache", "kept in the activation dtype (fp32, or fp16 under fp16)"),
)
KEPT_LINEARS = ("in_proj_a", "in_proj_b", "shared_expert_gate")  # module-name suffixes, see HIGH_PRECISION
KEPT_SCOPES = (".shared_expert.",)  # linears whose weights qwen35::moe reads, see HIGH_PRECISION


@dataclass(frozen=True)
class QuantRecipe:
    """One scheme with its options resolved: what `exporter.quantize_*` apply and the manifest records."""

    scheme: str
    group_size: int | None  # int4 linears' group size; None for per-channel and float schemes
    embedding_bits: int | None  # the embedding / tied LM head: 8 (per row) or 4 (grouped); None when float

    @property
    def weight_bits(self) -> int | None:
        return SCHEMES[self.scheme].weight_bits

    @property
    def embedding_group(self) -> int | None:
        """Group size of the embedding rows: per row (None) at 8 bits, the linears' group size at 4."""
        return self.group_size if self.embedding_bits == 4 else None

    def manifest(self, fmt: str) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "weight_bits": self.weight_bits,
            "group_size": self.group_size,
            "embedding_bits": self.embedding_bits,
            "embedding_group_size": self.embedding_group,
            "runs_as": SCHEMES[self.scheme].runs.get(fmt),
            "scales": dict(ALGORITHM) if self.weight_bits else None,
            "kept_in_fp32": {what: why for what, why in HIGH_PRECISION},
        }


def resolve(quant: str, group_size: int | None, embedding_bits: int | None) -> QuantRecipe:
    """Check a scheme name and its options; fill the defaults (group 32, int8 embedding for 4-bit schemes)."""
    if quant not in SCHEMES:
        raise QuantizationError(f"--quant {quant!r}: unknown scheme; choose one of {', '.join(SCHEMES)}")
    scheme = SCHEMES[quant]
    if not scheme.grouped and group_size is not None:
        raise QuantizationError(f"--group-size applies to the grouped int4 schemes (4w, 8da4w), not {quant}; drop it")
    if scheme.weight_bits != 4 and embedding_bits is not None:
        raise QuantizationError(
            f"--embedding-bits applies to the 4-bit schemes (4w, 8da4w); {quant} keeps the embedding "
            f"{'at int8 per row' if scheme.weight_bits == 8 else 'in ' + quant}; drop it")
    if scheme.grouped:
        group_size = DEFAULT_GROUP_SIZE if group_size is None else group_size
        if group_size not in GROUP_SIZES:
            raise QuantizationError(f"--group-size {group_size}: choose one of {', '.join(map(str, GROUP_SIZES))}")
        embedding_bits = 8 if embedding_bits is None else embedding_bits
        if embedding_bits not in EMBEDDING_BITS:
            raise QuantizationError(f"--embedding-bits {embedding_bits}: choose 8 (int8 per row) or 4 (int4 grouped)")
    elif scheme.weight_bits == 8:
        embedding_bits = 8
    return QuantRecipe(quant, group_size, embedding_bits)


def check_format(recipe: QuantRecipe, fmt: str) -> None:
    """Raise, with the reason, when `fmt` does not offer the scheme."""
    reason = SCHEMES[recipe.scheme].refused.get(fmt)
    if reason:
        raise QuantizationError(f"--quant {recipe.scheme} --format {fmt}: not offered: {reason}")


def quantized_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every linear a weight-quantizing scheme quantizes: all but the kept ones and the LM head."""
    from torch import nn

    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name != "lm_head" and not name.endswith(KEPT_LINEARS)
            and not any(scope in name for scope in KEPT_SCOPES)]


def check_shapes(model: nn.Module, recipe: QuantRecipe) -> None:
    """Every grouped matrix's input size must be a multiple of the group size; name the first that is not."""
    extra = [("embed_tokens / lm_head", model.config.hidden_size)] if recipe.embedding_bits == 4 else []
    check_group_size(model, recipe, extra)


def check_group_size(model: nn.Module, recipe: QuantRecipe, extra: list[tuple[str, int]] = ()) -> None:
    """check_shapes for the quantized linears of any module (and `extra` (name, input size) pairs)."""
    if not recipe.group_size:
        return
    matrices = [(name, m.in_features) for name, m in quantized_linears(model)] + list(extra)
    for name, k in matrices:
        if k % recipe.group_size:
            fits = [g for g in GROUP_SIZES if all(kk % g == 0 for _, kk in matrices)]
            hint = f"use --group-size {fits[-1]}" if fits else "no group size fits this model"
            raise QuantizationError(
                f"--group-size {recipe.group_size}: {name} has {k} input channels, not a multiple of it; {hint}")


def scale_choice(group: int | None) -> tuple[str, Any]:
    """torchao's (intx_choose_qparams_algorithm, mapping type) for grouped (int4) or per-row (group None) scales."""
    from torchao.quantization.quant_primitives import MappingType

    if group is None:
        return "affine", MappingType.SYMMETRIC_NO_CLIPPING_ERR
    return "hqq_scale_only", MappingType.SYMMETRIC


# Rows per call of the solver. HQQ holds several fp32 copies of what it solves, 1 GB each for the
# 0.8B's 248 320 x 1024 head, 64 MB each in blocks of this many rows (the 0.8B int4-embedding ONNX
# export's peak RSS fell from 8.1 to 7.3 GB).
SOLVER_ROWS = 16384


def qparams(weight: Tensor, bits: int, group: int | None) -> tuple[Tensor, Tensor]:
    """weight [N, K] -> symmetric integers int8 [N, K] (in [-2^(bits-1), 2^(bits-1) - 1]) and fp32 scales [N, K / group].

    group None: one scale per row. The scales are `scale_choice`'s (module docstring), through
    torchao's public config on a throwaway linear, as ExecuTorch's LLM export does, over blocks
    of SOLVER_ROWS rows. Every scale belongs to one row, so blocks change nothing but HQQ's early
    stop (it stops when no scale of the block moved by 1e-5 relative; 20 rounds at most), which
    then applies per block. Both formats quantize through this function, so their integers agree.
    """
    import torch

    rows = [_qparams_block(block, bits, group) for block in weight.detach().split(SOLVER_ROWS)]
    return torch.cat([q for q, _ in rows]), torch.cat([s for _, s in rows])


def _qparams_block(weight: Tensor, bits: int, group: int | None) -> tuple[Tensor, Tensor]:
    import torch
    from torch import nn
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    if group is not None:
        return hqq_scale_only(weight, bits, group)
    holder = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    holder.weight = nn.Parameter(weight.float(), requires_grad=False)
    algorithm, mapping = scale_choice(group)
    config = IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=PerAxis(0),
                                  mapping_type=mapping, intx_choose_qparams_algorithm=algorithm)
    quantize_(holder, config)
    qdata, scale = holder.weight.qdata, holder.weight.scale
    return qdata.to(torch.int8), scale.float().reshape(weight.shape[0], -1)


HQQ_ROUNDS, HQQ_TOLERANCE = 20, 1e-5  # torchao's defaults for hqq_scale_only


def hqq_scale_only(weight: Tensor, bits: int, group: int) -> tuple[Tensor, Tensor]:
    """torchao's `_choose_qparams_and_quantize_scale_only_hqq` (what `hqq_scale_only` runs), op for op, on
    two reused buffers: int8 [N, K] integers and fp32 [N, K / group] scales, equal to torchao's bit for bit
    (`test_hqq_is_torchaos_bit_for_bit`).

    torchao allocates five fresh fp32 copies of the matrix per round (up to 20 rounds); each is a new
    mapping the kernel zero-fills on first touch. In place, a 16 384 x 1024 block (SOLVER_ROWS rows of
    the 0.8B's head) at int4 g32 takes 0.93 s here against 2.19 s; the whole head took 35.8 s before.
    """
    import torch

    eps = torch.finfo(torch.float32).eps
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    n, k = weight.shape
    w = weight.detach().float().contiguous().view(n, k // group, group)
    scale = (w.abs().amax(dim=2) / max(-qmin, qmax)).clamp_min(eps)  # [N, G]: max-abs start
    previous = scale.clone()
    q, product = torch.empty_like(w), torch.empty_like(w)

    def quantize(scale):
        return torch.div(w, scale.unsqueeze(-1), out=q).round_().clamp_(qmin, qmax)

    for _ in range(HQQ_ROUNDS):
        quantize(scale)
        num = torch.mul(w, q, out=product).sum(dim=2, dtype=torch.float32)  # least-squares scale per group
        den = torch.mul(q, q, out=product).sum(dim=2, dtype=torch.float32)
        scale = torch.where(den > 0, num / den, previous).clamp_min(eps).abs()
        if ((scale - previous).abs() / previous.clamp_min(eps)).max() < HQQ_TOLERANCE:
            break
        previous = scale
    return quantize(scale).view(n, k).to(torch.int8), scale


def dequantize(qdata: Tensor, scale: Tensor) -> Tensor:
    """The inverse of `qparams`: [N, K] int8 and [N, G] scales -> [N, K] fp32."""
    n, k = qdata.shape
    return (qdata.float().view(n, scale.shape[1], -1) * scale[..., None]).view(n, k)
