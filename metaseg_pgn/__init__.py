"""metaseg-pgn: pixel-wise gradient norms and segment-level meta-learning for segmentation uncertainty.

The library works without the pipeline::

    from metaseg_pgn import PGNModel
    pgn = PGNModel(model)                # finds the last conv by forward hooks
    out = pgn(images)                    # one forward pass: logits, probs, pred, PGN maps
    out.maps["pgn_last_uni_p0_5"]        # (B, h, w) float64 at the last conv's resolution

and the pure tensor functions in :mod:`metaseg_pgn.pgn` take ``(psi, logits, conv)`` directly.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "PGNModel": "metaseg_pgn.wrapper",
    "PGNOutput": "metaseg_pgn.wrapper",
    "last_layer_pgn": "metaseg_pgn.pgn",
    "deeper_layer_pgn": "metaseg_pgn.pgn",
    "map_name": "metaseg_pgn.pgn",
    "softmax_maps": "metaseg_pgn.maps",
    "segment_features": "metaseg_pgn.segments",
    "read_features": "metaseg_pgn.table",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so `import metaseg_pgn` (e.g. for read_features) does not import torch.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metaseg_pgn' has no attribute {name!r}")
