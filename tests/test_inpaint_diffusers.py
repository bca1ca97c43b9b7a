"""The diffusers (SD-2 style) inpainting path of ``forward3d scene``, run for real on a tiny randomly
initialised StableDiffusionInpaintPipeline that the test builds and saves in the diffusers folder layout
(no weights can be downloaded here): the same loading, resizing, masking and pasting code that a real
``stabilityai/stable-diffusion-2-inpainting`` download goes through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers", reason="pip install 'forward3d[gen]'")

pytestmark = pytest.mark.usefixtures("one_thread")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (the base vocabulary of a byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_tiny_sd_inpainting(folder: Path) -> Path:
    """A StableDiffusionInpaintPipeline with tiny random UNet (9 input channels), VAE, CLIP text encoder
    and a byte-level CLIP tokenizer (no merges), saved with ``save_pretrained`` into ``folder``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=9,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=(2, 4), norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        norm_num_groups=8)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32,
                                        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                        vocab_size=600, max_position_embeddings=77))
    vocab = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for c in _bytes_to_unicode().values():
        for t in (c, c + "</w>"):
            vocab.setdefault(t, len(vocab))
    tok_dir = folder / "_tokenizer_src"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="!",
                        model_max_length=77)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False)
    pipe = StableDiffusionInpaintPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched,
                                          safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(folder / "sd-inpainting")
    return folder / "sd-inpainting"


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return build_tiny_sd_inpainting(tmp_path_factory.mktemp("sd"))


def test_diffusers_inpainter_fills_only_the_hole(sd_folder):
    from forward3d.models.inpaint import DiffusersInpainter, make_inpainter

    inp = make_inpainter(str(sd_folder), steps=3, size=(64, 64), seed=7)
    assert isinstance(inp, DiffusersInpainter) and inp.size == (64, 64)
    rng = np.random.default_rng(0)
    image = (rng.random((48, 80, 3)) * 255).astype(np.uint8)  # not the working size: resized there and back
    mask = np.zeros((48, 80), bool)
    mask[:, 50:] = True
    out = inp.inpaint(image, mask, prompt="a living room")
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], image[~mask])  # known pixels untouched
    assert np.abs(out[mask].astype(int) - image[mask]).mean() > 5  # the hole was repainted
    np.testing.assert_array_equal(inp.inpaint(image, mask, prompt="a living room"), out)  # seeded: repeatable
    other = DiffusersInpainter(sd_folder, steps=3, size=(64, 64), seed=8).inpaint(image, mask, prompt="a living room")
    assert not np.array_equal(other, out)
    np.testing.assert_array_equal(inp.inpaint(image, np.zeros_like(mask)), image)  # empty mask: no-op


def test_diffusers_inpainter_refuses_a_text_to_image_folder(sd_folder, tmp_path):
    import shutil

    from forward3d.models.inpaint import DiffusersInpainter

    bad = tmp_path / "txt2img"
    shutil.copytree(sd_folder, bad)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["in_channels"] = 4
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unet.config\.json.*in_channels is 4"):
        DiffusersInpainter(bad)


def test_cli_scene_with_the_diffusers_inpainter(sd_folder, tmp_path):
    """``forward3d scene --inpainter FOLDER``: the whole stage loop with the diffusion inpainter."""
    from forward3d.cli import main
    from forward3d.data.synthetic import SyntheticScene
    from forward3d.data.synthetic_camera import look_at
    from forward3d.io.video import write_png
    from forward3d.pipelines.oracle import OracleView
    from forward3d.types import Intrinsics

    W, H = 64, 48
    K = Intrinsics.from_fov(W, H, 70.0).K
    c0 = look_at(np.array([[0.0, 1.5, 0.0]]), np.array([[0.0, 1.5, 1.0]]))[0]
    image, depth = OracleView(SyntheticScene(num_frames=1, num_boxes=4), c0, K, W, H).render(np.eye(4))
    write_png(tmp_path / "room.png", image)
    np.save(tmp_path / "room.npy", depth)
    out = tmp_path / "scene"
    rc = main(["scene", str(tmp_path / "room.png"), "--mode", "stage", "--depth", str(tmp_path / "room.npy"),
               "--intrinsics", str(K[0, 0]), str(K[1, 1]), str(K[0, 2]), str(K[1, 2]),
               "--inpainter", str(sd_folder), "--prompt", "a room", "--inpaint-steps", "2", "--inpaint-size", "64",
               "--fit-steps", "2", "--orbit-frames", "0", "--video", "none", "--view-size", "64",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inpainter"] == "diffusers" and summary["yaws"] == [0.0, 25.0, -25.0]
    assert (out / "scene.ply").is_file()
    assert main(["scene", str(tmp_path / "room.png"), "--depth", str(tmp_path / "room.npy"),
                 "--inpaint-size", "60", "--out", str(tmp_path / "x")]) == 2  # not a multiple of 8
