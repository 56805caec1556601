"""Stage ``infer``: run the network once per frame and write its record (see :mod:`metaseg_pgn.store`).

Records are written atomically one frame at a time, so an interrupted run resumes where it stopped.
A record is reused when its fingerprints match the configuration: ``core`` (model + dataset),
``pgn`` (core + PGN settings), ``baselines`` (core + baseline settings). Changing a p value
re-runs the (cheap) forward pass and PGN maps but keeps the costly MC-dropout and ensemble maps.
Under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) the frames are cut into fixed
batches of ``infer.batch_size`` consecutive frames; every rank lists the batches with a missing or
stale record, all ranks meet at a barrier (so they all see the same list), and rank ``r`` takes every
``WORLD_SIZE``-th of them from the ``r``-th on. Records land in the same folders, one file per frame,
so ranks never write the same file. After a second barrier rank 0 alone checks that every record is
there, removes temporary files left by killed writers and writes the manifest; a third barrier lets
every rank go on to the next stage only once the manifest exists. A killed rank makes ``torchrun``
stop the job; running it again (with any number of ranks, or without ``torchrun``) computes only
what is missing.

Because a batch is always the same frames, a record does not depend on the number of ranks or on
interruptions: on CPU it is identical to a single-process run with the same number of intra-op
threads (``torchrun`` sets ``OMP_NUM_THREADS=1`` per rank; CPU kernels may round differently with
another thread count).
"""

from __future__ import annotations

import datetime
import os
import signal
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..baselines import ensemble_maps, mc_dropout_maps
from ..data.registry import get_dataset
from ..io import fingerprint
from ..models.loader import load_model
from ..store import Record, RecordError, read_meta, read_record, relative_logits, encode_logs, write_record
from ..outputs import image_logits, select_logits
from ..wrapper import PGNModel, argmax_channels
from .common import (RunContext, StageError, dataset_key, evaluated_dataset, is_up_to_date, log,
                     stage_fingerprint, write_manifest)

STAGE = "infer"


def make_dataset(ds_cfg: dict):
    kwargs = {k: v for k, v in ds_cfg.items() if k != "name"}
    if "size" in kwargs and kwargs["size"] is not None:
        kwargs["size"] = tuple(kwargs["size"])
    return get_dataset(ds_cfg["name"], **kwargs)


def dataset_configs(cfg: dict) -> list[dict]:
    """The evaluated dataset (if any, see :func:`evaluated_dataset`) followed by the OoD datasets."""
    main = evaluated_dataset(cfg)
    return [*([main] if main is not None else []), *cfg.get("ood_datasets", [])]


def group_fingerprints(cfg: dict, ds_cfg: dict) -> dict[str, str]:
    core = fingerprint({"model": cfg["model"], "dataset": ds_cfg})
    return {
        "core": core,
        "pgn": fingerprint({"core": core, "pgn": cfg["pgn"]}),
        "baselines": fingerprint({"core": core, "baselines": resolved_baselines(cfg), "seed": cfg["seed"]}),
    }


def ensemble_seeds(cfg: dict) -> list[int]:
    """The configured ensemble members that are shipped (the deep ensemble needs at least two)."""
    ens = cfg["baselines"]["ensemble"]
    if not ens.get("enabled"):
        return []
    if cfg["model"]["name"] == "custom":
        raise StageError("baselines.ensemble needs several trained members: it is available for "
                         "shipped models; set baselines.ensemble.enabled=false for model=custom")
    from ..models.pretrained import available_seeds

    shipped = set(available_seeds(cfg["model"]["name"]))
    seeds = [int(s) for s in ens["seeds"] if int(s) in shipped]
    if len(seeds) < 2:
        log.warning("baselines.ensemble: only member(s) %s of %s are shipped; the ensemble maps are "
                    "left out (train more with stage=train)", seeds, list(ens["seeds"]))
        return []
    return seeds


def resolved_baselines(cfg: dict) -> dict:
    """The baseline settings as they take effect (the ensemble reduced to its shipped members)."""
    base = {k: dict(v) for k, v in cfg["baselines"].items()}
    seeds = ensemble_seeds(cfg) if base["ensemble"].get("enabled") else []
    base["ensemble"] = {"enabled": bool(seeds), "seeds": seeds}
    return base


def stage_config(cfg: dict) -> dict:
    part = {k: cfg[k] for k in ("dataset", "ood_datasets", "model", "pgn", "baselines", "seed")}
    return {**part, "ensemble_members": ensemble_seeds(cfg)}


def records_dir(ctx: RunContext, ds_cfg: dict) -> Path:
    return ctx.stage_dir(STAGE) / "records" / dataset_key(ds_cfg)


def frame_seed(seed: int, frame_id: str) -> int:
    """A per-frame seed, so MC dropout samples do not depend on batching or sharding."""
    return (seed * 1_000_003 + zlib.crc32(frame_id.encode())) % (2**31)


