"""The pipeline's stages, in order. Each module defines its :class:`~.base.Stage` as ``DEFINITION``
(``train`` alone is a plain ``run(ctx)``: it trains a model and keeps no manifest); modules are
imported lazily, by name."""

from __future__ import annotations

import importlib

from ..config_schema import STAGES as NAMES


def definition(name: str):
    """The :class:`~.base.Stage` of stage ``name`` (not ``train``)."""
    if name not in NAMES or name == "train":
        raise KeyError(f"no stage definition {name!r}; stages with one: {[n for n in NAMES if n != 'train']}")
    return importlib.import_module(f"{__name__}.{name}").DEFINITION


def _lazy(name: str):
    def run(ctx):
        if name == "train":
            return importlib.import_module(f"{__name__}.train").run(ctx)
        return definition(name).run(ctx)

    run.__name__ = f"run_{name}"
    return run


STAGE_FUNCTIONS = {name: _lazy(name) for name in NAMES}
