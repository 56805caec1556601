"""What a segmentation model returns → its per-pixel logits (B, C, H, W).

The common zoos return different things (docs/design.md §9): a tensor (the project's DeepLabV3+), a dict
``{'out', 'aux'}`` (torchvision), a ``ModelOutput`` with ``.logits`` (HuggingFace transformers, a
dict subclass), a tuple (``return_dict=False``, many research codes). :func:`select_logits` picks the
logits from any of them, by a default rule or by the user's ``output`` selector, and refuses with the
reason what is not per-pixel logits (mask-classification models such as Mask2Former).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Union

import torch.nn.functional as F
from torch import Tensor

__all__ = ["Output", "check_output_selector", "image_logits", "select_logits"]

#: A selector: None (the default rule), a key or attribute name, a tuple index, or a function.
Output = Union[None, str, int, Callable[[Any], Tensor]]

#: Keys the default rule tries in a mapping, in this order.
DEFAULT_KEYS = ("out", "logits")

#: Outputs of mask-classification models (MaskFormer, Mask2Former, OneFormer in transformers).
MASK_CLASSIFICATION_KEYS = ("class_queries_logits", "masks_queries_logits")


def check_output_selector(output: Output) -> Output:
    """Return ``output`` if it is a valid selector, else raise TypeError naming what it got."""
    if output is None or callable(output) or isinstance(output, str):
        return output
    if isinstance(output, int) and not isinstance(output, bool):
        return output
    raise TypeError(f"output must be None, a key or attribute name (str), a tuple index (int) or a "
                    f"function of the model's output, got {type(output).__name__} {output!r}")


def select_logits(out: Any, output: Output = None) -> Tensor:
    """The logits in a model's return value.

    Parameters
    ----------
    out : Tensor, mapping, object with attributes, tuple or list
        What the model returned.
    output : None, str, int or callable
        None: ``out`` itself if it is a tensor; for a mapping its key ``'out'``, else ``'logits'``
        (torchvision, HuggingFace); for another object its attribute ``logits``. A str: that key of
        a mapping, else that attribute. An int: that element of a tuple or list. A callable:
        ``output(out)``.

    Returns
    -------
    Tensor, shape (B, C, H, W), floating point

    Raises
    ------
    ValueError
        The selector does not fit ``out``, ``out`` comes from a mask-classification model, or the
        selected value is not floating-point (B, C, H, W) logits.
    """
    check_output_selector(output)
    if output is None:
        y = _default(out)
        how = "the model output"
    elif callable(output):
        y = output(out)
        how = f"output={getattr(output, '__name__', output)!r} applied to the model output"
    elif isinstance(output, str):
        if isinstance(out, Mapping):
            if output not in out:
                raise ValueError(f"output={output!r}: the model returned a {type(out).__name__} without "
                                 f"that key (keys {_keys(out)})")
            y = out[output]
        elif hasattr(out, output):
            y = getattr(out, output)
        else:
            raise ValueError(f"output={output!r}: the model returned a {type(out).__name__} without "
                             "that key or attribute")
        how = f"output={output!r}"
    else:
        if not isinstance(out, (tuple, list)):
            raise ValueError(f"output={output!r} (an index) needs a tuple or list, but the model "
                             f"returned a {type(out).__name__}")
        if not -len(out) <= output < len(out):
            raise ValueError(f"output={output!r}: the model returned a {type(out).__name__} of "
                             f"{len(out)} elements")
        y = out[output]
        how = f"output={output!r}"
    if not isinstance(y, Tensor) or y.dim() != 4 or not y.is_floating_point():
        raise ValueError(f"{how} must be floating-point logits (B, C, H, W), got {_describe(y)}")
    return y


def image_logits(logits: Tensor, size, align_corners: bool = False) -> Tensor:
    """The logits at the image size ``(H, W)``: ``logits`` itself when it has that size, else
    resized bilinearly (a model such as SegFormer returns 1/4 of the image size; HuggingFace's
    post-processing resizes the same way, ``align_corners=False``).

    Parameters
    ----------
    logits : Tensor, shape (B, C, h, w)
    size : (H, W)
    align_corners : bool

    Returns
    -------
    Tensor, shape (B, C, H, W), dtype of ``logits``
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def _default(out: Any) -> Any:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        keys = list(out.keys())
        for key in DEFAULT_KEYS:
            if key in keys:
                return out[key]
        _refuse_mask_classification(keys, type(out).__name__)
        raise ValueError(f"the model returned a {type(out).__name__} without key 'out' or 'logits' "
                         f"(keys {_keys(out)}): pass output=KEY")
    if hasattr(out, "logits"):
        return out.logits
    _refuse_mask_classification([k for k in MASK_CLASSIFICATION_KEYS if hasattr(out, k)], type(out).__name__)
    if isinstance(out, (tuple, list)):
        parts = ", ".join(f"{i}: {_describe(v)}" for i, v in enumerate(out))
        raise ValueError(f"the model returned a {type(out).__name__} of {len(out)} elements ({parts}): "
                         "pass output=INDEX to say which holds the logits")
    raise ValueError(f"the model returned {_describe(out)}, not logits: pass output= (a key, attribute, "
                     "index or function) to say where the logits are")


def _refuse_mask_classification(keys, kind: str) -> None:
    found = [k for k in MASK_CLASSIFICATION_KEYS if k in keys]
    if found:
        raise ValueError(
            f"the model returned a {kind} with {', '.join(found)}: a mask-classification model "
            "(MaskFormer, Mask2Former, OneFormer) predicts a set of masks and a class per mask, so its "
            "per-pixel scores are not the output of a final pixel-wise convolution and PGN does not "
            "apply to it")


def _keys(out) -> list:
    try:
        return sorted(map(str, out.keys()))
    except (AttributeError, TypeError):  # pragma: no cover
        return []


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__}"