def run(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    started = time.time()
    config_part = stage_config(cfg)
    fp = stage_fingerprint(config_part, {})
    if is_up_to_date(ctx, STAGE, fp):
        log.info("infer: up to date")
        return {}
    if not dataset_configs(cfg):
        raise StageError("infer: no dataset to run on: dataset=none and ood_datasets is empty")
    rank, world = rank_world()
    if world > 1:
        init_process_group()
    device = ctx.device
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())

    # A model without a checkpoint is randomly initialised: from a fixed seed, so that every rank
    # and every resumed run gets the same network (its records share one "core" fingerprint).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loaded = load_model(cfg["model"], device)
    pgn = cfg["pgn"]
    wrapper = PGNModel(loaded.model, cfg["model"].get("last_conv"), output=loaded.output, ps=tuple(pgn["ps"]),
                       labels=tuple(pgn["labels"]), weights=pgn["weights"],
                       resolution=pgn["resolution"], include_bias=pgn["include_bias"],
                       deeper="deep" in pgn["layers"])
    members = _ensemble_members(cfg, loaded, device)

    batch_size = int(cfg["infer"]["batch_size"])
    plans, outputs = [], {}
    for ds_cfg in dataset_configs(cfg):
        ds = make_dataset(ds_cfg)
        expect = group_fingerprints(cfg, ds_cfg)
        out_dir = records_dir(ctx, ds_cfg)
        plans.append((ds_cfg, ds, expect, out_dir, stale_batches(ds.frame_ids, out_dir, expect, batch_size)))
        outputs[dataset_key(ds_cfg)] = {
            "frames": ds.frame_ids,
            "label_kind": ds.label_kind,
            "num_classes": ds.num_classes,
            "fingerprints": expect,
            "records": str(out_dir.relative_to(ctx.run_dir)),
        }
    barrier()  # every rank has listed the same stale batches before any rank writes

    kill_after = _test_kill_after(rank)
    written = 0
    for ds_cfg, ds, expect, out_dir, batches in plans:
        mine = batches[rank::world]
        bar = tqdm(total=sum(map(len, mine)), desc=f"infer {dataset_key(ds_cfg)}" +
                   (f" (rank 0 of {world})" if world > 1 else ""), unit="frame",
                   disable=not ctx.progress or rank != 0)
        for batch_ids in mine:
            batch = [ds.load(f) for f in batch_ids]
            for group in _same_size_groups(batch):
                written += _infer_batch(group, ds, wrapper, loaded, members, cfg, expect, out_dir, device)
                if kill_after is not None and written >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            bar.update(len(batch))
        bar.close()

    barrier()  # every rank has written its records
    if rank == 0:
        missing = [f"{k}/{f}" for k, o in outputs.items() for f in o["frames"]
                   if _stale_groups(ctx.run_dir / o["records"] / f"{f}.npz", o["fingerprints"])]
        if missing:
            raise StageError(f"infer: {len(missing)} records missing after all ranks finished, "
                             f"e.g. {missing[:3]}; re-run to complete them")
        for _, _, _, out_dir, _ in plans:
            remove_stale_temps(out_dir)
        write_manifest(ctx, STAGE, fp, config_part, {}, outputs, started)
    barrier()  # the manifest exists before any rank starts the next stage
    return outputs


