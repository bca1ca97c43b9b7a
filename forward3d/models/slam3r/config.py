"""Configuration of the SLAM3R networks, read from the published ``config.json``.

The Hugging Face ``config.json`` of ``siyan824/slam3r_i2p`` / ``siyan824/slam3r_l2w`` holds the
constructor kwargs of the reference models (tuples written as lists, ``inf`` as ``Infinity``). It is
parsed with :mod:`json` only; the few string-valued fields (``pos_embed: "RoPE100"``) go through tiny
explicit parsers, never ``eval``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping

from forward3d.hub import WeightsError, read_json_config

__all__ = ["SLAM3RNetConfig", "parse_pos_embed", "I2P_FULL", "L2W_FULL"]

# Keys the reference constructors accept that do not change the inference graph.
_IGNORED_KEYS = frozenset({"freeze", "landscape_only", "patch_embed_cls", "mask_ratio", "norm_layer"})
_MV_BLOCK = "MultiviewDecoderBlock_max"


def parse_pos_embed(value: str) -> float:
    """Parse a position-embedding string such as ``"RoPE100"`` into the RoPE base (100.0).

    Only ``RoPE<number>`` is supported (SLAM3R has no absolute position embedding).
    """
    m = re.fullmatch(r"RoPE(\d+(?:\.\d+)?)", str(value).strip())
    if m is None:
        raise ValueError(f"pos_embed: expected 'RoPE<base>' (e.g. 'RoPE100'), found {value!r}")
    return float(m.group(1))


def _mode(name: str, value: Any) -> tuple[str, float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not isinstance(value[0], str):
        raise ValueError(f"{name}: expected [mode, vmin, vmax], found {value!r}")
    try:
        vmin, vmax = float(value[1]), float(value[2])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: bounds must be numbers, found {value!r}") from exc
    return (value[0], vmin, vmax)


@dataclass
class SLAM3RNetConfig:
    """Constructor kwargs of the reference ``Image2PointsModel`` / ``Local2WorldModel``.

    Defaults are the published full-size I2P model (``recon.py``'s model string).
    """

    pos_embed: str = "RoPE100"
    img_size: tuple[int, int] = (224, 224)  # (H, W)
    patch_size: int = 16
    head_type: Literal["linear"] = "linear"
    output_mode: Literal["pts3d"] = "pts3d"
    depth_mode: tuple[str, float, float] = ("exp", -math.inf, math.inf)
    conf_mode: tuple[str, float, float] = ("exp", 1.0, math.inf)
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    mv_dec1: str = _MV_BLOCK
    mv_dec2: str = _MV_BLOCK
    enc_minibatch: int = 11
    need_encoder: bool = True
    corr_depth: int = 2  # I2P only (retrieval score depth)
    norm_im2_in_dec: bool = True
    depth_channels: int = 0  # Slam3DR depth fusion: input = RGB + depth (1) [+ validity (2)]
    extra: dict[str, Any] = field(default_factory=dict)  # ignored reference kwargs, kept for the record

    def __post_init__(self) -> None:
        self.img_size = tuple(int(v) for v in self.img_size)  # type: ignore[assignment]
        if len(self.img_size) != 2:
            raise ValueError(f"img_size: expected (H, W), found {self.img_size!r}")
        self.depth_mode = _mode("depth_mode", self.depth_mode)
        self.conf_mode = _mode("conf_mode", self.conf_mode)
        parse_pos_embed(self.pos_embed)  # validates
        for name in ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth",
                     "dec_num_heads", "patch_size", "enc_minibatch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: expected a positive integer, found {v!r}")
        if self.enc_embed_dim % self.enc_num_heads or self.dec_embed_dim % self.dec_num_heads:
            raise ValueError("embed dims must be divisible by the number of heads: "
                             f"enc {self.enc_embed_dim}/{self.enc_num_heads}, dec {self.dec_embed_dim}/{self.dec_num_heads}")
        for name, hd in (("enc", self.enc_embed_dim // self.enc_num_heads), ("dec", self.dec_embed_dim // self.dec_num_heads)):
            if hd % 4:
                raise ValueError(f"{name} head dim {hd}: RoPE-2D needs a multiple of 4")
        if self.img_size[0] % self.patch_size or self.img_size[1] % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.head_type != "linear":
            raise ValueError(f"head_type: only 'linear' is supported, found {self.head_type!r}")
        if self.output_mode != "pts3d":
            raise ValueError(f"output_mode: only 'pts3d' is supported, found {self.output_mode!r}")
        if self.depth_mode[0] != "exp" or self.conf_mode[0] != "exp":
            raise ValueError(f"depth_mode/conf_mode: only 'exp' is supported, found {self.depth_mode[0]!r}/{self.conf_mode[0]!r}")
        for name in ("mv_dec1", "mv_dec2"):
            if getattr(self, name) != _MV_BLOCK:
                raise ValueError(f"{name}: only {_MV_BLOCK!r} is supported, found {getattr(self, name)!r}")
        if not self.norm_im2_in_dec:
            raise ValueError("norm_im2_in_dec=False is not supported (the published models use True)")
        if self.depth_channels not in (0, 1, 2) or isinstance(self.depth_channels, bool):
            raise ValueError(f"depth_channels: expected 0 (RGB), 1 (+ depth) or 2 (+ depth, validity), "
                             f"found {self.depth_channels!r}")
        if not (1 <= self.corr_depth <= self.dec_depth):
            raise ValueError(f"corr_depth: expected 1..{self.dec_depth}, found {self.corr_depth}")

    @property
    def rope_base(self) -> float:
        return parse_pos_embed(self.pos_embed)

    @property
    def in_chans(self) -> int:
        """Input channels of the patch embedding: 3 (RGB) + ``depth_channels``."""
        return 3 + self.depth_channels

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of ``img_size``."""
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "SLAM3RNetConfig":
        """Build from a ``config.json`` dict. Unknown keys raise ``ValueError`` naming ``source``."""
        names = {f.name for f in fields(cls)} - {"extra"}
        kw: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        unknown = []
        for k, v in d.items():
            if k in names:
                kw[k] = v
            elif k in _IGNORED_KEYS:
                extra[k] = v
            else:
                unknown.append(k)
        if unknown:
            raise ValueError(f"{source}: unknown SLAM3R config keys {sorted(unknown)} "
                             f"(known: {sorted(names | _IGNORED_KEYS)})")
        try:
            return cls(**kw, extra=extra)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, path: str | Path) -> "SLAM3RNetConfig":
        """Read a HF-style ``config.json`` (``Infinity`` allowed)."""
        d = read_json_config(path)
        try:
            return cls.from_dict(d, source=str(path))
        except ValueError as exc:
            raise WeightsError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["img_size"] = list(self.img_size)
        d["depth_mode"] = list(self.depth_mode)
        d["conf_mode"] = list(self.conf_mode)
        if not self.depth_channels:  # RGB models keep the published config.json keys exactly
            d.pop("depth_channels")
        return d


def I2P_FULL() -> SLAM3RNetConfig:
    """Config of the published ``siyan824/slam3r_i2p``."""
    return SLAM3RNetConfig()


def L2W_FULL() -> SLAM3RNetConfig:
    """Config of the published ``siyan824/slam3r_l2w`` (no encoder blocks)."""
    return SLAM3RNetConfig(need_encoder=False)
