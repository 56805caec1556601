"""Build the network a pipeline configures: a shipped model or a user's model and checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ``model.normalize`` presets: (mean, std) of RGB in [0, 1]; "custom" takes ``model.mean``/``std``.
NORMALIZE_PRESETS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}


@dataclass
class LoadedModel:
    """A network in eval mode with the input normalisation it was trained with.

    ``output`` says where its logits are in what it returns (None: the tensor itself, key
    ``'out'`` or ``'logits'``, attribute ``logits``; see :func:`metaseg_pgn.outputs.select_logits`).
    """

    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: dict
    output: str | int | None = None

    def preprocess(self, images: list, device: torch.device) -> torch.Tensor:
        """List of (H, W, 3) uint8 RGB arrays (same size) → normalised (B, 3, H, W) float32."""
        # np.require copies read-only arrays (PIL's), which torch.from_numpy would warn about
        x = torch.stack([torch.from_numpy(np.require(im, requirements=["W"])).permute(2, 0, 1)
                         for im in images]).to(device)
        x = x.float().div_(255.0)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std


class ModelError(ValueError):
    """The configured model cannot be built or loaded (the message names the key or file)."""


def build_custom(model_cfg: dict) -> nn.Module:
    """Call the configured ``_target_`` with every key of ``model_cfg`` that is not a setting."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from ..config_schema import CustomModel

    settings = {f for f in CustomModel.__dataclass_fields__}
    kwargs = {k: v for k, v in model_cfg.items() if k not in settings}
    try:
        model = instantiate({"_target_": model_cfg["_target_"], **kwargs}, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise ModelError(f"model._target_={model_cfg['_target_']}: {type(cause).__name__}: "
                         f"{str(cause).splitlines()[0] if str(cause) else ''}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model._target_={model_cfg['_target_']} returned a {type(model).__name__}, "
                         f"not a torch.nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict file (optionally under a ``state_dict`` key) into ``model``, strictly.

    Raises
    ------
    ModelError
        The file is missing or unreadable, or its keys or shapes do not fit the model (the message
        names the file and up to five of the keys concerned).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"model.checkpoint: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises pickle, zip and runtime errors for damaged files
        raise ModelError(f"{path}: cannot be read as a PyTorch state_dict ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{what}: {', '.join(keys[:5])}{more}")
    if problems:
        raise ModelError(f"{path}: does not fit the model ({'; '.join(problems)})")
    model.load_state_dict(state)


def input_normalization(model_cfg: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a user model's input, RGB in [0, 1], from ``model.normalize``.

    ``normalize``: ``imagenet`` (the default; torchvision and most HuggingFace checkpoints, whose
    image processor config says ``image_mean``/``image_std``), ``none`` (the image in [0, 1] as
    it is) or ``custom`` (``model.mean`` and ``model.std``, three numbers each, std > 0).

    Raises
    ------
    ModelError
        An unknown preset, mean/std missing for ``custom`` or given without it, or not three
        finite numbers (std > 0); the message names the key.
    """
    preset = str(model_cfg.get("normalize") or "imagenet")
    mean, std = model_cfg.get("mean"), model_cfg.get("std")
    if preset == "custom":
        if mean is None or std is None:
            raise ModelError("model.normalize=custom needs model.mean and model.std (three numbers each, "
                             "for RGB in [0, 1])")
        return _triple("model.mean", mean), _triple("model.std", std, positive=True)
    if preset not in NORMALIZE_PRESETS:
        raise ModelError(f"model.normalize={preset!r}: choose {', '.join(NORMALIZE_PRESETS)} or custom")
    given = [k for k, v in (("model.mean", mean), ("model.std", std)) if v is not None]
    if given:
        raise ModelError(f"{' and '.join(given)} given but model.normalize={preset}: set model.normalize=custom "
                         "to use them (or leave them null)")
    return NORMALIZE_PRESETS[preset]


def output_selector(model_cfg: dict) -> str | int | None:
    """``model.output``: None, a key or attribute name, or a tuple index (checked)."""
    output = model_cfg.get("output")
    if isinstance(output, str) and output.lstrip("-").isdigit():  # an index given on the command line
        output = int(output)
    if output is None or isinstance(output, str) or (isinstance(output, int) and not isinstance(output, bool)):
        return output
    raise ModelError(f"model.output={output!r}: give null, a key or attribute name of the model's output "
                     "(e.g. logits), or an index of a returned tuple (e.g. 0)")


def _triple(key: str, value, positive: bool = False) -> tuple[float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in value)
    if not ok:
        raise ModelError(f"{key}={value!r}: give three finite numbers{' > 0' if positive else ''} "
                         "(R, G, B, for images in [0, 1])")
    return tuple(float(v) for v in value)


def load_model(model_cfg: dict, device: torch.device, *, seed: int | None = None) -> LoadedModel:
    """Build the configured model in eval mode on ``device``.

    Parameters
    ----------
    model_cfg : dict
        ``name``: a shipped model (``synthetic_compact``) or ``custom``. For ``custom``:
        ``_target_`` (a callable returning an nn.Module) and its keyword arguments, ``init``
        (``checkpoint``: load ``checkpoint``, a state_dict file; ``target``: the target loads its own
        weights; ``random``: leave the network untrained), ``normalize``/``mean``/``std`` (input
        normalisation, see :func:`input_normalization`), ``output`` (where the logits are in what
        the model returns, see :func:`output_selector`). See :class:`metaseg_pgn.config.CustomModel`.
    seed : int, optional
        For shipped models: which training seed (ensemble member); default ``model_cfg["seed"]``.

    Raises
    ------
    ModelError
        The target cannot be built, or the checkpoint is missing, unreadable or does not fit.
    """
    name = model_cfg["name"]
    if name == "custom":
        mean, std = input_normalization(model_cfg)
        output = output_selector(model_cfg)
        model = build_custom(model_cfg)
        init = model_cfg.get("init", "checkpoint")
        if init == "checkpoint":
            if not model_cfg.get("checkpoint"):
                raise ModelError("model.checkpoint is not set (model.init=checkpoint); give a state_dict file, "
                                 "or model.init=target / model.init=random")
            load_checkpoint(model, model_cfg["checkpoint"])
        description = {"name": name, "target": model_cfg["_target_"], "init": init,
                       "checkpoint": model_cfg.get("checkpoint") if init == "checkpoint" else None}
    else:
        from .pretrained import load_pretrained, pretrained_record

        member = model_cfg.get("seed", 0) if seed is None else seed
        try:
            model = load_pretrained(name, seed=member)
            record = pretrained_record(name, seed=member)
        except (FileNotFoundError, ValueError) as e:
            raise ModelError(f"model={name} (seed {member}): {' '.join(str(e).split())}") from None
        norm = record.get("normalization", {})
        mean = tuple(norm.get("mean", IMAGENET_MEAN))
        std = tuple(norm.get("std", IMAGENET_STD))
        description = {"name": name, "seed": member, "val_miou": record.get("val_miou")}
        output = None
    return LoadedModel(model.to(device).eval(), mean, std, description, output)
