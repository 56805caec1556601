"""Segmentation quality of the evaluated network: confusion matrix, per-class IoU and mIoU.

``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` over the non-void pixels of all frames (the counts are
pooled, as Cityscapes' own evaluation does, not averaged per frame). A class that occurs neither in
the ground truth nor in the prediction has an undefined IoU (NaN) and is left out of the mean.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Streaming confusion matrix of a semantic segmentation.

    Parameters
    ----------
    num_classes : int
        Class ids are ``0 .. num_classes - 1``.
    void : int
        Ground-truth value of the pixels left out.

    Examples
    --------
    >>> cm = ConfusionMatrix(2)
    >>> cm.update(np.array([[0, 1]]), np.array([[0, 0]]))
    >>> cm.iou().tolist()
    [0.5, 0.0]
    """

    def __init__(self, num_classes: int, void: int = 255):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.void = int(void)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)  # [gt, pred]

    def update(self, pred, label) -> None:
        """Add frames: ``pred`` and ``label`` integer class ids of one shape, one frame (H, W) or a
        batch (N, H, W); ``label`` may be void.

        Raises
        ------
        ValueError
            Mismatched shapes, or a non-void id outside ``0 .. num_classes - 1``.
        """
        pred, label = np.asarray(pred), np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"pred has shape {pred.shape} but label has shape {label.shape}")
        valid = label != self.void
        p, g = pred[valid].astype(np.int64), label[valid].astype(np.int64)
        c = self.num_classes
        for name, ids in (("label", g), ("pred", p)):
            if ids.size and (ids.min() < 0 or ids.max() >= c):
                raise ValueError(f"{name} holds class ids outside 0..{c - 1} (void {self.void})")
        self.matrix += np.bincount(g * c + p, minlength=c * c).reshape(c, c)

    def iou(self) -> np.ndarray:
        """Per-class IoU, shape (num_classes,), float64; NaN for a class in neither map."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - np.diag(self.matrix)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes whose IoU is defined (NaN when none is)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def gt_pixels(self) -> np.ndarray:
        """Ground-truth pixels per class, (num_classes,) int64."""
        return self.matrix.sum(1)

    def pred_pixels(self) -> np.ndarray:
        """Predicted (non-void ground truth) pixels per class, (num_classes,) int64."""
        return self.matrix.sum(0)
