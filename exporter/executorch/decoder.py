"""The reference decoder wrapped for ExecuTorch: state in mutable buffers, and its `torch.export`.

The program's contract (`runtime.contract`): `forward(tokens [1, T], input_pos [1])
-> logits [1, V]` of the last position, 1 <= T <= prefill_chunk, so a prompt
chunk is prefilled in one call. ExecuTorch's runner splits prompts by
`get_max_seq_len`, so that is the prefill chunk; `get_max_context_len` is the
KV capacity. With max_seq_len < max_context_len the runner treats the model as
a sliding-window one and stops checking capacity, so the KV cache is a ring
buffer (`RingKV`): exact within capacity, sliding-window attention past it, never an
out-of-bounds write. input_pos = 0 starts a new sequence: the DeltaNet states
are zeroed in-graph (the runner's reset() calls nothing in the program). The recurrent
state buffers hold the layout the delta rule's kernel computes in: S^T [1, Hv, Dv, Dk] for the
delegable decomposition (kernels "stock"), S [1, Hv, Dk, Dv] for ExecuTorch's
`llama::gated_delta_rule` (kernels "llm", `ExportOptions.pte_kernels`).

Multimodal checkpoints add a method `forward_with_images` (image embeddings and
M-RoPE positions in, `ExecuTorchImageDecoder`); both methods' weights share the
one `model.ptd`.

Not here: replacing the `qwen35::` ops and lowering (`exporter.executorch.lower`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from exporter.artifact import ExportOptions
from exporter.model import Qwen35Model, StaticKV, splice_image_embeds
from runtime.config import FULL, ModelConfig
from runtime.contract import FORWARD_METHOD, IMAGE_METHOD, state_names, state_shape


@dataclass
class RingKV(StaticKV):
    """A KV cache of capacity S written at slot (position mod S); see the module docstring for why a ring."""

    key: Tensor  # [1, Hkv, S, Dh] buffer
    value: Tensor  # [1, Hkv, S, Dh] buffer
    slots: Tensor  # [T]: where the new tokens go
    mask: Tensor  # [T, S]: which slots each new token sees

    @staticmethod
    def addressing(positions: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
        """positions [T] (absolute) -> (slots [T], mask [T, S]); the same for every layer, so built once."""
        slots = positions % capacity
        # Absolute position now held by each slot (negative: never written).
        end = positions[-1]
        held = end - (end - torch.arange(capacity)) % capacity  # [S]
        query = positions[:, None]  # [T, 1]
        return slots, (held >= 0) & (held <= query) & (held > query - capacity)  # [T], [T, S]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # The op called directly: `key[:, :, slots] = k` strips k's leading 1 (values [Hkv, T, Dh]), which
        # ExecuTorch's in-place index_put kernel (`run_reinplace_pass`) reads as Dh tokens.
        indices = [None, None, self.slots]
        torch.ops.aten.index_put_(self.key, indices, k)  # [1, Hkv, T, Dh] into [1, Hkv, S, Dh]
        torch.ops.aten.index_put_(self.value, indices, v)
        return self.key, self.value, self.mask


class ExecuTorchDecoder(nn.Module):
    """The reference model with its state as buffers: forward(tokens [1, T], input_pos [1]) -> logits [1, V].

    The buffers are `runtime.contract.state_names`, `{part}_{layer}`, of `state_shape` (the KV caches
    max_seq_len slots long), but the recurrent state as S^T when `transposed_state`.
    """

    def __init__(self, model: Qwen35Model, max_seq_len: int, transposed_state: bool = True):
        super().__init__()
        self.model = model
        self.capacity = max_seq_len
        self.transposed_state = transposed_state  # recurrent buffers hold S^T (see the module docstring)
        t = model.config
        dtype = model.embed_tokens.weight.dtype
        for i, part in state_names(t):
            shape = state_shape(t, part, kv_slots=max_seq_len)
            if part == "recurrent" and transposed_state:
                shape = (*shape[:-2], shape[-1], shape[-2])  # S^T [1, Hv, Dv, Dk]
            kind = torch.float32 if part == "recurrent" else dtype
            self.register_buffer(f"{part}_{i}", torch.zeros(shape, dtype=kind))

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        positions = input_pos[0] + torch.arange(tokens.shape[1])  # [T]: text positions are cache positions
        return self.step(tokens, input_pos, positions.view(1, -1), None)

    def step(self, tokens: Tensor, input_pos: Tensor, positions: Tensor, embeds: Tensor | None) -> Tensor:
        """tokens [1, T] from cache slot input_pos[0] on, at rotary positions [1, T] or [3, 1, T]; embeds [1, T, D] or None."""
        steps = tokens.shape[1]
        # 1.0 continues the sequence, 0.0 starts a new one, whose DeltaNet layers start from zero. A
        # multiply, which XNNPACK runs: a portable `where` on the 1 MB recurrent state took 4.4 ms a
        # layer, more than the layer's weights. A multiply passes on a stale inf or NaN, but the state
        # cannot hold one unless the activations themselves overflowed: each step decays it
        # (exp(g) <= 1, |1 - beta k.k| <= 1 with k L2-normalised) and adds beta v k^T. The recurrent
        # state's multiply does not stay: `fold_state_resets` moves it onto the first step's decay.
        keep = (input_pos[0] > 0).to(torch.float32).view(1, 1, 1)
        slots = input_pos[0] + torch.arange(steps)  # [T]: the cache (sequence) index of each new token
        addressing = RingKV.addressing(slots, self.capacity)
        state = []
        for i, kind in enumerate(self.model.config.layer_types):
            if kind == FULL:
                state.append(RingKV(getattr(self, f"key_{i}"), getattr(self, f"value_{i}"), *addressing))
            else:
                conv, recurrent = getattr(self, f"conv_{i}"), getattr(self, f"recurrent_{i}")
                state.append((conv * keep.to(conv.dtype), self._as_s(recurrent) * keep.unsqueeze(0)))
        ids = tokens if embeds is None else None
        out = self.model(ids, state, positions=positions, inputs_embeds=embeds, last_only=True)
        for i, kind in enumerate(self.model.config.layer_types):
            if kind != FULL:
                getattr(self, f"conv_{i}").copy_(out.state[i][0])
                getattr(self, f"recurrent_{i}").copy_(self._as_s(out.state[i][1]))
        return out.logits[:, -1]  # [1, V]

    def _as_s(self, state: Tensor) -> Tensor:
        """Buffer layout <-> the model's S [B, Hv, Dk, Dv] (a transpose each way when the buffer holds S^T)."""
        return state.transpose(-1, -2) if self.transposed_state else state


