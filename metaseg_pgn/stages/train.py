"""Train the compact DeepLabV3+ on the synthetic street scenes (CPU, minutes).

Usage (the ``train`` section of the run's configuration, :class:`metaseg_pgn.config.TrainConfig`)::

    python -m metaseg_pgn.run stage=train train.seed=0 train.ship=true     # the shipped weights
    python -m metaseg_pgn.run stage=train train.seed=3 train.iterations=200 train.out=data/train/try

The training frames are generated once into memory (or read from ``cache``), then random crops with scale
jitter and horizontal flips are drawn for every step. The loss is cross entropy ignoring 255;
AdamW with linear warm-up and a poly schedule. Rare classes (poles, signs, lights) get larger
weights (``class_weights="sqrt_median"``) so that they are learnt within the few minutes a CPU
allows. The weights shift the learnt logits by ``log w_c``; with ``logit_adjust=true`` (default)
that shift is removed after training by subtracting ``log w_c`` from the classifier's bias (logit
adjustment, Menon et al. 2021), so the shipped softmax is not biased towards the rare classes.
A JSON-lines log (``log.jsonl``) records the loss, learning rate and the val mIoU; ``record.json`` records everything needed to reproduce the run.
With ``ship=true`` the float16 state_dict and the record go to ``metaseg_pgn/models/weights/``
as ``{name}_seed{seed}.pt`` / ``.json``; the recorded val mIoU is measured with those very
(float16-rounded) weights.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.palette import CLASS_NAMES, NUM_CLASSES, VOID
from ..data.synthetic import SyntheticStreets
from ..io import atomic_write, write_json
from ..metrics.segmentation import ConfusionMatrix
from ..models.deeplab import build_model
from ..models.loader import IMAGENET_MEAN, IMAGENET_STD
from ..threads import torch_threads

__all__ = ["TRAIN_DEFAULTS", "train", "run", "evaluate"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "models" / "weights"


def _train_defaults() -> dict[str, Any]:
    from dataclasses import asdict

    from ..config_schema import TrainConfig

    defaults = asdict(TrainConfig())
    defaults.update(seed=0, progress=True)  # in a pipeline run: the run's seed and progress
    return defaults


# Every training setting with its default: the fields of metaseg_pgn.config.TrainConfig.
TRAIN_DEFAULTS: dict[str, Any] = _train_defaults()


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray | Sequence[np.ndarray], *, batch_size: int = 8,
            mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
            device: str | torch.device = "cpu") -> np.ndarray:
    """Arg-max predictions of a model for uint8 RGB images (N, H, W, 3) -> (N, H, W) uint8."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = _normalise(torch.from_numpy(np.ascontiguousarray(np.stack(images[i:i + batch_size]))), mean, std)
        logits = model(x.to(device))
        out.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)


def evaluate(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 8,
             mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
             num_classes: int = NUM_CLASSES) -> ConfusionMatrix:
    """Confusion matrix of ``model`` on frames (N, H, W, 3) uint8 with labels (N, H, W), void left out.

    Its :meth:`~metaseg_pgn.metrics.segmentation.ConfusionMatrix.miou` is the val mIoU of the log and record.
    """
    cm = ConfusionMatrix(num_classes, VOID)
    for i in range(0, len(images), batch_size):
        cm.update(predict(model, images[i:i + batch_size], batch_size=batch_size, mean=mean, std=std),
                  labels[i:i + batch_size])
    return cm


