"""qwen-edge runtime: run a bundle on a desktop and prove it matches the reference.

    import runtime
    session = runtime.load("bundle/", backend="onnx")        # or "pte", "reference"
    logits = session.prefill(ids)                            # appends; session.reset() starts over
    out = session.generate("import os", max_new_tokens=32, sampling=runtime.Sampling(temperature=0.7, seed=1),
                           on_text=print)

Backends (`runtime.backends`) share one interface; `runtime.validate` compares
them with the reference, `runtime.bench` times them.
"""

from runtime.bundle import Bundle, open_bundle
from runtime.sampling import Sampling
from runtime.session import Generation, Session, load

__all__ = ["Bundle", "Generation", "Sampling", "Session", "load", "open_bundle"]
