"""Custom ops of qwen-edge, namespace ``qwen35::``.

Importing this package registers the ops with ``torch.library``. Each op lives in
its own module with the same sections: schema, eager kernel, fake kernel, ONNX
translation, ExecuTorch lowering. The pure-PyTorch references (a token-by-token
oracle and a chunked form) sit beside the op they define.
"""

from ops.causal_conv1d import causal_conv1d
from ops.gated_delta_rule import gated_delta_rule
from ops.kv_attention import kv_attention
from ops.moe import moe

__all__ = ["causal_conv1d", "gated_delta_rule", "kv_attention", "moe"]