def _normalise(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> normalised (B, 3, H, W) float32."""
    x = x_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def generate_split(split: str, n: int, size: Sequence[int], seed: int, *, cache: str | os.PathLike | None = None,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All frames of a synthetic split as arrays ``(N, H, W, 3)`` uint8 and ``(N, H, W)`` uint8.

    With ``cache`` the arrays are read from / written to ``{cache}/{split}_n{n}_{H}x{W}_seed{seed}.npz``
    (tagged with a hash of the generator's source, so a changed generator regenerates).
    """
    from ..data import synthetic

    H, W = int(size[0]), int(size[1])
    path = None
    if cache is not None:
        tag = synthetic.source_digest()[:10]  # every module of the generator
        path = Path(cache) / f"{split}_n{n}_{H}x{W}_seed{seed}_{tag}.npz"
        if path.exists():
            with np.load(path) as z:
                return z["images"], z["labels"]
    ds = SyntheticStreets(split, n=n, size=(H, W), seed=seed)
    images = np.empty((n, H, W, 3), np.uint8)
    labels = np.empty((n, H, W), np.uint8)
    for i, frame in enumerate(tqdm(ds, total=n, desc=f"generate {split}", unit="frame", disable=not progress)):
        images[i], labels[i] = frame.image, frame.label
    if path is not None:
        from ..io import write_npz

        write_npz(path, compressed=False, images=images, labels=labels)
    return images, labels


def _batch(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, batch_size: int,
           crop: Sequence[int], scale: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scaled crops with horizontal flips: (B, H, W, 3) uint8 and (B, H, W) int64."""
    N, H, W = labels.shape
    ch, cw = int(crop[0]), int(crop[1])
    xs, ys = [], []
    for _ in range(batch_size):
        i = int(rng.integers(N))
        s = float(rng.uniform(scale[0], scale[1]))
        h, w = min(H, int(round(ch / s))), min(W, int(round(cw / s)))
        r0, c0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        img = torch.from_numpy(images[i, r0:r0 + h, c0:c0 + w]).permute(2, 0, 1)[None].float()
        lab = torch.from_numpy(labels[i, r0:r0 + h, c0:c0 + w])[None, None].float()
        if (h, w) != (ch, cw):
            img = F.interpolate(img, size=(ch, cw), mode="bilinear", align_corners=False)
            lab = F.interpolate(lab, size=(ch, cw), mode="nearest")
        if rng.random() < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        xs.append(img[0].permute(1, 2, 0))
        ys.append(lab[0, 0])
    x = torch.stack(xs).clamp_(0, 255).round_().to(torch.uint8)
    y = torch.stack(ys).long()
    return x, y


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def class_weights(labels: np.ndarray, kind: str | None, max_weight: float = 5.0,
                  num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Loss weight per class from the pixel frequencies of the training labels.

    ``"sqrt_median"``: ``w_c = sqrt(median_f / f_c)`` over the classes present, clipped to
    ``[1 / max_weight, max_weight]``, then scaled so that the mean weight per labelled pixel is 1;
    absent classes get weight 1. ``None``: all ones.
    """
    w = np.ones(num_classes)
    if kind is None:
        return w
    if kind != "sqrt_median":
        raise ValueError(f"class_weights={kind!r}: choose None or 'sqrt_median'")
    counts = np.bincount(labels.ravel(), minlength=256)[:num_classes].astype(np.float64)
    present = counts > 0
    freq = counts / counts.sum()
    w[present] = np.clip(np.sqrt(np.median(freq[present]) / freq[present]), 1.0 / max_weight, max_weight)
    w[present] /= (freq[present] * w[present]).sum()
    return w


def _lr_at(it: int, cfg: dict) -> float:
    if it < cfg["warmup"]:
        return cfg["lr"] * (it + 1) / cfg["warmup"]
    t = (it - cfg["warmup"]) / max(1, cfg["iterations"] - cfg["warmup"])
    return cfg["lr"] * (1 - t) ** cfg["poly_power"]


def _state_bytes(model: torch.nn.Module, half: bool) -> tuple[bytes, dict]:
    state = {k: (v.detach().clone().half() if half and v.is_floating_point() else v.detach().clone())
             for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue(), state


def _iou_dict(cm: ConfusionMatrix) -> dict[str, float | None]:
    iou = cm.iou()
    return {name: (None if not np.isfinite(v) else round(float(v), 6)) for name, v in zip(CLASS_NAMES, iou)}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def train(config: dict | None = None) -> dict:
    """Train a model on the synthetic train split and evaluate it on the val split.

    Parameters
    ----------
    config : dict
        Overrides of :data:`TRAIN_DEFAULTS` (unknown keys are errors).

    Returns
    -------
    dict
        The record (also written to ``{out}/record.json``): configuration, timings and machine load,
        val mIoU and per-class IoU, paths of the weights.
    """
    config = dict(config or {})
    unknown = sorted(set(config) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; known: {sorted(TRAIN_DEFAULTS)}")
    cfg = {**TRAIN_DEFAULTS, **config}
    cfg["size"] = [int(s) for s in cfg["size"]]
    cfg["crop"] = [int(s) for s in cfg["crop"]]
    seed = int(cfg["seed"])
    out = Path(cfg["out"] or Path("data") / "train" / f"{cfg['name']}_seed{seed}")
    out.mkdir(parents=True, exist_ok=True)
    # train.threads holds only while training: the caller gets its own thread count back.
    with torch_threads(int(cfg["threads"] or torch.get_num_threads())):
        return _fit(cfg, out, seed)


def _fit(cfg: dict, out: Path, seed: int) -> dict:
    """:func:`train` once its settings are checked and its folder exists."""
    progress = bool(cfg["progress"])
    started = time.time()
    load_start = _loadavg()

    t0 = time.time()
    train_x, train_y = generate_split("train", int(cfg["n_train"]), cfg["size"], int(cfg["data_seed"]),
                                      cache=cfg["cache"], progress=progress)
    val_x, val_y = generate_split("val", int(cfg["n_val"]), cfg["size"], int(cfg["data_seed"]),
                                  cache=cfg["cache"], progress=progress)
    generate_seconds = time.time() - t0

    weights = class_weights(train_y, cfg["class_weights"], float(cfg["max_class_weight"]))
    weight_t = torch.tensor(weights, dtype=torch.float32)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 7])
    model = build_model(cfg["model"], NUM_CLASSES, **cfg["model_kwargs"])
    model = model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"])
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    log_path = out / "log.jsonl"
    log_f = open(log_path, "w")

    def log(entry: dict) -> None:
        log_f.write(json.dumps(entry) + "\n")
        log_f.flush()

    t0 = time.time()
    eval_seconds = 0.0
    running = None
    bar = tqdm(range(int(cfg["iterations"])), desc=f"train seed {seed}", unit="it", disable=not progress)
    try:
        for it in bar:
            model.train()
            lr = _lr_at(it, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            xb, yb = _batch(train_x, train_y, rng, int(cfg["batch_size"]), cfg["crop"], cfg["scale"])
            x = _normalise(xb, mean, std).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), yb, weight=weight_t, ignore_index=VOID)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            bar.set_postfix(loss=f"{running:.3f}")
            if (it + 1) % int(cfg["log_every"]) == 0 or it == 0:
                log({"iter": it + 1, "loss": round(loss.item(), 5), "loss_smooth": round(running, 5),
                     "lr": lr, "seconds": round(time.time() - t0 - eval_seconds, 2)})
            if cfg["eval_every"] and (it + 1) % int(cfg["eval_every"]) == 0 and it + 1 < cfg["iterations"]:
                te = time.time()
                n = int(cfg["n_val_during"])
                cm = evaluate(model, val_x[:n], val_y[:n], mean=mean, std=std)
                eval_seconds += time.time() - te
                log({"iter": it + 1, "val_miou": round(cm.miou(), 5), "val_frames": n})
        train_seconds = time.time() - t0 - eval_seconds

        if cfg["logit_adjust"] and cfg["class_weights"] is not None:
            last = model.get_submodule(getattr(model, "last_conv_name", "head.classifier"))
            with torch.no_grad():
                last.bias -= torch.log(weight_t)
        # final evaluation with the stored (float16-rounded) weights, exactly what ships
        blob, state = _state_bytes(model, bool(cfg["half"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        model = model.to(memory_format=torch.contiguous_format).eval()
        te = time.time()
        cm = evaluate(model, val_x, val_y, mean=mean, std=std)
        eval_seconds += time.time() - te
        val_miou = cm.miou()
        log({"iter": int(cfg["iterations"]), "val_miou": round(val_miou, 5), "val_frames": len(val_x), "final": True})
    finally:
        log_f.close()

    name = cfg["name"]
    weights_name = f"{name}_seed{seed}.pt"
    record = {
        "name": name,
        "seed": seed,
        "weights_file": weights_name,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "weights_dtype": "float16" if cfg["half"] else "float32",
        "model": {"factory": cfg["model"], "num_classes": NUM_CLASSES, "kwargs": cfg["model_kwargs"],
                  "config": _jsonable(model.config), "parameters": int(sum(p.numel() for p in model.parameters()))},
        "normalization": {"mean": list(mean), "std": list(std), "input": "RGB uint8 / 255"},
        "input_size": cfg["size"],
        "class_weights": {name: round(float(w), 4) for name, w in zip(CLASS_NAMES, weights)},
        "logit_adjusted": bool(cfg["logit_adjust"] and cfg["class_weights"] is not None),
        "training": {k: v for k, v in cfg.items() if k not in ("out", "cache", "ship", "progress")},
        "data": {"dataset": "synthetic", "split": "train", "n": int(cfg["n_train"]), "seed": int(cfg["data_seed"]),
                 "size": cfg["size"]},
        "val_miou": round(val_miou, 6),
        "val_iou": _iou_dict(cm),
        "val": {"dataset": "synthetic", "split": "val", "n": len(val_x), "seed": int(cfg["data_seed"]),
                "size": cfg["size"], "miou_definition": "mean over classes with non-empty union of TP/(TP+FP+FN)"},
        "timing": {"generate_seconds": round(generate_seconds, 1), "train_seconds": round(train_seconds, 1),
                   "eval_seconds": round(eval_seconds, 1), "total_seconds": round(time.time() - started, 1),
                   "loadavg_start": load_start, "loadavg_end": _loadavg(), "cpu_count": os.cpu_count(),
                   "torch_threads": torch.get_num_threads(), "device": "cpu",
                   "machine": platform.machine(), "processor": platform.processor() or None},
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    with atomic_write(out / weights_name, "wb") as f:
        f.write(blob)
    write_json(out / "record.json", record)
    if cfg["ship"]:
        with atomic_write(WEIGHTS_DIR / weights_name, "wb") as f:
            f.write(blob)
        write_json(WEIGHTS_DIR / weights_name.replace(".pt", ".json"), record)
    record["out"] = str(out)
    return record


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def run(ctx) -> dict:
    """Pipeline entry (``stage=train``): trains with ``ctx.cfg["train"]`` (if present) over the defaults.

    The run's ``seed`` and ``progress`` are used unless the ``train`` section sets them; the output
    goes to ``{run_dir}/train/`` unless ``train.out`` is given.
    """
    cfg = ctx.cfg
    section = dict(cfg.get("train") or {})
    section.setdefault("seed", cfg.get("seed", 0))
    section.setdefault("progress", cfg.get("progress", True))
    if section.get("out") is None:
        section["out"] = str(Path(cfg["run_dir"]) / "train")
    return train(section)

