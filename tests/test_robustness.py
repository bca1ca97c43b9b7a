"""Robustness on real-world inputs: odd image modes, EXIF rotation, huge photos, partial RGB-D datasets.

Each test is a regression test for a bug found with such inputs (tiny sizes, fast)."""

import json
import zlib
import struct

import numpy as np
import pytest
from PIL import Image

from forward3d.cli import main
from forward3d.data.synthetic import SyntheticScene
from forward3d.io.source_base import apply_exif_orientation, read_rgb


def _png16_rgb(path, a):
    """Write a 16-bit RGB PNG by hand (PIL cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# --- images ---------------------------------------------------------------------------------------

def test_read_rgb_16bit_grey_is_rescaled_not_clipped(tmp_path):
    # PIL's convert("RGB") clips I;16 to 255: a 16-bit grey photo became a white image
    g = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert abs(float(rgb.mean()) - 127.5) < 2 and rgb.min() == 0 and rgb.max() == 255


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK"])
def test_read_rgb_any_mode(tmp_path, mode):
    a = (np.random.default_rng(0).random((10, 14, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).convert(mode).save(tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg")
    rgb = read_rgb(next(tmp_path.iterdir()))
    assert rgb.shape == (10, 14, 3) and rgb.dtype == np.uint8


def test_read_rgb_16bit_rgb(tmp_path):
    a = np.full((6, 8, 3), 40000, np.uint16)
    _png16_rgb(tmp_path / "c16.png", a)
    rgb = read_rgb(tmp_path / "c16.png")
    assert rgb.shape == (6, 8, 3) and 150 < rgb.mean() < 160  # 40000 / 257 = 155.6


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_exif_orientation_matches_pil(orientation):
    from PIL import ImageOps

    a = (np.arange(12).reshape(3, 4) * 20).astype(np.uint8)
    im = Image.fromarray(a)
    im.getexif()[0x0112] = orientation
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(im)), apply_exif_orientation(a, orientation))


# --- splat ----------------------------------------------------------------------------------------

def _depth_png(path, w, h, mm=2000):
    Image.fromarray(np.full((h, w), mm, np.uint16)).save(path)


def _exif_jpeg(path, w, h, orientation=6):
    im = Image.fromarray((np.random.default_rng(1).random((h, w, 3)) * 255).astype(np.uint8))
    ex = Image.Exif()
    ex[0x0112] = orientation
    im.save(path, exif=ex.tobytes())


def test_splat_exif_rotated_photo_depth_in_either_orientation(tmp_path):
    from forward3d.models.depth import read_image_and_depth

    _exif_jpeg(tmp_path / "p.jpg", 16, 12)  # stored 16x12, shown 12x16
    _depth_png(tmp_path / "shown.png", 12, 16)
    d = np.full((12, 16), 2000, np.uint16)
    d[0, 0] = 1000  # marks the stored top-left corner
    Image.fromarray(d).save(tmp_path / "stored.png")
    img, dep = read_image_and_depth(tmp_path / "p.jpg", tmp_path / "shown.png")
    assert img.shape == (16, 12, 3) and dep.shape == (16, 12)
    img, dep = read_image_and_depth(tmp_path / "p.jpg", tmp_path / "stored.png")
    assert dep.shape == (16, 12)
    # orientation 6 = rotate 90 deg clockwise: the stored top-left goes to the shown top-right
    assert dep[0, -1] == pytest.approx(1.0)
    _depth_png(tmp_path / "bad.png", 10, 10)
    with pytest.raises(ValueError, match=r"bad.png: depth size 10x10 differs from the image size 12x16"):
        read_image_and_depth(tmp_path / "p.jpg", tmp_path / "bad.png")


def test_splat_caps_gaussians_of_a_large_photo(tmp_path):
    from forward3d.pipelines.splat import splat_image, unproject_stride
    from forward3d.types import Intrinsics

    assert unproject_stride(12_000_000, 1_000_000) == 4 and unproject_stride(100, 1000) == 1
    assert unproject_stride(12_000_000, None) == 1
    img = np.zeros((300, 400, 3), np.uint8)
    res = splat_image(img, Intrinsics.from_fov(400, 300, 60).K, depth=np.full((300, 400), 2.0, np.float32),
                      max_gaussians=10_000)
    assert len(res.gaussians) <= 10_000 and res.info["stride"] == 4
    # previews are rendered at a bounded size
    from forward3d.pipelines.splat import render_views

    assert render_views(res, np.eye(4)[None], max_side=40).shape == (1, 30, 40, 3)


def test_splat_cli_max_gaussians_and_no_half_written_output(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "i.png")
    _depth_png(tmp_path / "d.png", 40, 30)
    out = tmp_path / "out"
    assert main(["splat", str(tmp_path / "i.png"), "--depth", str(tmp_path / "d.png"), "--out", str(out),
                 "--max-gaussians", "300", "--orbit-frames", "0"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["num_gaussians"] <= 300 and s["files"]["ply"] == str(out / "scene.ply")
    # an error while rendering leaves no half-written output folder
    import forward3d.pipelines.splat as sp

    def boom(*a, **k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(sp, "render_views", boom)
    out2 = tmp_path / "out2"
    with pytest.raises(RuntimeError):
        main(["splat", str(tmp_path / "i.png"), "--depth", str(tmp_path / "d.png"), "--out", str(out2),
              "--orbit-frames", "0"])
    assert not out2.exists() or not any(out2.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_splat_cli_bad_inputs_one_line(tmp_path, capsys):
    (tmp_path / "not.png").write_text("hello")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "i.png")
    _depth_png(tmp_path / "small.png", 20, 20)
    for argv, msg in [([str(tmp_path / "not.png"), "--depth", str(tmp_path / "small.png")], "not.png: not a readable"),
                      ([str(tmp_path / "i.png"), "--depth", str(tmp_path / "small.png")], "small.png: depth size 20x20"),
                      ([str(tmp_path / "i.png"), "--depth", str(tmp_path / "not.png")], "not.png: cannot read depth")]:
        assert main(["splat", *argv, "--out", str(tmp_path / "o")]) != 0
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err


# --- RGB-D layouts with missing depth files -----------------------------------------------------

@pytest.fixture(scope="module")
def small_frames():
    return list(SyntheticScene(num_frames=5, width=41, height=31).frames())


@pytest.mark.parametrize("layout,depth_glob", [("redwood", "depth/*.png"), ("scannet", "depth/*.png"),
                                               ("replica", "results/depth*.png"), ("7scenes", "*/frame-*.depth.png")])
def test_missing_depth_file_skips_that_frame_only(tmp_path, small_frames, layout, depth_glob, caplog):
    from forward3d.io import open_frames
    from forward3d.io.source_base import natural_key
    from forward3d.io.sources import write_layout

    root = tmp_path / f"{layout} ü x"  # spaces and non-ASCII in the path
    write_layout(small_frames, root, layout)
    depths = sorted(root.glob(depth_glob), key=lambda p: natural_key(p.name))
    assert len(depths) == 5
    depths[2].unlink()
    with caplog.at_level("WARNING"):
        src = open_frames(root)
        frames = list(src)
    assert src.has_depth and len(frames) == 4
    assert all(f.depth is not None for f in frames)
    assert "1 of 5 frames have no depth file" in caplog.text
    # the ground-truth poses stay with their frames
    gt = [f.c2w for i, f in enumerate(small_frames) if i != 2]
    for f, g in zip(frames, gt):
        if f.c2w is not None:
            np.testing.assert_allclose(f.c2w, g, atol=1e-5)


def test_image_folder_missing_depth_skips_that_frame(tmp_path, small_frames):
    from forward3d.io import open_frames
    from forward3d.io.sources import write_layout

    root = write_layout(small_frames, tmp_path / "imgs", "images")
    sorted((root / "depth").iterdir())[1].unlink()
    src = open_frames(root)
    frames = list(src)
    assert src.has_depth and len(frames) == 4 and all(f.depth is not None for f in frames)


def test_image_folder_of_mixed_sizes(tmp_path, small_frames, caplog):
    """Same aspect ratio: resized to the first frame's size (K scaled); another aspect ratio: that
    frame is skipped with a one-line reason. Before, frames kept their own sizes and the
    reconstruction wrote one image size with K of another (wrong COLMAP/nerfstudio cameras)."""
    from forward3d.io import open_frames

    root = tmp_path / "mixed"
    root.mkdir()
    for i, f in enumerate(small_frames[:4]):
        im = Image.fromarray(f.image)  # 41x31
        if i == 1:
            im = im.resize((82, 62))
        if i == 2:
            im = im.transpose(Image.Transpose.ROTATE_90)
        im.save(root / f"{i}.png")
    with caplog.at_level("WARNING"):
        frames = list(open_frames(root, intrinsics=small_frames[0].K))
    assert [f.name for f in frames] == ["0", "1", "3"]
    assert all(f.image.shape == (31, 41, 3) for f in frames)
    np.testing.assert_allclose(frames[1].K, frames[0].K)
    assert "2.png: image size 31x41 has another aspect ratio than the first frame's 41x31" in caplog.text
    with pytest.raises(ValueError, match="another aspect ratio"):
        list(open_frames(root, on_error="raise"))


def test_open_frames_intrinsics_as_four_numbers(tmp_path, small_frames):
    """``forward3d recon --intrinsics FX FY CX CY`` passes 4 numbers: every frame used to fail
    ('expected a [3, 3] K, found shape [4]') and the run ended with 'first 10 frames could not be read'."""
    from forward3d.io import open_frames
    from forward3d.io.sources import write_layout

    root = write_layout(small_frames[:2], tmp_path / "imgs", "images")
    frames = list(open_frames(root, intrinsics=[30.0, 31.0, 20.5, 15.5]))
    assert len(frames) == 2
    np.testing.assert_allclose(frames[0].K, [[30, 0, 20.5], [0, 31, 15.5], [0, 0, 1]])
    frames = list(open_frames(root, intrinsics=[30.0, 31.0, 20.5, 15.5], size=(82, 62)))
    np.testing.assert_allclose(frames[0].K[0, 0], 60.0)
    for bad in ([0, 0, 20, 15], [np.nan, 1, 2, 3], [1, 2, 3]):
        with pytest.raises(ValueError, match="intrinsics: expected"):
            open_frames(root, intrinsics=bad)


def test_splat_rejects_bad_camera(tmp_path, capsys):
    from forward3d.pipelines.splat import splat_image

    img, d = np.zeros((8, 10, 3), np.uint8), np.ones((8, 10), np.float32)
    with pytest.raises(ValueError, match="positive focal"):
        splat_image(img, np.diag([0.0, 0.0, 1.0]), depth=d)  # used to write NaN/inf Gaussians
    Image.fromarray(img).save(tmp_path / "i.png")
    _depth_png(tmp_path / "d.png", 10, 8)
    # --fov 0 used to fall back silently to 60 degrees
    assert main(["splat", str(tmp_path / "i.png"), "--depth", str(tmp_path / "d.png"), "--fov", "0",
                 "--out", str(tmp_path / "o")]) != 0
    assert "fov" in capsys.readouterr().err


def test_flash3d_portrait_input_warns_about_stretching(caplog):
    from forward3d.models.flash3d.preprocess import prepare_input

    K = np.array([[80.0, 0, 45], [0, 80, 80], [0, 0, 1]])
    with caplog.at_level("WARNING"):
        inp = prepare_input(np.zeros((160, 90, 3), np.uint8), K, 64, 96, 8, np.ones((160, 90), np.float32))
    assert "stretched" in caplog.text and inp.image.shape == (1, 3, 80, 112)
    # the intrinsics follow the per-axis scaling
    np.testing.assert_allclose(inp.K_tgt[0, 0, 0].item(), 80 * 96 / 90, rtol=1e-6)
    np.testing.assert_allclose(inp.K_tgt[0, 1, 1].item(), 80 * 64 / 160, rtol=1e-6)
    caplog.clear()
    with caplog.at_level("WARNING"):
        prepare_input(np.zeros((48, 72, 3), np.uint8), K, 64, 96, 8)
    assert "stretched" not in caplog.text


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_splat_depth_visualisation_png_is_refused(tmp_path, mode):
    """An 8-bit grey or colourised depth picture was read as millimetres (150 -> 0.15 m) or its red
    channel was taken: a silently wrong scene."""
    from forward3d.models.depth import read_depth_file

    Image.fromarray(np.full((6, 8), 150, np.uint8)).convert(mode).save(tmp_path / "vis.png")
    with pytest.raises(ValueError, match=r"vis.png: cannot read depth map \(expected a 16-bit"):
        read_depth_file(tmp_path / "vis.png")


def _inria_ply(path, n=60, nan_rows=(5,)):
    """A 3DGS PLY as the reference trainer writes it (normals, SH degree 3), some rows NaN/inf."""
    rng = np.random.default_rng(0)
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    a = np.zeros((n, len(names)), np.float32)
    a[:, :3] = rng.normal(size=(n, 3)) * 0.3
    a[:, 6:9] = rng.normal(size=(n, 3))
    a[:, 9:54] = rng.normal(size=(n, 45)) * 0.1
    a[:, 54], a[:, 55:58], a[:, 58] = 2.0, -3.0, 1.0
    for r in nan_rows:
        a[r, 0] = np.nan
        a[r + 1, 56] = np.inf
    hdr = f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n" + "".join(
        f"property float {x}\n" for x in names) + "end_header\n"
    path.write_bytes(hdr.encode() + a.astype("<f4").tobytes())


def test_render_sh3_ply_with_non_finite_rows(tmp_path, caplog):
    """One NaN Gaussian made the orbit centre NaN: every rendered view was black."""
    from forward3d.io.gaussians import read_gaussians

    _inria_ply(tmp_path / "scene.ply")
    with caplog.at_level("WARNING"):
        g = read_gaussians(tmp_path / "scene.ply")
    assert len(g) == 58 and g.sh.shape[1:] == (16, 3) and "dropping 2 of 60" in caplog.text
    out = tmp_path / "r"
    assert main(["render", str(tmp_path / "scene.ply"), "--frames", "2", "--width", "32", "--height", "24",
                 "--video", "none", "--out", str(out)]) == 0
    views = sorted(out.glob("*.png"))
    assert len(views) == 2 and all(np.asarray(Image.open(v)).mean() > 5 for v in views)


def test_depth_npy_layouts(tmp_path):
    from forward3d.models.depth import read_depth_file

    for shape in [(6, 8), (6, 8, 1), (1, 6, 8)]:
        np.save(tmp_path / "d.npy", np.full(shape, 2.0, np.float32))
        assert read_depth_file(tmp_path / "d.npy").shape == (6, 8)
    np.save(tmp_path / "d.npy", np.full((6, 8, 3), 2.0, np.float32))  # used to take channel 0 silently
    with pytest.raises(ValueError, match=r"d.npy: expected a single-channel \[H, W\] depth map, found shape \[6, 8, 3\]"):
        read_depth_file(tmp_path / "d.npy")


def test_image_folder_exif_rotated_photos_with_depth(tmp_path):
    """Phone photos are stored landscape with EXIF orientation 6; their depth maps (no EXIF) are in
    the stored orientation: every frame was skipped for a depth/colour size mismatch."""
    from forward3d.io import open_frames

    (tmp_path / "depth").mkdir()
    for i in range(2):
        _exif_jpeg(tmp_path / f"{i}.jpg", 16, 12)
        _depth_png(tmp_path / "depth" / f"{i}.png", 16, 12)
    frames = list(open_frames(tmp_path, intrinsics=[10, 10, 6, 8], on_error="raise"))
    assert len(frames) == 2 and frames[0].image.shape == (16, 12, 3) and frames[0].depth.shape == (16, 12)
