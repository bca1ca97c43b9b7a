import numpy as np
import pytest
import torch

from forward3d.io.gaussians import read_gaussians, read_gaussians_ply, read_splat, write_gaussians, write_gaussians_ply, write_splat
from forward3d.types import SH_C0, Gaussians


def _random_gaussians(n=50, degree=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    q = torch.randn(n, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    return Gaussians(torch.randn(n, 3, generator=g), q, torch.randn(n, 3, generator=g) * 0.3 - 3,
                     torch.randn(n, generator=g), torch.randn(n, k, 3, generator=g) * 0.5)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_roundtrip_and_layout(tmp_path, degree):
    g = _random_gaussians(degree=degree)
    path = tmp_path / "scene.ply"
    write_gaussians_ply(path, g)
    header = path.read_bytes().split(b"end_header")[0].decode()
    props = [line.split()[-1] for line in header.splitlines() if line.startswith("property")]
    k = (degree + 1) ** 2
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + \
        [f"f_rest_{i}" for i in range(3 * (k - 1))] + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert props == expected
    assert "format binary_little_endian 1.0" in header
    h = read_gaussians_ply(path)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert torch.allclose(getattr(h, name), getattr(g, name), atol=1e-6), name


def test_ply_f_rest_is_channel_major(tmp_path):
    g = _random_gaussians(n=3, degree=1)
    path = tmp_path / "s.ply"
    write_gaussians_ply(path, g)
    raw = path.read_bytes()
    body = raw[raw.index(b"end_header\n") + len(b"end_header\n"):]
    rows = np.frombuffer(body, dtype="<f4").reshape(3, -1)
    # f_rest_0..2 are the 3 degree-1 coefficients of the RED channel
    assert np.allclose(rows[:, 9:12], g.sh[:, 1:, 0].numpy())
    assert np.allclose(rows[:, 12:15], g.sh[:, 1:, 1].numpy())


def test_ply_without_normals_and_ascii(tmp_path):
    path = tmp_path / "a.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 2\n" + "".join(
        f"property float {p}\n" for p in ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
                                         "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]) + "end_header\n"
        "0 0 1 0 0 0 0 -2 -2 -2 1 0 0 0\n1 2 3 1 1 1 1 -1 -1 -1 0 0 0 2\n")
    g = read_gaussians(path)
    assert len(g) == 2 and g.sh_degree == 0
    assert torch.allclose(g.quats[1], torch.tensor([0.0, 0, 0, 1]))


def test_bad_ply_names_file(tmp_path):
    path = tmp_path / "bad.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n")
    with pytest.raises(ValueError, match="bad.ply"):
        read_gaussians_ply(path)
    g = _random_gaussians(n=10)
    write_gaussians_ply(path, g)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated"):
        read_gaussians_ply(path)


def test_splat_roundtrip_quantised(tmp_path):
    g = _random_gaussians(n=40, degree=0)
    g.sh.clamp_(-1.5, 1.5)
    path = tmp_path / "s.splat"
    write_splat(path, g)
    assert path.stat().st_size == 40 * 32
    h = read_splat(path)
    # sorted by -size * opacity: compare as sets via matching means
    order = torch.cdist(h.means, g.means).argmin(1)
    assert torch.allclose(h.means, g.means[order])
    assert torch.allclose(h.scales, g.scales[order], rtol=1e-6)
    assert torch.allclose(h.opacities, g.opacities[order], atol=1 / 255 + 1e-4)
    assert torch.allclose(h.colors, g.colors[order].clamp(0, 1), atol=1 / 255 + 1e-4)
    qd = (h.quats * (g.quats[order] / g.quats[order].norm(dim=-1, keepdim=True))).sum(-1).abs()
    assert (qd > 0.999).all()
    size = (h.log_scales.sum(-1).exp() * h.opacities)
    assert (size[:-1] >= size[1:] - 1e-3).all()


def test_write_dispatch_rejects_unknown(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        write_gaussians(tmp_path / "x.obj", _random_gaussians())
    assert SH_C0 > 0
