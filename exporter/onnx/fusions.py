"""Norm fusions of the `ort` profile: each RMS-style norm becomes one ONNX Runtime kernel.

The reference model writes its norms in the form ExecuTorch's XNNPACK delegate runs whole
(`exporter.model.mean_last`: x², a 4-D mean and two reshapes), which reaches ONNX as nine to
eleven small nodes. A decode step runs each node once, so at the 0.8B shape the 115 norms of a
token cost ~1 000 kernel launches. Here each is rewritten into ONNX Runtime's
`SimplifiedLayerNormalization` (one vectorised kernel; it computes mean(x²) in fp32 as the model does):

- `RMSNorm` (decoder, q/k norms): x · rsqrt(mean(x²) + eps) · w → SLN(x, w, eps);
- `GatedRMSNorm`'s norm: w · (x · rsqrt(mean(x²) + eps)) → SLN(x, w, eps), the gate stays a Mul
  (ONNX Runtime's own `com.microsoft::GatedRMSNorm`, norm and gate in one kernel, measured 12 %
  slower on a 128-token prefill at the 0.8B shape and no faster to decode, so it is not used);
- `l2norm`: x · rsqrt(D · mean(x²) + eps) = x · D^-½ · rsqrt(mean(x²) + eps/D)
  → SLN(x, D^-½ · 1, eps / D), the same value in exact arithmetic.

DeltaNet's decay gate, softplus and scale, becomes `com.microsoft::LinearAttentionGate`. Then
onnxscript's own `fuse_skip_rms_normalization` folds each residual Add into the following norm
(`SkipSimplifiedLayerNormalization`). Measured at the 0.8B shape, the same files with and
without, alternating in one process (2 threads): decode +5 % (8da4w) and +3 % (8da4w+emb4),
prefill +3 %. A rule matches only the model's own construction (the [1, -1, D, 1] view of x², a
mean over its last two axes, scalar eps), so any other graph is left as it is; `fuse_norms`
reports how many of each it rewrote. Last, `drop_reshape_round_trips` lets readers of a
Reshape(Reshape(x)) back to x's own shape read x (DeltaNet's v, viewed as heads by the model and
packed again for LinearAttention).

Not here: the op lowerings (each op's `LOWERING` in `ops/`), the export driver (`exporter.onnx.export`).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.convenience import get_const_tensor
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions.skip_normalization import (
    fuse_skip_rms_normalization,
)

from ops.onnx_contrib import CONTRIB_DOMAIN, ort_schema

_FLOAT = ir.DataType.FLOAT
# The ops these rules write, as (name, domain).
# ONNX Runtime registers SimplifiedLayerNormalization in ONNX's own domain.
_WRITES = (
    ("SimplifiedLayerNormalization", ""),
    ("SkipSimplifiedLayerNormalization", CONTRIB_DOMAIN),
    ("LinearAttentionGate", CONTRIB_DOMAIN),
)


def _mean_square(op, x, rows, axes, back):
    """mean_last(x * x): x² viewed as [1, N, D, 1], mean over the last two axes, viewed back to [..., 1]."""
    return op.Reshape(op.ReduceMean(op.Reshape(op.Mul(x, x), rows), axes, keepdims=1), back)


def _rsqrt(op, value, eps):
    return op.Reciprocal(op.Sqrt(op.Add(value, eps)))


def _constant(value: ir.Value | None) -> np.ndarray | None:
    tensor = get_const_tensor(value) if value is not None else None
    return None if tensor is None else tensor.numpy()


def _check_core(x, rows, axes, eps, scalars=()) -> pattern.MatchResult:
    """The mean is over x's last dim, eps (and any other scalar) is a constant: what mean_last builds."""
    result = pattern.MatchResult()
    if x.dtype != _FLOAT or x.shape is None or not isinstance(x.shape[-1], int):
        return result.fail("x is not float32 with a static last dim", x)
    rows_shape, axes_value = _constant(rows), _constant(axes)
    if rows_shape is None or rows_shape.tolist() != [1, -1, x.shape[-1], 1]:
        return result.fail("x² is not viewed as [1, -1, D, 1]", rows)
    if axes_value is None or sorted(axes_value.tolist()) not in ([-2, -1], [2, 3]):
        return result.fail("the mean is not over the view's last two axes", axes)
    for value in (eps, *scalars):
        constant = _constant(value)
        if constant is None or constant.size != 1:
            return result.fail("not a scalar constant", value)
    return result


def _scale_matches(x, w) -> bool:
    return w.dtype == _FLOAT and w.shape is not None and list(w.shape) == [x.shape[-1]]


class _RMSNorm(pattern.RewriteRuleClassBase):
    """(x · rsqrt(mean(x²) + eps)) · w, either operand order of the last Mul -> SimplifiedLayerNormalization."""

    def __init__(self, name: str, weight_first: bool):
        super().__init__(name)
        self.weight_first = weight_first

    def pattern(self, op, x, rows, axes, back, eps, w):
        normed = op.Mul(x, _rsqrt(op, _mean_square(op, x, rows, axes, back), eps))
        return op.Mul(w, normed) if self.weight_first else op.Mul(normed, w)

    def check(self, context, x, rows, axes, eps, w, **_) -> pattern.MatchResult:
        result = _check_core(x, rows, axes, eps)
        if result and not _scale_matches(x, w):
            return result.fail("the weight is not a float32 [D] vector", w)
        return result

    def rewrite(self, op, x, eps, w, **_):
        return op.SimplifiedLayerNormalization(x, w, axis=-1, epsilon=float(_constant(eps)), stash_type=1)


