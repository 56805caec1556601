"""Sampling baselines: MC dropout and deep ensembles, as pixel maps.

Both average T softmax outputs ``s_t``. With ``s̄ = mean_t s_t`` and ``H(s) = -Σ_c s_c log s_c``:

- ``*_E``  = H(s̄) / log C                      (normalised entropy of the mean prediction)
- ``*_MI`` = (H(s̄) - mean_t H(s_t)) / log C    (mutual information, normalised likewise)

Samples are accumulated one at a time, in float32, so memory does not grow with T. A model that
offers ``mc_dropout_split() -> (trunk, head)`` (all dropout layers in ``head``, as in
:class:`metaseg_pgn.models.deeplab.DeepLabV3Plus`) gets its trunk run once and only its head
sampled: the same samples as T full forward passes, at a fraction of the cost.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn

from .outputs import Output, image_logits, select_logits

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=1)


def _softmax_and_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(z) and its entropy ``logsumexp(z) − Σ s·z`` (no log of tiny probabilities)."""
    z = logits.float()
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    probs = torch.exp(z - lse)
    return probs, (lse[:, 0] - (probs * z).sum(dim=1)).clamp_min(0.0)


class PredictiveAccumulator:
    """Running mean of softmax samples and of their entropies.

    ``update(probs)`` with probs (B, C, H, W), or ``update_logits(logits)``; ``compute()`` returns
    ``(mean_probs, E, MI)`` with E and MI of shape (B, H, W), float32.
    """

    def __init__(self) -> None:
        self.sum_probs: torch.Tensor | None = None
        self.sum_entropy: torch.Tensor | None = None
        self.count = 0

    def update(self, probs: torch.Tensor) -> None:
        probs = probs.float()
        self._add(probs, _entropy(probs))

    def update_logits(self, logits: torch.Tensor) -> None:
        self._add(*_softmax_and_entropy(logits))

    def _add(self, probs: torch.Tensor, ent: torch.Tensor) -> None:
        if self.sum_probs is None:
            self.sum_probs, self.sum_entropy = probs.clone(), ent
        else:
            self.sum_probs += probs
            self.sum_entropy += ent
        self.count += 1

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.count == 0:
            raise ValueError("no samples were accumulated")
        mean = self.sum_probs / self.count
        log_c = math.log(mean.shape[1])
        h_mean = _entropy(mean)
        mi = (h_mean - self.sum_entropy / self.count).clamp_min(0.0)
        return mean, h_mean / log_c, mi / log_c


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Dropout layers stochastic, everything else (BatchNorm) in eval mode; modes restored after."""
    dropouts = [m for m in model.modules() if isinstance(m, DROPOUT_TYPES)]
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no dropout layer: MC dropout is not applicable")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in dropouts:
        m.train()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.train(training)


@torch.no_grad()
def mc_dropout_maps(model: nn.Module, x: torch.Tensor, samples: int = 25,
                    generator_seed: int | None = 0, output: Output = None) -> dict[str, torch.Tensor]:
    """MC dropout maps ``mcd_E``, ``mcd_MI``, each (B, H, W) float32.

    Parameters
    ----------
    model : nn.Module
        Any segmentation model with dropout layers; returns (B, C, H, W) logits.
    x : Tensor, shape (B, 3, H, W)
    samples : int
        Number of stochastic forward passes T.
    generator_seed : int or None
        Seeds torch's RNG for the passes so results are reproducible (restored afterwards).
    output : None, str, int or callable
        Where the logits are in what the model returns (:func:`metaseg_pgn.outputs.select_logits`).
    """
    acc = PredictiveAccumulator()
    split = getattr(model, "mc_dropout_split", None)
    with _seeded(generator_seed), mc_dropout(model):
        if split is not None:
            trunk, head = split()
            state = trunk(x)
            for _ in range(samples):
                acc.update_logits(head(state))
        else:
            for _ in range(samples):
                acc.update_logits(_logits(model, x, output))
    _, e, mi = acc.compute()
    return {"mcd_E": e, "mcd_MI": mi}


@torch.no_grad()
def ensemble_maps(models: Iterable[nn.Module] | Iterable[Callable], x: torch.Tensor,
                  output: Output = None) -> dict[str, torch.Tensor]:
    """Deep-ensemble maps ``ens_E``, ``ens_MI``, each (B, H, W) float32 (models in eval mode;
    ``output`` picks the logits from what they return, see :func:`metaseg_pgn.outputs.select_logits`)."""
    acc = PredictiveAccumulator()
    for member in models:
        acc.update_logits(_logits(member, x, output))
    _, e, mi = acc.compute()
    return {"ens_E": e, "ens_MI": mi}


def _logits(model, x: torch.Tensor, output: Output) -> torch.Tensor:
    """The model's logits at the image size (resized as the model's ``align_corners`` says)."""
    logits = select_logits(model(x), output)
    return image_logits(logits, x.shape[-2:], bool(getattr(model, "align_corners", False)))


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
