"""UniMatch pieces of DepthSplat's depth branch: the CNN, the swin-window multi-view transformer, the
ViTDet feature pyramid and the plane-sweep warp.

Keys (under ``depth_predictor.``): ``backbone.{conv1, layer1..3, conv2}``,
``transformer.layers.N.{self_attn, cross_attn_ffn}.{q_proj, k_proj, v_proj, merge, norm1[, mlp, norm2]}``,
``{mv,mono}_pyramid.stages.1.{0, 2}``.

Shapes: ``B`` batch, ``V`` views, ``N = B*V`` flattened ``(b v)``, ``C`` channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CNNEncoder", "MultiViewTransformer", "FeaturePyramid", "add_window_position", "split_windows",
           "merge_windows", "gather_views", "plane_sweep_warp"]


# -------------------------------------------------------------------------------------------------
# CNN (UniMatch ResNet with non-affine InstanceNorm)
# -------------------------------------------------------------------------------------------------
class _ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm1 = nn.InstanceNorm2d(cout)
        self.norm2 = nn.InstanceNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.norm3 = nn.InstanceNorm2d(cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride), self.norm3)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class CNNEncoder(nn.Module):
    """7x7/2 stem, stages 64 / 96 / 128 (2 residual blocks each), 1x1 conv to ``out_dim``.

    ``forward(x)``: ``[N, 3, H, W]`` (ImageNet-normalised) -> ``[f_1/2 (64), f_1/2|1/4 (96), f_low (out_dim)]``,
    high to low resolution. With ``lowest=4`` stage 2 keeps stride 1 (features at 1/2, 1/2, 1/4).
    """

    def __init__(self, out_dim: int = 128, lowest: int = 4) -> None:
        super().__init__()
        dims = (64, 96, 128)
        self.conv1 = nn.Conv2d(3, dims[0], 7, 2, 3, bias=False)
        self.norm1 = nn.InstanceNorm2d(dims[0])
        self.layer1 = nn.Sequential(_ResidualBlock(dims[0], dims[0], 1), _ResidualBlock(dims[0], dims[0], 1))
        s2 = 1 if lowest == 4 else 2
        self.layer2 = nn.Sequential(_ResidualBlock(dims[0], dims[1], s2), _ResidualBlock(dims[1], dims[1], 1))
        self.layer3 = nn.Sequential(_ResidualBlock(dims[1], dims[2], 2), _ResidualBlock(dims[2], dims[2], 1))
        self.conv2 = nn.Conv2d(dims[2], out_dim, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.layer1(F.relu(self.norm1(self.conv1(x))))
        f1 = x
        x = self.layer2(x)
        f2 = x
        return [f1, f2, self.conv2(self.layer3(x))]


# -------------------------------------------------------------------------------------------------
# windows and position code
# -------------------------------------------------------------------------------------------------
def split_windows(x: Tensor, k: int) -> Tensor:
    """``[N, H, W, C]`` -> ``[N*k*k, H/k, W/k, C]`` (window-major within each item)."""
    n, h, w, c = x.shape
    return x.view(n, k, h // k, k, w // k, c).permute(0, 1, 3, 2, 4, 5).reshape(n * k * k, h // k, w // k, c)


def merge_windows(x: Tensor, k: int) -> Tensor:
    """Inverse of :func:`split_windows`: ``[N*k*k, h, w, C]`` -> ``[N, k*h, k*w, C]``."""
    b, h, w, c = x.shape
    n = b // (k * k)
    return x.view(n, k, k, h, w, c).permute(0, 1, 3, 2, 4, 5).reshape(n, k * h, k * w, c)


def sine_position(h: int, w: int, channels: int, device: torch.device, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised sine code for an ``h x w`` grid: ``[channels, h, w]`` (y half first, then x)."""
    npf = channels // 2
    ones = torch.ones(h, w, device=device)
    y = ones.cumsum(0, dtype=torch.float32)
    x = ones.cumsum(1, dtype=torch.float32)
    y = y / (y[-1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, -1:] + 1e-6) * 2 * math.pi
    dim_t = torch.arange(npf, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / npf)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=3).flatten(2)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=3).flatten(2)
    return torch.cat((py, px), dim=2).permute(2, 0, 1)


