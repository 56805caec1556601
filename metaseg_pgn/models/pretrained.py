"""The weights shipped with the package: a compact DeepLabV3+ trained on the synthetic world.

Each member ``{name}_seed{seed}`` is a state_dict ``models/weights/{name}_seed{seed}.pt`` (float16
storage, loaded as float32) with a JSON record ``{name}_seed{seed}.json`` next to it: the model
factory and its arguments, the input normalisation, the training configuration, timings, torch
version, date, and the val mIoU / per-class IoU measured with exactly these weights. The seeds are
the members of a deep ensemble (same data, different initialisation and batch order).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .deeplab import build_model

__all__ = ["WEIGHTS_DIR", "available_seeds", "weights_path", "pretrained_record", "load_pretrained", "ensemble"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_RETRAIN = "python -m metaseg_pgn.run stage=train train.seed={seed} train.ship=true"


def weights_path(name: str = "synthetic_compact", seed: int = 0, directory: str | Path | None = None) -> Path:
    """Path of the state_dict of one member (it may not exist); ``directory`` defaults to
    :data:`WEIGHTS_DIR`."""
    return Path(directory or WEIGHTS_DIR) / f"{name}_seed{int(seed)}.pt"


def available_seeds(name: str = "synthetic_compact", directory: str | Path | None = None) -> list[int]:
    """Seeds of the members of ``name`` that have both weights and a record."""
    seeds = []
    for p in Path(directory or WEIGHTS_DIR).glob(f"{name}_seed*.pt"):
        tail = p.stem[len(name) + len("_seed"):]
        if tail.isdigit() and p.with_suffix(".json").exists():
            seeds.append(int(tail))
    return sorted(seeds)


def pretrained_record(name: str = "synthetic_compact", seed: int = 0, directory: str | Path | None = None) -> dict:
    """The JSON record of a shipped member (or of one in ``directory``).

    Raises
    ------
    FileNotFoundError
        Naming the missing file and the seeds that exist.
    ValueError
        When the record is not valid JSON or lacks the model description.
    """
    path = weights_path(name, seed, directory).with_suffix(".json")
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no record of pretrained model {name!r} seed {seed} "
            f"(available seeds: {available_seeds(name, directory)}); train it with `{_RETRAIN.format(seed=seed)}`"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or "model" not in record or "factory" not in record.get("model", {}):
        raise ValueError(f"{path}: record lacks the model description ('model.factory')")
    return record


def load_pretrained(name: str = "synthetic_compact", seed: int = 0, device: str | torch.device = "cpu",
                    directory: str | Path | None = None) -> nn.Module:
    """Build a shipped model and load its weights (float32, eval mode).

    Parameters
    ----------
    name : str
        Model name; ``"synthetic_compact"`` is the one shipped.
    seed : int
        Training seed (ensemble member).
    device : str or torch.device
    directory : path-like, optional
        Where ``{name}_seed{seed}.pt`` / ``.json`` lie; default the package's :data:`WEIGHTS_DIR`.

    Returns
    -------
    nn.Module
        In eval mode on ``device``; input: RGB / 255 normalised with the record's ``normalization``.

    Raises
    ------
    FileNotFoundError
        When the weights or the record are missing (the message names the file).
    ValueError
        When the file is corrupt (checksum) or does not fit the recorded architecture.
    """
    record = pretrained_record(name, seed, directory)
    path = weights_path(name, seed, directory)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: weights of pretrained model {name!r} seed {seed} are missing "
            f"(the record exists); retrain with `{_RETRAIN.format(seed=seed)}`"
        )
    blob = path.read_bytes()
    expected = record.get("weights_sha256")
    if expected and hashlib.sha256(blob).hexdigest() != expected:
        raise ValueError(f"{path}: checksum differs from its record {path.with_suffix('.json').name}; "
                         f"the file is corrupt or from another training run")
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling error means a bad file
        raise ValueError(f"{path}: cannot be read as a torch state_dict ({e})") from None
    spec = record["model"]
    model = build_model(spec["factory"], int(spec.get("num_classes", 19)), **dict(spec.get("kwargs") or {}))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit {spec['factory']}(**{spec.get('kwargs') or {}}): {e}") from None
    return model.to(device).eval()


def ensemble(name: str = "synthetic_compact", seeds: Sequence[int] = (0, 1, 2),
             device: str | torch.device = "cpu", directory: str | Path | None = None) -> list[nn.Module]:
    """The deep-ensemble members ``seeds`` of a shipped model, each in eval mode."""
    return [load_pretrained(name, s, device, directory) for s in seeds]
