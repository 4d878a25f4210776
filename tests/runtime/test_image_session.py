"""Image prompts end to end on every backend of a multimodal bundle, against transformers' Qwen3.5.

One bundle (ONNX and ExecuTorch, fp32) is exported from a tiny random-weight
`Qwen3_5ForConditionalGeneration` (one DeltaNet and one attention layer): its vision encoders (`vision.onnx`,
`vision.pte`) and its decoders' image paths (`image_embeds` input,
`forward_with_images` method). A Pillow image goes through `runtime.image`,
the bundle's encoder and decoder, and the logits after the prompt and after
each decode step are compared with transformers on the same pixels.

Tolerance: 1e-4 x the logit scale, as test_parity (measured about 1e-5 here):
fp32 artifacts differ from the eager model only in summation order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import runtime
from exporter.artifact import ExportOptions
from exporter.bundle import export_bundle
from exporter.cli import main
from runtime.bundle import open_bundle
from runtime.errors import BundleError, QwenEdgeError
from runtime.image import preprocess
from runtime.validate import validate_bundle, validation_image
from runtime.vision import image_spec
from tests.exporter.oracle import MULTIMODAL_IDS, build, save
from tests.exporter.test_parity import assert_close_to_scale
from tests.runtime.fakes import fake_bundle

START, END, PAD = (MULTIMODAL_IDS[k] for k in ("vision_start_token_id", "vision_end_token_id", "image_token_id"))
BACKENDS = ["reference", "onnx", "pte"]
DECODE_STEPS = 4


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    """(transformers model, checkpoint, bundle) of one tiny multimodal model."""
    hf = build("conditional", variant="two-layers")
    root = tmp_path_factory.mktemp("multimodal")
    checkpoint = save(hf, root / "ckpt")
    # A prefill chunk of 32: the image's 70 tokens span three calls, split mid-image.
    options = ExportOptions(max_seq_len=256, prefill_chunk=32)
    export_bundle(str(checkpoint), root / "bundle", formats=["onnx", "pte"], options=options, validate=False)
    return hf, checkpoint, open_bundle(root / "bundle")


def _prompt() -> list[int]:
    return [11, 12, START, PAD, END, 13, 14, 15]


@pytest.mark.parametrize("backend", BACKENDS)
@torch.no_grad()
def test_image_prompt_matches_transformers(multimodal, backend):
    hf, checkpoint, bundle = multimodal
    image = preprocess(validation_image(), image_spec(bundle))
    session = runtime.load(bundle, backend, model=checkpoint)
    logits = session.prefill_images(_prompt(), [image])

    ids = [11, 12, START, *[PAD] * image.num_tokens, END, 13, 14, 15]
    input_ids = torch.tensor([ids])
    out = hf(input_ids=input_ids, pixel_values=torch.from_numpy(image.pixel_values),
             image_grid_thw=torch.tensor([image.grid_thw]), mm_token_type_ids=(input_ids == PAD).int(), use_cache=True)
    assert session.pos == len(ids)
    assert_close_to_scale(torch.from_numpy(logits)[None], out.logits[:, -1], f"{backend}: logits after the image prompt")

    cache = out.past_key_values
    for step in range(DECODE_STEPS):  # decode continues at the M-RoPE position after the image, not at the slot
        token = int(out.logits[0, -1].argmax())
        out = hf(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits = session.decode(token)
        assert_close_to_scale(torch.from_numpy(logits)[None], out.logits[:, -1], f"{backend}: decode step {step}")


@pytest.mark.parametrize("backend", ["onnx", "pte"])
@torch.no_grad()
def test_text_prompts_on_a_multimodal_bundle_need_no_image_input(multimodal, backend):
    """ONNX: image_embeds has a default; ExecuTorch: `forward` is untouched. A text sequence after an image one is clean."""
    hf, checkpoint, bundle = multimodal
    session = runtime.load(bundle, backend)
    image = preprocess(validation_image(), image_spec(bundle))
    session.prefill_images(_prompt(), [image])
    session.reset()
    ids = [21, 22, 23, 24, 25]
    logits = session.prefill(ids)
    ref = hf(input_ids=torch.tensor([ids])).logits[:, -1]
    assert_close_to_scale(torch.from_numpy(logits)[None], ref, f"{backend}: text prompt")


def test_manifest_describes_the_vision_encoder(multimodal):
    _, _, bundle = multimodal
    vision = bundle.manifest["vision"]
    assert [a["format"] for a in vision["artifacts"]] == ["onnx", "pte"]
    assert vision["token_ids"] == {"image": PAD, "vision_start": START, "vision_end": END}
    spec = image_spec(bundle)
    assert spec.max_pixels <= vision["artifacts"][0]["details"]["max_pixels"]
    assert "forward_with_images" in bundle.artifact("pte")["details"]["methods"]
    names = [i["name"] for i in bundle.artifact("onnx")["details"]["inputs"]]
    assert names[:3] == ["input_ids", "position_ids", "image_embeds"]


def test_validation_covers_the_image_prompt(multimodal):
    _, checkpoint, bundle = multimodal
    report = validate_bundle(bundle, ["onnx", "pte"], model=checkpoint)
    assert report["passed"], report
    for entry in report["artifacts"]:
        image_checks = [c for c in entry["checks"] if c["name"].startswith("image prompt")]
        assert len(image_checks) == 2 and all(c["passed"] for c in image_checks), entry["backend"]


@pytest.mark.parametrize("backend", ["onnx", "pte"])
def test_cli_run_with_an_image(multimodal, backend, tmp_path, capsys):
    _, checkpoint, bundle = multimodal
    path = tmp_path / "photo.png"
    validation_image().save(path)
    ids = ",".join(map(str, _prompt()))
    assert main(["run", str(bundle.root), "--backend", backend, "--image", str(path), "--prompt-ids", ids,
                 "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    expected = runtime.load(bundle, "reference", model=checkpoint).generate(_prompt(), 6, images=[path])
    assert [int(t) for t in out.split(",")] == expected.ids


def test_images_need_a_multimodal_bundle_and_a_placeholder(multimodal, tmp_path):
    _, _, bundle = multimodal
    image = preprocess(validation_image(), image_spec(bundle))
    session = runtime.load(bundle, "onnx")
    with pytest.raises(QwenEdgeError, match="1 runs of <|image_pad|> but 2 images"):
        session.prefill_images(_prompt(), [image, image])
    with pytest.raises(QwenEdgeError, match="0 runs of <|image_pad|> but 1 images"):
        session.generate([11, 12, 13], 1, images=[image])
    text_only = runtime.load(fake_bundle("tiny", tmp_path / "text"), "reference")
    with pytest.raises(BundleError, match="has no vision encoder"):
        text_only.generate([1, 2, 3], 1, images=[validation_image()])


def test_image_rows_are_spread_over_prefill_chunks(multimodal):
    """The 70 image tokens cross chunk boundaries: each call gets exactly its own rows, in order."""
    _, _, bundle = multimodal
    seen = []
    session = runtime.load(bundle, "onnx")
    forward = session.backend.forward

    def spy(ids, pos, *, positions=None, image_embeds=None):
        seen.append((len(ids), int((ids == PAD).sum()), None if image_embeds is None else len(image_embeds)))
        return forward(ids, pos, positions=positions, image_embeds=image_embeds)

    session.backend.forward = spy
    image = preprocess(validation_image(), image_spec(bundle))
    session.prefill_images(_prompt(), [image])
    assert sum(n for _, n, _ in seen) == image.num_tokens
    assert all(pads == rows for _, pads, rows in seen) and len(seen) == int(np.ceil((len(_prompt()) + image.num_tokens - 1) / 32))


def test_inspect_lists_the_vision_encoders(multimodal):
    from exporter.inspect import inspect_any

    _, _, bundle = multimodal
    text = inspect_any(str(bundle.root))
    assert "vision encoder onnx (fp32" in text and "vision encoder pte (fp32" in text
    assert f"'image': {PAD}" in text and "images: 65536..1048576 px" in text


@torch.no_grad()
def test_text_only_export_of_a_multimodal_checkpoint_drops_every_image_path(multimodal, tmp_path):
    """`--text-only`: no vision encoder, no image method or input, a text-only config; text logits unchanged."""
    hf, checkpoint, full = multimodal
    assert list(full.artifact("pte")["details"]["methods"]) == ["forward", "forward_with_images"]
    out = tmp_path / "text-only"
    assert main(["export", str(checkpoint), "--out", str(out), "--format", "onnx,pte", "--text-only",
                 "--max-seq-len", "64", "--prefill-chunk", "16"]) == 0
    bundle = open_bundle(out)
    manifest = bundle.manifest
    assert "vision" not in manifest and "vision_config" not in manifest["model"]
    assert manifest["export"]["text_only"] is True and manifest["validation"]["passed"]
    assert not any(path.name.startswith("vision") for path in out.iterdir())
    assert list(bundle.artifact("pte")["details"]["methods"]) == ["forward"]
    import onnx

    inputs = [i.name for i in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.input]
    assert "input_ids" in inputs and "image_embeds" not in inputs
    ids = [21, 22, 23, 24, 25]
    ref = hf(input_ids=torch.tensor([ids])).logits[:, -1]
    for backend in ("onnx", "pte"):
        logits = runtime.load(bundle, backend).prefill(ids)
        assert_close_to_scale(torch.from_numpy(logits)[None], ref, f"{backend}: text-only bundle")


_TORCH_FREE_SESSION = """
import sys
import numpy as np
import runtime
from runtime.image import preprocess
from runtime.validate import validation_image
from runtime.vision import image_spec
session = runtime.load(sys.argv[1], "onnx", threads=1)
image = preprocess(validation_image(), image_spec(session.bundle))
logits = [session.prefill_images([int(t) for t in sys.argv[3].split(",")], [image])]
logits.append(session.decode(int(np.argmax(logits[-1]))))
np.save(sys.argv[2], np.stack(logits))
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "exporter")))
print("loaded:", ",".join(loaded))
"""


def test_an_onnx_image_session_never_imports_torch(multimodal, tmp_path):
    """The runtime's ONNX path (preprocessing, grid tables, encoder, decoder) needs no torch and no exporter."""
    import subprocess
    import sys

    _, checkpoint, bundle = multimodal
    out = tmp_path / "logits.npy"
    done = subprocess.run([sys.executable, "-c", _TORCH_FREE_SESSION, str(bundle.root), str(out),
                           ",".join(map(str, _prompt()))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "loaded:", done.stdout
    # The same numbers as an ONNX session in this (torch-importing) process: the run was the real one.
    session = runtime.load(bundle, "onnx", threads=1)
    image = preprocess(validation_image(), image_spec(bundle))
    expected = [session.prefill_images(_prompt(), [image])]
    expected.append(session.decode(int(np.argmax(expected[-1]))))
    np.testing.assert_array_equal(np.load(out), np.stack(expected))