def add_window_position(x: Tensor, k: int) -> Tensor:
    """Add the sine position code computed inside each of the ``k x k`` windows: ``[N, C, H, W]``."""
    n, c, h, w = x.shape
    pos = sine_position(h // k, w // k, c, x.device).to(x.dtype)  # [C, h/k, w/k]
    return x + pos.repeat(1, k, k)[None]


def _shift_mask(h: int, w: int, k: int, device: torch.device) -> Tensor:
    """Swin's shifted-window mask: ``[k*k, (h/k)*(w/k), (h/k)*(w/k)]`` with 0 / -100."""
    wh, ww = h // k, w // k
    sh, sw = wh // 2, ww // 2
    img = torch.zeros(1, h, w, 1, device=device)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = split_windows(img, k).view(-1, wh * ww)
    m = win.unsqueeze(1) - win.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


def _window_attention(q: Tensor, k: Tensor, v: Tensor, h: int, w: int, splits: int, shift: bool,
                      mask: Tensor | None) -> Tensor:
    """Single-head split-window attention. ``q`` ``[N, L, C]``; ``k``, ``v`` ``[N, M, L, C]`` (M source views,
    attended jointly) -> ``[N, L, C]``."""
    n, _, c = q.shape
    m = k.shape[1]
    wh, ww = h // splits, w // splits
    q = q.view(n, h, w, c)
    k = k.view(n, m, h, w, c)
    v = v.view(n, m, h, w, c)
    if shift:
        q = torch.roll(q, shifts=(-(wh // 2), -(ww // 2)), dims=(1, 2))
        k = torch.roll(k, shifts=(-(wh // 2), -(ww // 2)), dims=(2, 3))
        v = torch.roll(v, shifts=(-(wh // 2), -(ww // 2)), dims=(2, 3))
    nb = n * splits * splits
    q = split_windows(q, splits).reshape(nb, wh * ww, c)
    # keys of all source views of a window side by side: [nb, M*wh*ww, C], view-minor per token
    k = split_windows(k.permute(0, 2, 3, 4, 1).reshape(n, h, w, c * m), splits)
    v = split_windows(v.permute(0, 2, 3, 4, 1).reshape(n, h, w, c * m), splits)
    k = k.view(nb, wh, ww, c, m).permute(0, 1, 2, 4, 3).reshape(nb, -1, c)
    v = v.view(nb, wh, ww, c, m).permute(0, 1, 2, 4, 3).reshape(nb, -1, c)
    scores = q @ k.transpose(1, 2) / c ** 0.5  # [nb, L_w, L_w*M]
    if shift and mask is not None:
        # tiled over the M source views exactly as the reference does (``repeat(b, 1, m)``), although its
        # keys are view-minor; for two views (M = 1) this is the plain swin mask
        scores = scores + mask.repeat(n, 1, m)
    out = torch.softmax(scores, dim=-1) @ v
    out = merge_windows(out.view(nb, wh, ww, c), splits)
    if shift:
        out = torch.roll(out, shifts=(wh // 2, ww // 2), dims=(1, 2))
    return out.reshape(n, -1, c)


class _TransformerLayer(nn.Module):
    """Bias-free q/k/v/merge, post-LN message; with FFN the message is ``norm2(mlp([x, norm1(msg)]))``."""

    def __init__(self, d: int, ffn: bool, expansion: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.merge = nn.Linear(d, d, bias=False)
        self.norm1 = nn.LayerNorm(d)
        self.ffn = ffn
        if ffn:
            self.mlp = nn.Sequential(nn.Linear(2 * d, 2 * d * expansion, bias=False), nn.GELU(),
                                     nn.Linear(2 * d * expansion, d, bias=False))
            self.norm2 = nn.LayerNorm(d)

    def forward(self, x: Tensor, src: Tensor, h: int, w: int, splits: int, shift: bool, mask: Tensor | None) -> Tensor:
        """``x`` ``[N, L, C]``, ``src`` ``[N, M, L, C]`` -> ``[N, L, C]``."""
        msg = _window_attention(self.q_proj(x), self.k_proj(src), self.v_proj(src), h, w, splits, shift, mask)
        msg = self.norm1(self.merge(msg))
        if self.ffn:
            msg = self.norm2(self.mlp(torch.cat([x, msg], dim=-1)))
        return x + msg


class _TransformerBlock(nn.Module):
    def __init__(self, d: int, expansion: int, shift: bool) -> None:
        super().__init__()
        self.shift = shift
        self.self_attn = _TransformerLayer(d, False, expansion)
        self.cross_attn_ffn = _TransformerLayer(d, True, expansion)

    def forward(self, x: Tensor, src: Tensor, h: int, w: int, splits: int, mask: Tensor | None) -> Tensor:
        x = self.self_attn(x, x[:, None], h, w, splits, self.shift, mask)
        return self.cross_attn_ffn(x, src, h, w, splits, self.shift, mask)


def gather_views(x: Tensor, nn_index: Tensor | None) -> Tensor:
    """For every view its source views: ``x`` ``[B, V, ...]`` -> ``[B, V, M, ...]``.

    Without ``nn_index`` all other views in order (``M = V-1``); with ``nn_index`` ``[B, V, 1+M]`` (self
    first) the listed ones.
    """
    b, v = x.shape[:2]
    if nn_index is None:
        idx = torch.tensor([[j for j in range(v) if j != i] for i in range(v)], device=x.device, dtype=torch.long)
        idx = idx[None].expand(b, -1, -1)
    else:
        idx = nn_index[:, :, 1:]
    bi = torch.arange(b, device=x.device)[:, None, None]
    return x[bi, idx]


class MultiViewTransformer(nn.Module):
    """Swin-window multi-view transformer: per block self-attention, then cross-attention over the keys of
    the source views jointly (+FFN). Odd blocks shift the windows by half.

    ``forward(x, nn_index)``: ``x`` ``[B, V, C, H, W]`` -> ``[B, V, C, H, W]``.
    """

    def __init__(self, num_layers: int, d: int, expansion: int, splits: int) -> None:
        super().__init__()
        self.splits = splits
        self.layers = nn.ModuleList(_TransformerBlock(d, expansion, i % 2 == 1) for i in range(num_layers))

    def forward(self, x: Tensor, nn_index: Tensor | None = None) -> Tensor:
        b, v, c, h, w = x.shape
        mask = _shift_mask(h, w, self.splits, x.device) if self.splits > 1 else None
        t = x.flatten(3).transpose(-1, -2)  # [B, V, L, C]
        for layer in self.layers:
            src = gather_views(t, nn_index)  # [B, V, M, L, C]
            # the reference batches views view-major: (v b)
            tq = t.transpose(0, 1).reshape(v * b, h * w, c)
            ts = src.transpose(0, 1).reshape(v * b, src.shape[2], h * w, c)
            t = layer(tq, ts, h, w, self.splits, mask).view(v, b, h * w, c).transpose(0, 1)
        return t.transpose(-1, -2).reshape(b, v, c, h, w)


class FeaturePyramid(nn.Module):
    """ViTDet simple pyramid with scales (1, 2): identity, and ConvT 2x2 -> C/2, GELU, 3x3 conv.

    ``forward(x)``: ``[N, C, h, w]`` -> ``[x, [N, C/2, 2h, 2w]]`` (low to high resolution).
    """

    def __init__(self, dim: int, num_scales: int) -> None:
        super().__init__()
        stages = [nn.Sequential()]
        for _ in range(1, num_scales):
            stages.append(nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), nn.GELU(),
                                        nn.Conv2d(dim // 2, dim // 2, 3, 1, 1)))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [s(x) for s in self.stages]


# -------------------------------------------------------------------------------------------------
# plane sweep
# -------------------------------------------------------------------------------------------------
def plane_sweep_warp(feat: Tensor, K: Tensor, rel: Tensor, depth: Tensor, z_min: float = 1e-3) -> Tensor:
    """Warp source features onto the reference view's depth planes.

    Args:
        feat: ``[N, C, h, w]`` source-view features.
        K: ``[N, 3, 3]`` pixel intrinsics of the *reference* view (used to unproject and to project).
        rel: ``[N, 4, 4]`` reference-camera to source-camera transform.
        depth: ``[N, D, h, w]`` metric depth per candidate and pixel.

    Returns:
        ``[N, C, D, h, w]``: bilinear samples (zeros outside, ``align_corners=True``) at the integer pixel grid.
    """
    n, d, h, w = depth.shape
    c = feat.shape[1]
    with torch.no_grad():
        ys, xs = torch.meshgrid(torch.arange(h, device=depth.device), torch.arange(w, device=depth.device),
                                indexing="ij")
        grid = torch.stack([xs, ys, torch.ones_like(xs)], 0).to(depth.dtype).view(1, 3, -1).expand(n, -1, -1)
        pts = torch.inverse(K).bmm(grid)  # [N, 3, hw]
        pts = torch.bmm(rel[:, :3, :3], pts).unsqueeze(2).repeat(1, 1, d, 1) * depth.view(n, 1, d, h * w)
        pts = pts + rel[:, :3, 3:].unsqueeze(-1)
        pts = torch.bmm(K, pts.view(n, 3, -1)).view(n, 3, d, h * w)
        pix = pts[:, :2] / pts[:, 2:].clamp(min=z_min)
        gx = 2 * pix[:, 0] / (w - 1) - 1
        gy = 2 * pix[:, 1] / (h - 1) - 1
        g = torch.stack([gx, gy], dim=-1)  # [N, D, hw, 2]
    out = F.grid_sample(feat, g.view(n, d * h, w, 2), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.view(n, c, d, h, w)
