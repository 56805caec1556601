"""Command line: ``python -m metaseg_pgn.run [stage=...] [key=value ...]`` (or ``metaseg-pgn ...``).

A Hydra application: the configuration is composed from the configs shipped in
``metaseg_pgn/conf`` (see :mod:`metaseg_pgn.config`) and Hydra's overrides; ``-m`` sweeps through
Hydra's launcher, ``--cfg job`` prints the composed configuration. Before Hydra runs anything,
every run of the call is composed and validated, so a typo stops the call with one line and exit
status 2, and nothing is written.
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
usage: python -m metaseg_pgn.run [-m] [--cfg job] [--config-dir DIR] [key=value ...]
       metaseg-pgn ...  (the same)

Stages (stage=NAME, or stage=[a,b]; default: all):
  train       train the compact DeepLabV3+ on the synthetic world (train.* settings; not in 'all')
  infer       run the network; write per-frame records: prediction, logits, PGN maps, baselines
  features    segments + per-segment features and IoU_adj -> Parquet (features/)
  meta        meta classification (IoU = 0) and regression (IoU) per feature set -> JSON/CSV
  pixel_eval  pixel-level calibration (ECE) and sparsification (AuSE)
  ood_eval    OoD segmentation metrics (SegmentMeIfYouCan: AuPRC, FPR95, sIoU, PPV, mean F1)
  ood_meta    OoD post-processing (Meta-OoD): meta-classify thresholded components, remove false
              positives; component metrics before/after per score, feature set and meta model
  report      Markdown + HTML report with figures
  all         infer, features, meta, pixel_eval, ood_eval, ood_meta, report

Main settings (docs/configuration.md lists every key with its type and default):
  pipeline=synthetic|cityscapes|smiyc|folder the pipeline (config group in metaseg_pgn/conf)
  dataset=synthetic|cityscapes|folder|...    dataset.root=...  dataset.split=...
  model=synthetic_compact|custom             model._target_=pkg.build  model.KEY=VALUE (its args)
                                             model.checkpoint=FILE  model.init=checkpoint|target|random
  pgn.ps=[0.1,0.3,0.5,1,2]  pgn.labels=[oh,uni]  pgn.weights=paper|gradient
  pgn.resolution=feature|input  pgn.layers=[last]|[last,deep]
  baselines.mc_dropout.samples=25  baselines.ensemble.enabled=true
  meta.protocol=grouped|pgn_authors|metaseg  meta.n_runs=5  meta.min_inner=false
  meta.models=[linear,gbt,mlp]  ood_meta.models=[linear]  ood_meta.scores=[V,E,pgn_last_uni_p0_5]
  features.workers=1  features.executor=process|dask  features.scheduler=ADDRESS
  run_dir=data/runs/<pipeline>   device=auto|cpu|cuda   seed=0
  force=[features,meta]   recompute these stages even when up to date (docs/reuse.md)

Hydra's options:
  --cfg job            print the composed configuration and exit (--resolve: with values resolved)
  -m, --multirun       sweep: key=a,b runs once per value, each in run_dir/<key=value,...>
  --config-dir DIR     a folder with your own configs (pipeline/*.yaml, model/*.yaml, ...)
  --hydra-help         Hydra's own help (launchers, shell completion, ...)
"""

HYDRA_FLAGS_WITHOUT_JOB = ("--hydra-help", "--info", "--shell-completion", "-sc", "--version")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    hydra_argv = [a for a in argv if a not in args.overrides]
    if not any(a.split("=")[0] in HYDRA_FLAGS_WITHOUT_JOB for a in argv):
        try:
            overrides = config_mod.rewrite_model_kwargs(list(args.overrides), args.config_dir)
            jobs = sweep_jobs(overrides) if args.multirun else [overrides]
            for job in jobs:
                config_mod.compose(job, args.config_dir)
        except config_mod.ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        hydra_argv += overrides
        if args.multirun and len(jobs) > 1:
            hydra_argv.append(_name_runs_by_swept_keys(jobs))
    config_mod.register_configs()
    saved = sys.argv
    sys.argv = [saved[0] if saved else "metaseg-pgn", *hydra_argv]
    try:
        _hydra_main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:  # outside the task (while Hydra starts or ends)
        print(INTERRUPTED, file=sys.stderr)
        return 130
    finally:
        sys.argv = saved
    return 0


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of each run of a sweep, as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise config_mod.ConfigError(config_mod.one_line(e)) from None
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _name_runs_by_swept_keys(jobs: list[list[str]]) -> str:
    """Keep only the swept keys in the run folders' names (``meta.n_runs=2``, not every override)."""
    fixed = [job_key(o) for o in jobs[0] if all(o in job for job in jobs)]
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(fixed)}]"


