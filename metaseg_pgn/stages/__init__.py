"""The pipeline's stages. Each is ``run(ctx)`` in its own module; imported lazily by name."""

from __future__ import annotations

import importlib


def _lazy(module: str):
    def run(ctx):
        return importlib.import_module(f"{__name__}.{module}").run(ctx)

    run.__name__ = f"run_{module}"
    return run


STAGE_FUNCTIONS = {name: _lazy(name) for name in
                   ("train", "infer", "features", "meta", "pixel_eval", "ood_eval", "ood_meta",
                                  "report")}