class _L2Norm(pattern.RewriteRuleClassBase):
    """x · rsqrt(D · mean(x²) + eps) -> SimplifiedLayerNormalization(x, D^-½, eps / D)."""

    def pattern(self, op, x, rows, axes, back, size, eps):
        return op.Mul(x, _rsqrt(op, op.Mul(_mean_square(op, x, rows, axes, back), size), eps))

    def check(self, context, x, rows, axes, size, eps, **_) -> pattern.MatchResult:
        result = _check_core(x, rows, axes, eps, scalars=(size,))
        if result and float(_constant(size)) != x.shape[-1]:
            return result.fail("the mean is not scaled to a sum over D", size)
        return result

    def rewrite(self, op, x, size, eps, **_):
        dim = x.shape[-1]
        scale = op.Constant(value=ir.tensor(np.full(dim, dim**-0.5, dtype=np.float32)))
        return op.SimplifiedLayerNormalization(x, scale, axis=-1, epsilon=float(_constant(eps)) / dim, stash_type=1)


class _LinearAttentionGate(pattern.RewriteRuleClassBase):
    """scale · softplus(a + dt_bias) -> com.microsoft::LinearAttentionGate (DeltaNet's decay, one kernel).

    softplus as torch writes it: x above 20 passes through. The op's softplus has no threshold;
    above 20 the two differ by log1p(e^-20) ≈ 2e-9.
    """

    def pattern(self, op, a, dt_bias, threshold, scale):
        shifted = op.Add(a, dt_bias)
        return op.Mul(scale, op.Where(op.Greater(shifted, threshold), shifted, op.Softplus(shifted)))

    def check(self, context, a, dt_bias, threshold, scale, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        bound = _constant(threshold)
        if bound is None or bound.size != 1 or float(bound) != 20.0:
            return result.fail("not torch's softplus threshold of 20", threshold)
        heads = a.shape[-1] if a.dtype == _FLOAT and a.shape is not None else None
        for vector in (dt_bias, scale):
            matches = isinstance(heads, int) and vector.dtype == _FLOAT and vector.shape is not None
            if not matches or list(vector.shape) != [heads]:
                return result.fail("dt_bias and the decay scale are not float32 [H] vectors of a's H", vector)
        return result

    def rewrite(self, op, a, dt_bias, scale, **_):
        return op.LinearAttentionGate(a, dt_bias, scale, _domain=CONTRIB_DOMAIN)


_NORM_RULES = pattern.RewriteRuleSet(
    [
        _RMSNorm.rule("rms_norm", weight_first=False),
        _RMSNorm.rule("rms_norm_weight_first", weight_first=True),
        _L2Norm.rule("l2_norm"),
    ]
)


def fuse_norms(model: ir.Model) -> dict[str, int]:
    """Rewrite the model's norms and DeltaNet decay gates in place; returns each fusion's count (for the report).

    Raises RuntimeError when the installed ONNX Runtime lacks one of the ops written here.
    """
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    for name, domain in _WRITES:
        ort_schema(name, domain)
    norms = _NORM_RULES.apply_to_model(model)
    gates = _LinearAttentionGate.rule().apply_to_model(model)
    skip = fuse_skip_rms_normalization(model)
    round_trips = drop_reshape_round_trips(model.graph)
    RemoveUnusedNodesPass()(model)  # the dead shape arithmetic of the views
    return {
        "SimplifiedLayerNormalization": norms - skip,
        "SkipSimplifiedLayerNormalization": skip,
        "LinearAttentionGate": gates,
        "dropped_reshape_pairs": round_trips,
    }


def drop_reshape_round_trips(graph: ir.Graph) -> int:
    """Reshape(Reshape(x, a), b) whose output has x's shape: its readers read x. Returns how many.

    A DeltaNet layer views v as heads for the model's code and LinearAttention takes it packed
    again (so does GroupQueryAttention in an attention layer): two no-op kernels a layer and call. Shapes compare dim by dim (a static size, or the
    same symbolic dim); a value with an unknown dim is left alone, and so is a graph output.
    """
    dropped = 0
    for node in list(graph):
        inner = node.inputs[0].producer() if node.op_type == "Reshape" and not node.domain else None
        if inner is None or inner.op_type != "Reshape" or inner.domain or node.outputs[0].is_graph_output():
            continue
        source, result = inner.inputs[0], node.outputs[0]
        if _same_shape(source, result):
            ir.convenience.replace_all_uses_with(result, source)
            dropped += 1
    return dropped


def _same_shape(a: ir.Value, b: ir.Value) -> bool:
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    dims = list(zip(a.shape, b.shape))
    known = all(isinstance(x, int) or (x is not None and getattr(x, "value", None)) for pair in dims for x in pair)
    return known and all(x == y for x, y in dims)