def stale_batches(frame_ids: list[str], out_dir: Path, expect: dict[str, str],
                  batch_size: int) -> list[list[str]]:
    """The fixed batches (``batch_size`` consecutive frames) with at least one stale record.

    A batch is recomputed as a whole (the model sees the same batch as in an uninterrupted run)
    but only its stale records are written.
    """
    batches = [frame_ids[i:i + batch_size] for i in range(0, len(frame_ids), max(batch_size, 1))]
    return [b for b in batches if any(_stale_groups(out_dir / f"{f}.npz", expect) for f in b)]


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files (``.NAME.*.tmp`` of :func:`metaseg_pgn.io.atomic_write`) that a
    killed writer left behind. Call only when no writer is active in ``folder``."""
    removed = 0
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            try:
                tmp.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    if removed:
        log.info("removed %d temporary files left by killed writers in %s", removed, folder)
    return removed


def _stale_groups(path: Path, expect: dict[str, str]) -> set[str]:
    if not path.exists():
        return set(expect)
    try:
        have = read_meta(path)["fingerprints"]
    except RecordError:
        return set(expect)
    return {g for g, fp in expect.items() if have.get(g) != fp}


def _same_size_groups(frames):
    groups: dict[tuple, list] = {}
    for f in frames:
        groups.setdefault(f.image.shape[:2], []).append(f)
    return list(groups.values())


def _ensemble_members(cfg, loaded, device):
    main_seed = cfg["model"].get("seed", 0)
    return [loaded.model if s == main_seed else load_model(cfg["model"], device, seed=s).model
            for s in ensemble_seeds(cfg)]


@torch.no_grad()
def _infer_batch(frames, ds, wrapper, loaded, members, cfg, expect, out_dir, device) -> int:
    """Run one batch and write the records of its stale frames; returns how many were written."""
    x = loaded.preprocess([f.image for f in frames], device)
    try:
        out = wrapper(x)
        bad = [f.frame_id for i, f in enumerate(frames) if not torch.isfinite(out.logits[i]).all()]
    except ValueError as e:  # the wrapper refuses non-finite activations before we see the logits
        bad = [f.frame_id for i, f in enumerate(frames)
               if not torch.isfinite(select_logits(loaded.model(x[i:i + 1]), loaded.output)).all()]
        if not bad:
            raise StageError(f"infer: {ds!r}, frames {[f.frame_id for f in frames]}: {e}") from None
    if bad:
        raise StageError(f"infer: the model output for frame {bad[0]!r} of {ds!r} contains NaN "
                         f"or inf (frames affected in this batch: {bad})")
    # a model may return logits smaller than the image (SegFormer: 1/4): predict at the image size
    logits = image_logits(out.logits, x.shape[-2:], wrapper.align_corners)
    pred = out.pred if logits is out.logits else argmax_channels(logits)
    names = list(out.maps)
    stacked = torch.stack([out.maps[n] for n in names], dim=1) if names else None  # (B, K, h, w)
    base_cfg = cfg["baselines"]
    written = 0
    for i, frame in enumerate(frames):
        path = out_dir / f"{frame.frame_id}.npz"
        if not _stale_groups(path, expect):
            continue  # up to date: recomputed only because it shares a batch with a stale frame
        baselines = _reusable_baselines(path, expect)
        if baselines is None:
            baselines = _compute_baselines(loaded, members, base_cfg, x[i:i + 1], cfg["seed"], frame.frame_id)
        record = Record(
            frame_id=frame.frame_id,
            pred=pred[i].cpu().numpy().astype(np.uint8),
            logits=relative_logits(out.feature_logits[i]),
            label=frame.label,
            **_pgn_fields(stacked, i),
            pgn_names=names,
            baselines=np.stack(list(baselines.values())) if baselines else None,
            baseline_names=list(baselines),
            align_corners=bool(wrapper.align_corners),
            fingerprints=expect,
            label_kind=ds.label_kind,
        )
        write_record(path, record)
        written += 1
    return written


def _pgn_fields(stacked: torch.Tensor | None, i: int) -> dict:
    if stacked is None:
        return {"log_pgn": None, "log_pgn_offset": None}
    residual, offset = encode_logs(stacked[i])
    return {"log_pgn": residual, "log_pgn_offset": offset}


def _reusable_baselines(path: Path, expect: dict[str, str]) -> dict[str, np.ndarray] | None:
    """The baseline maps of an existing record whose core and baseline fingerprints still match."""
    if _stale_groups(path, expect) & {"core", "baselines"}:
        return None
    old = read_record(path)
    return {name: old.baselines[k] for k, name in enumerate(old.baseline_names)}


def _compute_baselines(loaded, members, base_cfg, x, seed, frame_id) -> dict[str, np.ndarray]:
    maps: dict[str, torch.Tensor] = {}
    if base_cfg["mc_dropout"].get("enabled"):
        maps.update(mc_dropout_maps(loaded.model, x, base_cfg["mc_dropout"]["samples"], output=loaded.output,
                                    generator_seed=frame_seed(seed, frame_id)))
    if members:
        maps.update(ensemble_maps(members, x, output=loaded.output))
    return {name: v[0].cpu().numpy().astype(np.float16) for name, v in maps.items()}


# --- torchrun ---------------------------------------------------------------------------------

#: Barriers wait at most this long for the slowest rank (torchrun stops all ranks when one dies,
#: so a long limit never leaves a job hanging behind a dead rank).
BARRIER_TIMEOUT = datetime.timedelta(hours=6)

#: For tests only: "RANK:K" makes that rank kill itself (SIGKILL) after the batch in which its
#: K-th record was written, as a crash would (no clean-up, no exception).
TEST_KILL_ENV = "METASEG_PGN_TEST_KILL_RANK_AFTER"


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) without it."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise StageError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return rank, world


def init_process_group() -> None:
    """Join the ranks (gloo: only barriers are needed, on CPU as on GPU machines)."""
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        return
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None or "MASTER_ADDR" not in os.environ:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        return
    # Under torchrun, keys of this attempt's process group get their own prefix: after a restart
    # (--max-restarts) the agent's store still holds the killed attempt's addresses, and gloo
    # would try to connect to them.
    rank, world = rank_world()
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent_store, timeout=BARRIER_TIMEOUT,
                          multi_tenant=not agent_store)
    dist.init_process_group("gloo", store=dist.PrefixStore(f"metaseg_pgn/attempt{restart}", store),
                            rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if rank_world()[1] <= 1:
        return
    import torch.distributed as dist

    init_process_group()
    dist.barrier()


def _test_kill_after(rank: int) -> int | None:
    value = os.environ.get(TEST_KILL_ENV)
    if not value:
        return None
    target, _, count = value.partition(":")
    return int(count) if int(target) == rank else None