class ExecuTorchImageDecoder(ExecuTorchDecoder):
    """Method `forward_with_images(tokens [1, T], image_embeds [N, D], input_pos [1], positions [3, T])` -> logits [1, V].

    The k-th `<|image_pad|>` of tokens takes row k of image_embeds (`splice_image_embeds`); positions
    are the M-RoPE (t, h, w) rotary positions, which after an image differ from the cache slots
    input_pos[0] + i. A session with images runs every call through this method, decode included
    (it passes one unused image row then); it has its own state, separate from `forward`'s.
    """

    def __init__(self, model: Qwen35Model, max_seq_len: int, image_token_id: int, transposed_state: bool = True):
        super().__init__(model, max_seq_len, transposed_state)
        self.image_token_id = image_token_id

    def forward(self, tokens: Tensor, image_embeds: Tensor, input_pos: Tensor, positions: Tensor) -> Tensor:
        embeds = splice_image_embeds(self.model.embed_tokens(tokens), tokens, image_embeds, self.image_token_id)
        return self.step(tokens, input_pos, positions.unsqueeze(1), embeds)


def metadata(config: ModelConfig, options: ExportOptions) -> dict[str, object]:
    """Constant methods, as ExecuTorch's LLM runner reads them (see the module docstring)."""
    t = config.text
    eos = list(t.eos_token_ids) or [t.pad_token_id or 0]
    return {
        "get_max_seq_len": options.prefill_chunk,
        "get_max_context_len": options.max_seq_len,
        "get_vocab_size": t.vocab_size,
        "get_bos_id": t.bos_token_id if t.bos_token_id is not None else -1,
        "get_eos_ids": eos,
        "get_n_layers": t.num_hidden_layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True,
    }


def methods(config: ModelConfig) -> dict[str, dict[str, list[str]]]:
    """The manifest's description of the program's methods (constant methods aside)."""
    described = {FORWARD_METHOD: {"inputs": ["tokens int64 [1, T]", "input_pos int64 [1]"],
                                  "outputs": ["logits float32 [1, V]"]}}
    if config.vision is not None:
        described[IMAGE_METHOD] = {
            "inputs": ["tokens int64 [1, T]", "image_embeds float32 [N, D]", "input_pos int64 [1]", "positions int64 [3, T]"],
            "outputs": ["logits float32 [1, V]"],
            "image_token_id": config.image_token_id,
            "state": "its own, separate from forward's: run a whole image session through this method",
        }
    return described


def export_program(model: Qwen35Model, options: ExportOptions) -> torch.export.ExportedProgram:
    """torch.export of `forward` with a dynamic T in [1, prefill_chunk]; the qwen35:: ops stay single nodes."""
    wrapper = ExecuTorchDecoder(model, options.max_seq_len, _transposed_state(options)).eval()
    steps = torch.export.Dim("T", min=1, max=options.prefill_chunk)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    with torch.no_grad():
        return torch.export.export(wrapper, example, dynamic_shapes=({1: steps}, None), strict=False)


def export_image_program(model: Qwen35Model, config: ModelConfig, options: ExportOptions) -> torch.export.ExportedProgram:
    """torch.export of `forward_with_images`: dynamic T and image rows N, each in [1, prefill_chunk]."""
    wrapper = ExecuTorchImageDecoder(model, options.max_seq_len, config.image_token_id,
                                     _transposed_state(options)).eval()
    steps = torch.export.Dim("T", min=1, max=options.prefill_chunk)
    rows = torch.export.Dim("N", min=1, max=options.prefill_chunk)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.zeros(2, config.text.hidden_size),
               torch.zeros(1, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    dynamic = ({1: steps}, {0: rows}, None, {1: steps})
    with torch.no_grad():
        return torch.export.export(wrapper, example, dynamic_shapes=dynamic, strict=False)


def export_programs(model: Qwen35Model, config: ModelConfig, options: ExportOptions) -> dict[str, torch.export.ExportedProgram]:
    """{method: program}: `forward`, and `forward_with_images` for a checkpoint with a vision tower."""
    programs = {FORWARD_METHOD: export_program(model, options)}
    if config.vision is not None:
        programs[IMAGE_METHOD] = export_image_program(model, config, options)
    return programs


def _transposed_state(options: ExportOptions) -> bool:
    """Whether the recurrent buffers hold S^T: for the delegable delta rule, which computes in S^T."""
    return options.pte_kernels == "stock"
