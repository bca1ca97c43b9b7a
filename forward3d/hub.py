"""Loading weights safely: local files, folders and the Hugging Face hub.

Every learned model's ``from_pretrained`` goes through :func:`resolve_source` and
:func:`load_state_dict` so that (a) nothing is ever unpickled beyond tensors
(``torch.load(weights_only=True)`` or safetensors), (b) hub access fails at once and clearly offline,
and (c) key mismatches are reported in full by :func:`strict_load`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["resolve_source", "find_weights_file", "load_state_dict", "strict_load", "read_json_config", "WeightsError"]


class WeightsError(ValueError):
    """A checkpoint could not be found, read or matched to a model."""


# A missing path ending like a checkpoint or config file is a local path, never a hub id.
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".json")


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return (len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))
            and not source.lower().endswith(_FILE_SUFFIXES) and not Path(source).exists())


def resolve_source(source: str | os.PathLike, filenames: Iterable[str] = ("model.safetensors", "config.json")) -> Path:
    """Return a local path (file or folder) for ``source``.

    ``source`` is a local file, a local folder, or a hub id ``owner/name``. Hub ids are downloaded
    with ``huggingface_hub.snapshot_download`` restricted to ``filenames`` and the returned path is
    the snapshot folder. Offline (``HF_HUB_OFFLINE=1``) or with no network, this fails at once
    with a message that says how to pass a local path instead.
    """
    s = os.fspath(source)
    p = Path(s).expanduser()
    if p.exists():
        return p
    if not _looks_like_hub_id(s):
        raise WeightsError(f"{s}: no such file or folder (expected a checkpoint file or folder, or a hub id 'owner/name')")
    hint = ("If it is a local checkpoint, check the path; if it is a hub id, download its files (e.g. "
            "model.safetensors and config.json) on a machine with network access and pass the local path.")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    if offline:
        raise WeightsError(f"{s}: no such file or folder; as a hub id 'owner/name' it cannot be fetched "
                           f"either, because HF_HUB_OFFLINE is set. {hint}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise WeightsError(f"{s}: no such file or folder; as a hub id it needs huggingface_hub, which is "
                           f"not installed (pip install 'forward3d[hub]'). {hint}") from exc
    try:
        # etag_timeout short and no retries loop: fail fast when there is no network.
        path = snapshot_download(repo_id=s, allow_patterns=list(filenames), etag_timeout=5)
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types
        raise WeightsError(f"{s}: no such file or folder, and downloading it as a hub id failed "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). {hint}") from exc
    return Path(path)


def find_weights_file(folder: Path, names: Iterable[str]) -> Path:
    """The weights file of a checkpoint ``folder``: the first of ``names`` present, else its only
    ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file; WeightsError otherwise."""
    names = list(names)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    cands = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin"))
    if len(cands) == 1:
        return cands[0]
    raise WeightsError(f"{folder}: expected {' or '.join(names[:2])} (or exactly one .safetensors/.pth file), "
                       f"found {[p.name for p in cands] or 'none'}")


def read_json_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``config.json`` (accepts ``Infinity``/``NaN`` as Python's json does). Never evaluates code."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{p}: cannot read JSON config ({exc})") from exc
    if not isinstance(cfg, dict):
        raise WeightsError(f"{p}: expected a JSON object, found {type(cfg).__name__}")
    return cfg


def load_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load tensors from a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file.

    ``.pth`` files are loaded with ``weights_only=True``; a ``{'model': state_dict, ...}`` (or
    ``'state_dict'``) wrapper is unwrapped, and the other top-level entries are reported as ignored.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: checkpoint file not found")
    if p.stat().st_size == 0:
        raise WeightsError(f"{p}: checkpoint file is empty")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device=str(map_location))
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"{p}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors come in many types
        raise WeightsError(_unpickling_message(p, exc)) from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                ignored = sorted(k for k in obj if k != key)
                if ignored:
                    logger.info("%s: using '%s', ignoring top-level entries %s", p, key, ignored)
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{p}: expected a state_dict of tensors (optionally under 'model')")
    return obj


_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)|global '?([A-Za-z_][\w.]*)")


def _unpickling_message(path: Path, exc: Exception) -> str:
    """One clear line for a checkpoint ``torch.load(weights_only=True)`` refused, without torch's hint to
    retry with ``weights_only=False`` (which would run the file's code)."""
    text = str(exc)
    m = _GLOBAL.search(text)
    if m and ("weights_only" in text or "Unsupported global" in text or "allowed global" in text):
        name = m.group(1) or m.group(2)
        return (f"{path}: the file contains pickled code, not just tensors (it tries to load the Python object "
                f"'{name}'); forward3d never loads such files. Use a checkpoint of tensors (safetensors, or a "
                f".pth saved from a state_dict)")
    first = next((ln for ln in text.splitlines() if ln.strip() and "weights_only=False" not in ln), type(exc).__name__)
    return f"{path}: not a readable tensors-only checkpoint ({first.strip()})"


def strict_load(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str = "checkpoint",
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state_dict`` into ``model`` requiring every key and shape to match.

    Keys starting with one of ``ignore_prefixes`` are skipped on both sides. On a mismatch raises
    :class:`WeightsError` listing the missing, unexpected and mis-shaped keys.
    """
    ign = lambda k: any(k.startswith(p) for p in ignore_prefixes)  # noqa: E731
    own = {k: v for k, v in model.state_dict().items() if not ign(k)}
    given = {k: v for k, v in state_dict.items() if not ign(k)}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = sorted(f"{k}: checkpoint {list(given[k].shape)} vs model {list(own[k].shape)}"
                    for k in set(own) & set(given) if tuple(own[k].shape) != tuple(given[k].shape))
    if missing or unexpected or shapes:
        def fmt(title: str, items: list[str]) -> str:
            if not items:
                return ""
            more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:20]) + more
        raise WeightsError(f"{source}: state_dict does not match {type(model).__name__}"
                           + fmt("missing keys", missing) + fmt("unexpected keys", unexpected)
                           + fmt("shape mismatches", shapes))
    result = model.load_state_dict(given, strict=False)
    leftover = [k for k in result.missing_keys if not ign(k)]
    if leftover or result.unexpected_keys:
        raise WeightsError(f"{source}: load_state_dict left keys unmatched: {leftover + list(result.unexpected_keys)}")
