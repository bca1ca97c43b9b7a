"""forward3d.data: training data. Sequence datasets (one interface, a reader per dataset), views,
the dataset-mixing grammar, preprocessing, the synthetic generator and RealEstate10K for Flash3D.

The common entry points are re-exported lazily (importing ``forward3d.data`` stays cheap)::

    from forward3d.data import build_mixture, collate_views
    mix = build_mixture("1000 @ ScanNetpp(root='data/scannetpp', num_views=11) + 500 @ Co3D(root='data/co3d')")
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SequenceConfig": "sequence", "SequenceDataset": "sequence", "SequenceInfo": "sequence",
    "register_dataset": "sequence", "get_dataset_class": "sequence", "dataset_names": "sequence",
    "View": "views", "ViewSample": "views", "ViewBatch": "views", "collate_views": "views",
    "parse_mixture": "mix", "build_mixture": "mix", "MixtureDataset": "mix", "MixtureError": "mix",
    "PrepareConfig": "prepare",  # (prepare() and check(): forward3d.data.prepare; the module shares the name)
    "SyntheticScene": "synthetic", "SyntheticConfig": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"forward3d.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'forward3d.data' has no attribute {name!r}")
