"""Configuration of the Spann3R network and of its spatial memory.

The reference builds ``Spann3R(dus3r_name=..., use_feat=False)`` around a DUSt3R
``AsymmetricCroCo3DStereo`` whose constructor kwargs come from the DUSt3R checkpoint; the DPT head
sizes, the memory encoder and the attention heads are hard-coded. :class:`Spann3RConfig` names all
of them, with the official values as defaults (:func:`SPANN3R_FULL`). The fixture ``config.json``
(``../shared/fixtures/spann3r/config.json``, sections ``small`` / ``full``) is read by
:meth:`Spann3RConfig.from_dict`; it is plain JSON, parsed without ``eval``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from forward3d.hub import WeightsError, read_json_config
from forward3d.models.slam3r.config import _mode, parse_pos_embed

__all__ = ["DUSt3RConfig", "DPTConfig", "MemoryConfig", "Spann3RConfig", "SPANN3R_FULL", "PRUNE_PROTECT_EXTRA"]

# The reference protects every slot written fewer than ``work_mem_size + 5`` writes ago from pruning.
PRUNE_PROTECT_EXTRA = 5


def _positive(owner: str, **values: Any) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{owner}.{name}: expected a positive integer, found {v!r}")


@dataclass
class DUSt3RConfig:
    """The DUSt3R backbone (``AsymmetricCroCo3DStereo`` with ``PatchEmbedDust3R``, landscape only).

    ``img_size`` (H, W) is nominal: no parameter depends on it (Spann3R runs at 224 x 224).
    """

    img_size: tuple[int, int] = (512, 512)
    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    pos_embed: str = "RoPE100"
    depth_mode: tuple[str, float, float] = ("exp", -math.inf, math.inf)
    conf_mode: tuple[str, float, float] = ("exp", 1.0, math.inf)

    def __post_init__(self) -> None:
        self.img_size = tuple(int(v) for v in self.img_size)  # type: ignore[assignment]
        if len(self.img_size) != 2:
            raise ValueError(f"DUSt3RConfig.img_size: expected (H, W), found {self.img_size!r}")
        _positive("DUSt3RConfig", patch_size=self.patch_size, enc_embed_dim=self.enc_embed_dim,
                  enc_depth=self.enc_depth, enc_num_heads=self.enc_num_heads, dec_embed_dim=self.dec_embed_dim,
                  dec_depth=self.dec_depth, dec_num_heads=self.dec_num_heads)
        for name, dim, heads in (("enc", self.enc_embed_dim, self.enc_num_heads),
                                 ("dec", self.dec_embed_dim, self.dec_num_heads)):
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"DUSt3RConfig: {name}_embed_dim {dim} / {heads} heads must give a head dim "
                                 "that is a multiple of 4 (RoPE-2D)")
        parse_pos_embed(self.pos_embed)
        self.depth_mode = _mode("DUSt3RConfig.depth_mode", self.depth_mode)
        self.conf_mode = _mode("DUSt3RConfig.conf_mode", self.conf_mode)
        if self.depth_mode[0] != "exp" or self.conf_mode[0] != "exp":
            raise ValueError(f"DUSt3RConfig: only 'exp' depth/conf modes are supported, found "
                             f"{self.depth_mode[0]!r}/{self.conf_mode[0]!r}")
        if math.isfinite(self.depth_mode[1]) or math.isfinite(self.depth_mode[2]):
            raise ValueError(f"DUSt3RConfig.depth_mode: the reference requires no bounds, found {self.depth_mode}")

    @property
    def rope_base(self) -> float:
        return parse_pos_embed(self.pos_embed)


@dataclass
class DPTConfig:
    """The DPT heads (``downstream_head{1,2}.dpt``). ``hooks`` None = the reference's
    ``[0, D/2, 3D/4, D]`` of the decoder depth D (indices into the head input list)."""

    feature_dim: int = 256
    last_dim: int = 128
    layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    hooks: tuple[int, int, int, int] | None = None
    num_channels: int = 4

    def __post_init__(self) -> None:
        self.layer_dims = tuple(int(v) for v in self.layer_dims)  # type: ignore[assignment]
        if len(self.layer_dims) != 4:
            raise ValueError(f"DPTConfig.layer_dims: expected 4 widths, found {self.layer_dims!r}")
        if self.hooks is not None:
            self.hooks = tuple(int(v) for v in self.hooks)  # type: ignore[assignment]
            if len(self.hooks) != 4:
                raise ValueError(f"DPTConfig.hooks: expected 4 indices, found {self.hooks!r}")
        _positive("DPTConfig", feature_dim=self.feature_dim, last_dim=self.last_dim,
                  num_channels=self.num_channels, **{f"layer_dims[{i}]": v for i, v in enumerate(self.layer_dims)})
        if self.num_channels != 4:
            raise ValueError(f"DPTConfig.num_channels: expected 4 (xyz + confidence), found {self.num_channels}")


@dataclass
class MemoryConfig:
    """:class:`~forward3d.models.spann3r.memory.SpatialMemory` settings (reference eval defaults).

    Attributes:
        long_mem_size: slots kept by a prune (``top_k``); the prune runs once more than this many
            long-term tokens were counted. 0 = the reference's "drop the oldest frame" mode.
        work_mem_size: frames in the working memory (the similarity check compares with the last
            ``work_mem_size`` frames' worth of slots).
        attn_thresh: read-attention entries below it are zeroed and each row renormalised (0 = off).
        sim_thresh: skip the write if the new key's mean cosine similarity with a working-memory
            frame is above it (1.0 = never skip).
    """

    long_mem_size: int = 4000
    work_mem_size: int = 5
    attn_thresh: float = 5e-4
    sim_thresh: float = 0.95

    def __post_init__(self) -> None:
        if not isinstance(self.long_mem_size, int) or self.long_mem_size < 0:
            raise ValueError(f"MemoryConfig.long_mem_size: expected an integer >= 0, found {self.long_mem_size!r}")
        _positive("MemoryConfig", work_mem_size=self.work_mem_size)
        if not 0.0 <= float(self.attn_thresh) < 1.0:
            raise ValueError(f"MemoryConfig.attn_thresh: expected a value in [0, 1), found {self.attn_thresh!r}")
        if not -1.0 <= float(self.sim_thresh) <= 1.0:
            raise ValueError(f"MemoryConfig.sim_thresh: expected a cosine in [-1, 1], found {self.sim_thresh!r}")


@dataclass
class Spann3RConfig:
    """Everything that shapes a Spann3R network (defaults: the official ``spann3r.pth``).

    Attributes:
        dust3r: the backbone. dpt: the two DPT heads.
        value_depth, value_num_heads: the memory value encoder's blocks (width = encoder width).
        attn_head_hidden: hidden width of ``attn_head_{1,2}`` (reference: enc + dec width).
        mem_pos_enc: RoPE in the value encoder blocks (the official model: False).
        memory_dropout: ``mem_dropout`` rate (training only; kept for the record).
        memory: the eval :class:`MemoryConfig`.
    """

    dust3r: DUSt3RConfig = field(default_factory=DUSt3RConfig)
    dpt: DPTConfig = field(default_factory=DPTConfig)
    value_depth: int = 6
    value_num_heads: int = 16
    attn_head_hidden: int = 1792
    mem_pos_enc: bool = False
    memory_dropout: float = 0.15
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def __post_init__(self) -> None:
        if isinstance(self.dust3r, Mapping):
            self.dust3r = DUSt3RConfig(**self.dust3r)
        if isinstance(self.dpt, Mapping):
            self.dpt = DPTConfig(**self.dpt)
        if isinstance(self.memory, Mapping):
            self.memory = MemoryConfig(**self.memory)
        _positive("Spann3RConfig", value_depth=self.value_depth, value_num_heads=self.value_num_heads,
                  attn_head_hidden=self.attn_head_hidden)
        C = self.dust3r.enc_embed_dim
        if C % self.value_num_heads or (self.mem_pos_enc and (C // self.value_num_heads) % 4):
            raise ValueError(f"Spann3RConfig.value_num_heads: {self.value_num_heads} does not divide the encoder "
                             f"width {C}" + (" into RoPE-compatible heads" if self.mem_pos_enc else ""))
        D = self.dust3r.dec_depth
        if not all(0 <= h <= D for h in self.hooks):
            raise ValueError(f"DPTConfig.hooks {self.hooks}: expected indices in [0, {D}] (decoder depth {D})")

    # ------------------------------------------------------------------ derived
    @property
    def hooks(self) -> tuple[int, int, int, int]:
        """DPT hooks into the head input list ``[decoder input, block 1, ..., dec_norm(block D)]``."""
        if self.dpt.hooks is not None:
            return self.dpt.hooks  # type: ignore[return-value]
        D = self.dust3r.dec_depth
        return (0, D * 2 // 4, D * 3 // 4, D)

    @property
    def token_dim(self) -> int:
        """Width of encoder tokens, memory keys and values (1024)."""
        return self.dust3r.enc_embed_dim

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "Spann3RConfig":
        """Build from the fixture ``config.json`` layout (one of its ``small`` / ``full`` sections,
        with ``dust3r``, ``dpt_head``, ``spann3r``, ``memory_encoder``, ``norm_qkv``, ``attn_head``,
        ``spatial_memory_eval``) or from :meth:`to_dict`'s own layout. Errors name ``source``."""
        try:
            if "dpt_head" in d or "memory_encoder" in d:
                return cls._from_reference_layout(d)
            known = {"dust3r", "dpt", "value_depth", "value_num_heads", "attn_head_hidden", "mem_pos_enc",
                     "memory_dropout", "memory"}
            unknown = sorted(set(d) - known)
            if unknown:
                raise ValueError(f"unknown Spann3R config keys {unknown} (known: {sorted(known)})")
            kw = dict(d)
            if "dust3r" in kw:
                kw["dust3r"] = DUSt3RConfig(**kw["dust3r"])
            if "dpt" in kw:
                kw["dpt"] = DPTConfig(**kw["dpt"])
            if "memory" in kw:
                kw["memory"] = MemoryConfig(**kw["memory"])
            return cls(**kw)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{source}: {exc}") from exc

    @classmethod
    def _from_reference_layout(cls, d: Mapping[str, Any]) -> "Spann3RConfig":
        bb = dict(d["dust3r"])
        if bb.get("patch_embed_cls", "PatchEmbedDust3R") != "PatchEmbedDust3R":
            raise ValueError(f"dust3r.patch_embed_cls: only PatchEmbedDust3R is supported, found {bb['patch_embed_cls']!r}")
        if bb.get("head_type", "dpt") != "dpt" or bb.get("output_mode", "pts3d") != "pts3d":
            raise ValueError("dust3r: only head_type 'dpt' with output_mode 'pts3d' is supported")
        if not bb.get("landscape_only", True):
            raise ValueError("dust3r.landscape_only: only True is supported (the official model)")
        dust3r = DUSt3RConfig(**{k: bb[k] for k in (
            "img_size", "enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth",
            "dec_num_heads", "mlp_ratio", "pos_embed", "depth_mode", "conf_mode") if k in bb})
        dh = d["dpt_head"]
        D = dust3r.dec_depth
        hooks = tuple(int(h) for h in dh["hooks"]) if "hooks" in dh else None
        if hooks == (0, D * 2 // 4, D * 3 // 4, D):  # the reference's formula: keep it implicit
            hooks = None
        dpt = DPTConfig(feature_dim=int(dh["feature_dim"]), last_dim=int(dh["last_dim"]),
                        layer_dims=tuple(dh["layer_dims"]), hooks=hooks, num_channels=int(dh.get("num_channels", 4)))
        if "patch_size" in dh:
            dust3r.patch_size = int(dh["patch_size"])
        sp = d.get("spann3r", {})
        if sp.get("use_feat", False):
            raise ValueError("spann3r.use_feat: only False is supported (the official model)")
        me = d["memory_encoder"]
        C = dust3r.enc_embed_dim
        if int(me["enc_embed_dim"]) != C or int(me["out_dim"]) != C:
            raise ValueError(f"memory_encoder: enc_embed_dim/out_dim must equal the encoder width {C} "
                             f"(use_feat=False), found {me['enc_embed_dim']}/{me['out_dim']}")
        nq = d.get("norm_qkv", {"dim": C})
        if int(nq["dim"]) != C:
            raise ValueError(f"norm_qkv.dim: expected the encoder width {C}, found {nq['dim']}")
        ah = d["attn_head"]
        if int(ah["in_dim"]) != C + dust3r.dec_embed_dim or int(ah["out_dim"]) != C:
            raise ValueError(f"attn_head: expected in_dim {C + dust3r.dec_embed_dim} and out_dim {C}, "
                             f"found {ah['in_dim']}/{ah['out_dim']}")
        sm = d.get("spatial_memory_eval", {})
        memory = MemoryConfig(**{k: sm[k] for k in ("long_mem_size", "work_mem_size", "attn_thresh", "sim_thresh")
                                 if k in sm})
        return cls(dust3r=dust3r, dpt=dpt, value_depth=int(me["enc_depth"]), value_num_heads=int(me["enc_num_heads"]),
                   attn_head_hidden=int(ah["hidden"]), mem_pos_enc=bool(sp.get("mem_pos_enc", False)),
                   memory_dropout=float(sp.get("memory_dropout", 0.15)), memory=memory)

    @classmethod
    def from_json(cls, path: str | Path, section: str | None = None) -> "Spann3RConfig":
        """Read a ``config.json``: either a config itself or a file with ``small`` / ``full``
        sections (the fixture's), of which ``section`` is taken (default ``full``)."""
        d = read_json_config(path)
        if section is not None or ("full" in d and "dust3r" not in d):
            name = section or "full"
            if name not in d:
                raise WeightsError(f"{path}: no section {name!r} (found {sorted(d)})")
            d = d[name]
        try:
            return cls.from_dict(d, source=str(path))
        except ValueError as exc:
            raise WeightsError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("depth_mode", "conf_mode", "img_size"):
            out["dust3r"][k] = list(out["dust3r"][k])
        out["dpt"]["layer_dims"] = list(self.dpt.layer_dims)
        out["dpt"]["hooks"] = None if self.dpt.hooks is None else list(self.dpt.hooks)
        return out


def SPANN3R_FULL() -> Spann3RConfig:
    """The official ``spann3r.pth`` architecture (DUSt3R ViT-L encoder, ViT-B decoder, DPT heads)."""
    return Spann3RConfig()