def job_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _task(cfg) -> None:
    """Hydra's task: one run of the pipeline."""
    from hydra.core.hydra_config import HydraConfig

    from .data.base import DataError
    from .distributed import DistributedError
    from .frame_files import FrameFileError
    from .models.loader import ModelError
    from .stages.common import StageError
    from .store import RecordError
    from .lock import RunFolderBusy

    try:
        plain = config_mod.to_plain(cfg)
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
            plain["run_dir"] = os.path.join(hydra_cfg.sweep.dir, hydra_cfg.sweep.subdir)
        run_pipeline(plain)
    except (config_mod.ConfigError, StageError, DataError, RecordError, ModelError, RunFolderBusy, DistributedError,
            FrameFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        raise SystemExit(130) from None


# Records and feature rows are written atomically one frame at a time: what finished is kept, and
# the same command resumes from there.
INTERRUPTED = "interrupted: the frames finished so far are kept; run the same command again to resume"


def _hydra_main() -> None:
    import hydra

    hydra.main(config_path=f"pkg://{config_mod.CONFIG_MODULE}", config_name=config_mod.CONFIG_NAME,
               version_base="1.3")(_task)()


def run_pipeline(cfg: dict) -> None:
    """Run the configured stages in order (each skips itself when up to date).

    Afterwards ``run_info.json`` in the run folder records this invocation: start and end, load
    average at both, wall time, the seconds of each stage in order and the machine (CPU, threads,
    GPU, torch), unless every stage was up to date (then nothing in the folder changes).

    The run holds the run folder's lock (:class:`metaseg_pgn.lock.RunLock`) throughout; under
    ``torchrun`` rank 0 holds it for the job. Temporary files of dead runs are removed first.
    """
    from .lock import RunLock, remove_dead_temps

    rank = int(os.environ.get("RANK", 0))
    if rank != 0:  # the other ranks of a torchrun job work under rank 0's lock
        _run_stages(cfg, rank)
        return
    with RunLock(cfg["run_dir"]) as lock:
        remove_dead_temps(lock.path.parent, recursive=True)
        _run_stages(cfg, rank)


def _run_stages(cfg: dict, rank: int) -> None:
    from .stages import STAGE_FUNCTIONS
    from .stages.common import RunContext

    ctx = RunContext(cfg)
    info = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average_start": _load(),
            "stages": []}  # [stage, seconds] in the order they ran (a JSON object would be key-sorted)
    run_started = time.time()
    before = _manifest_times(ctx)
    for stage in config_mod.stages_to_run(cfg):
        if rank != 0 and stage not in SHARDED_STAGES:
            continue  # under torchrun only infer and features are sharded; rank 0 runs the rest
        started = time.time()
        logging.info("stage %s: start (run folder %s)", stage, ctx.run_dir)
        with _seeded(int(cfg.get("seed", 0))):
            STAGE_FUNCTIONS[stage](ctx)
        info["stages"].append([stage, round(time.time() - started, 3)])
        logging.info("stage %s: done in %.1f s", stage, time.time() - started)
    if rank == 0 and _manifest_times(ctx) != before:  # a run where every stage was up to date touches nothing
        info.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), load_average_end=_load(),
                    wall_seconds=round(time.time() - run_started, 3), machine=machine_description())
        from .io import write_json

        write_json(ctx.run_dir / RUN_INFO, info)


RUN_INFO = "run_info.json"


def _manifest_times(ctx) -> dict:
    """When each stage's manifest was last written (to tell whether this invocation computed anything)."""
    import json

    times = {}
    for stage in config_mod.STAGES:
        path = ctx.stage_dir(stage) / "manifest.json"
        try:
            m = json.loads(path.read_text()) if path.exists() else {}
            times[stage] = (m.get("finished"), m.get("fingerprint"), m.get("seconds"))
        except (OSError, ValueError):
            times[stage] = "unreadable"
    return times


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every platform
        return None


def machine_description() -> dict:
    """What ran the pipeline: CPU model and count, torch threads and version, the GPU if used."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "gpu": gpu, "system": platform.system()}


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


def cli() -> None:
    """The ``metaseg-pgn`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
