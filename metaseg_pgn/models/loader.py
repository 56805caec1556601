"""Build the network a pipeline configures: a shipped model or a user's model and checkpoint."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    """A network in eval mode with the input normalisation it was trained with."""

    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: dict

    def preprocess(self, images: list, device: torch.device) -> torch.Tensor:
        """List of (H, W, 3) uint8 RGB arrays (same size) → normalised (B, 3, H, W) float32."""
        x = torch.stack([torch.from_numpy(im).permute(2, 0, 1) for im in images]).to(device)
        x = x.float().div_(255.0)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std


def _resolve_factory(factory: str):
    if ":" in factory:
        module_name, attr = factory.split(":", 1)
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"model.factory={factory!r} cannot be imported: {e}") from None
    from .deeplab import build_model

    return lambda num_classes, **kw: build_model(factory, num_classes, **kw)


def load_model(model_cfg: dict, device: torch.device, *, seed: int | None = None) -> LoadedModel:
    """Build the configured model in eval mode on ``device``.

    Parameters
    ----------
    model_cfg : dict
        ``name``: a shipped model (``synthetic_compact``) or ``checkpoint``. For ``checkpoint``:
        ``factory`` (``module:callable`` returning an nn.Module, or an architecture name of
        :mod:`metaseg_pgn.models.deeplab`), ``checkpoint`` (a state_dict file, optional),
        ``num_classes``, ``mean``/``std`` (input normalisation, RGB in [0, 1]).
    seed : int, optional
        For shipped models: which training seed (ensemble member); default ``model_cfg["seed"]``.
    """
    name = model_cfg["name"]
    if name == "checkpoint":
        build = _resolve_factory(str(model_cfg.get("factory", "compact")))
        model = build(num_classes=int(model_cfg.get("num_classes", 19)))
        ckpt = model_cfg.get("checkpoint")
        if ckpt:
            path = Path(ckpt)
            if not path.exists():
                raise ValueError(f"model.checkpoint: {path} does not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f"{path}: does not fit model.factory={model_cfg.get('factory')}: {e}") from None
        mean = tuple(model_cfg.get("mean", IMAGENET_MEAN))
        std = tuple(model_cfg.get("std", IMAGENET_STD))
        description = {"name": name, "factory": model_cfg.get("factory"), "checkpoint": ckpt}
    else:
        from .pretrained import load_pretrained, pretrained_record

        member = model_cfg.get("seed", 0) if seed is None else seed
        model = load_pretrained(name, seed=member)
        record = pretrained_record(name, seed=member)
        norm = record.get("normalization", {})
        mean = tuple(norm.get("mean", IMAGENET_MEAN))
        std = tuple(norm.get("std", IMAGENET_STD))
        description = {"name": name, "seed": member, "val_miou": record.get("val_miou")}
    return LoadedModel(model.to(device).eval(), mean, std, description)
