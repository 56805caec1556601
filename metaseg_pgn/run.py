"""Command line: ``python -m metaseg_pgn.run [stage=...] [key=value ...]``.

Runs the stages of a pipeline (default: the embedded synthetic world) into its run folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from . import config as config_mod

SHARDED_STAGES = ("infer", "features")

HELP = """\
usage: python -m metaseg_pgn.run [-m|--multirun] [--cfg] [key=value ...]

Stages (stage=NAME, or stage=[a,b]; default: all):
  train       train the compact DeepLabV3+ on the synthetic world (not part of 'all';
              the trained weights ship with the package)
  infer       run the network; write per-frame records: prediction, logits, PGN maps, baselines
  features    segments + per-segment features and IoU_adj -> Parquet (features/)
  meta        meta classification (IoU = 0) and regression (IoU) per feature set -> JSON/CSV
  pixel_eval  pixel-level calibration (ECE) and sparsification (AuSE)
  ood_eval    OoD segmentation metrics (SegmentMeIfYouCan: AuPRC, FPR95, sIoU, PPV, mean F1)
  report      Markdown + HTML report with figures
  all         infer, features, meta, pixel_eval, ood_eval, report

Main settings (see docs/configuration.md for all):
  pipeline=synthetic|cityscapes|smiyc|PATH.yaml    pipeline file in pipelines/
  dataset=synthetic|cityscapes  dataset.root=...   dataset config group and its keys
  model=synthetic_compact|checkpoint  model.checkpoint=...  model.factory=module:callable
  pgn.ps=[0.1,0.3,0.5,1,2]  pgn.labels=[oh,uni]  pgn.weights=paper|gradient
  pgn.resolution=feature|input  pgn.layers=[last]|[last,deep]
  baselines.mc_dropout.samples=25  baselines.ensemble.enabled=true
  meta.protocol=grouped|pgn_authors|metaseg  meta.n_runs=5  meta.min_inner=false
  features.workers=1  features.executor=process|dask  features.scheduler=ADDRESS
  run_dir=data/runs/<pipeline>   device=auto|cpu|cuda   seed=0

  --cfg          print the composed configuration and exit
  -m/--multirun  sweep: key=a,b runs once per value (each in run_dir/<key=value,...>)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        return 0
    multirun = any(a in ("-m", "--multirun") for a in argv)
    show_cfg = "--cfg" in argv
    overrides = [a for a in argv if a not in ("-m", "--multirun", "--cfg")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    from .stages.common import StageError
    from .data.base import DataError
    from .store import RecordError

    try:
        sweeps = config_mod.expand_sweep(overrides) if multirun else [overrides]
        # The swept arguments, by position: an argument equal to another one (a base override
        # `meta.n_runs=2` before the sweep `meta.n_runs=1,2`) must not hide this run's value.
        varying = [k for k in range(len(overrides)) if len({s[k] for s in sweeps}) > 1]
        for i, sweep in enumerate(sweeps):
            cfg = config_mod.compose(sweep)
            if multirun and len(sweeps) > 1:
                swept = [sweep[k] for k in varying]  # the values this run picked
                cfg["run_dir"] = f"{cfg['run_dir']}/{','.join(swept)}"
            if show_cfg:
                if multirun and len(sweeps) > 1:
                    print("---")  # one YAML document per run (mappings run together would merge)
                print(config_mod.to_yaml(cfg))
                continue
            if multirun:
                logging.info("multirun %d/%d: %s", i + 1, len(sweeps), " ".join(sweep))
            run_pipeline(cfg)
    except (config_mod.ConfigError, StageError, DataError, RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_pipeline(cfg: dict) -> None:
    """Run the configured stages in order (each skips itself when up to date)."""
    from .stages import STAGE_FUNCTIONS
    from .stages.common import RunContext

    ctx = RunContext(cfg)
    rank = int(os.environ.get("RANK", 0))
    for stage in config_mod.stages_to_run(cfg):
        if rank != 0 and stage not in SHARDED_STAGES:
            continue  # under torchrun only infer and features are sharded; rank 0 runs the rest
        started = time.time()
        logging.info("stage %s: start (run folder %s)", stage, ctx.run_dir)
        with _seeded(int(cfg.get("seed", 0))):
            STAGE_FUNCTIONS[stage](ctx)
        logging.info("stage %s: done in %.1f s", stage, time.time() - started)


@contextlib.contextmanager
def _seeded(seed: int):
    """Every stage starts from torch's RNG seeded with ``seed`` (the caller's CPU RNG is restored).

    Anything random a stage draws from torch's global RNG is then a function of the configuration,
    as the fingerprints assume, not of what ran before in the process. (``infer`` initialises a
    model without checkpoint from its own fixed seed, the same on every rank and run.)
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


if __name__ == "__main__":
    sys.exit(main())
