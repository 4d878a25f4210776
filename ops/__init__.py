"""Custom ops of qwen-edge, namespace ``qwen35::``.

Importing this package registers the ops with ``torch.library``. Each op lives in its own
module (or package, when it outgrows one) with the same sections: schema, eager kernel, fake
kernel, ONNX translation, ExecuTorch lowering, and ends with its `LOWERING` table
(`ops.lowering.OpLowering`). `LOWERINGS` collects them: both exporters iterate it, so an op
added here reaches both without an edit there. The pure-PyTorch references (a token-by-token
oracle and a chunked form) sit beside the op they define. This package imports neither
`exporter` nor `runtime`; onnx, onnxruntime and onnxscript are imported on first use.
"""

from ops.causal_conv1d import LOWERING as _causal_conv1d_lowering
from ops.causal_conv1d import causal_conv1d
from ops.gated_delta_rule import LOWERING as _gated_delta_rule_lowering
from ops.gated_delta_rule import gated_delta_rule
from ops.kv_attention import LOWERING as _kv_attention_lowering
from ops.kv_attention import kv_attention
from ops.moe import LOWERING as _moe_lowering
from ops.moe import moe

# Every op's table, in the order the export reports list them (tests/ops/test_lowering.py checks
# that each registered qwen35:: op has one).
LOWERINGS = (_gated_delta_rule_lowering, _causal_conv1d_lowering, _kv_attention_lowering, _moe_lowering)

__all__ = ["LOWERINGS", "causal_conv1d", "gated_delta_rule", "kv_attention", "moe"]
