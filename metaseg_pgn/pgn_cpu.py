"""The fast CPU path of the PGN maps: the maps of the reference :mod:`metaseg_pgn.pgn`, tested
against it, with fewer and cheaper passes over the big tensors.

The public functions of :mod:`metaseg_pgn.pgn` call :func:`last_layer`, :func:`deeper_layer` and
:func:`abs_power_sums` for CPU tensors (``backend="auto"``); their inputs are checked there.

Numerics and cost
-----------------
The passes over the big tensors (ψ: κ × h × w, the logits: C × h × w, the deeper layer's δ) run in
the inputs' precision: float64 for float64 inputs, float32 otherwise. Only the small per-pixel
results (B × h × w per p) are combined in float64 (:func:`metaseg_pgn.pgn.combine`), which is where
p = 0.1 leaves the float32 range.

- The elementwise passes run in numpy: its log/exp are 2-3 times faster than torch's pow, and
  torch's log/sqrt are ~10x slower on inputs with many zeros (ReLU outputs). One transcendental
  pass per tensor: ``t = |x|^b`` for the smallest non-integer p (0.1 by default); the other
  fractional p are products (``|x|^0.3 = t³``, ``|x|^0.5 = t⁵``), the integer p are ``|x|`` and
  ``|x|·|x|``, and a product is summed over the channels without being formed where einsum can
  (``Σ t⁵ = Σ t²·t²·t``). Row chunk by row chunk, so the temporaries stay in the cache.
- Threads: with ``torch.get_num_threads() = n > 1`` the chunks' numpy passes run on the calling
  thread and n − 1 threads of a pool created and shut down inside the call (:func:`worker_pool`;
  numpy releases the GIL, the tasks write disjoint outputs). The torch work (label sums, ReLU
  mask, the deeper layer's δ = K'ᵀv by row chunks) stays on the calling thread, beside the pool's
  tasks, with torch's own intra-op threads.
- The softmax is never formed. With ``m1 ≥ m2`` the two largest logits (``ĉ`` the first index of
  ``m1``) and ``e_c = exp(min(z_c − m2, 0))`` (``e_ĉ = 1``): ``Σ_{c≠ĉ} s_c^p = s_2^p · o_p`` with
  ``o_p = Σ_c e_c^p − 1 ∈ [1, C − 1]`` (the second largest logit contributes exactly 1, so
  nothing under- or overflows and the subtraction costs at most a factor 2 in precision), and
  ``Σ_c s_c^p = s_1^p (1 + exp(−p (m1 − m2)) o_p)``, where ``s_1 = 1 / (1 + exp(m2 − m1) o_1)``
  and ``s_2 = exp(m2 − m1) s_1`` are computed in float64 per pixel. Both labels (and
  ``1 − s_ĉ = s_2 o_1`` for the one-hot gradient) share one set of sums. Only the uniform label
  with ``weights="gradient"`` (``s − 1/C``, a cancellation) takes the float64 softmax.
- Accuracy of float32 inputs against the float64 reference of the same values: every term
  carries a few units of float32 rounding (u = 6e-8); float32 channel sums of non-negative terms
  add ~√κ·u (≤ (κ − 1)·u in the worst case), except for p < 1/4, whose terms are accumulated in
  float64; ``(·)^(1/p)`` multiplies relative errors by 1/p (≤ 4 where the sums are float32).
  Measured ≤ 2e-6 on the compact model's 32k pixels; tested at 1e-5. Exception, inherent to
  float32: an entry of δ (deeper layer) or of ``s − 1/C`` that nearly cancels is accurate only
  relative to the cancelling terms, and small p weigh such entries (up to ~1e-3 at p = 0.1 for δ).
- Guard: a float32 sum that overflows (inf), or a sum for p > 1 so small that terms may have
  underflowed (< 2^-90 at a pixel that is not all zero), is recomputed in float64. NaN/inf in ψ
  are found from the sums (no separate pass) and reported as such; the logits are checked upfront.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .pgn import _box_sum, combine
from .pgn_checks import ConvGeometry

__all__ = ["abs_power_sums", "deeper_layer", "last_layer", "worker_pool"]

# Elements of one row chunk of the power sums: the chunk's temporaries (a few tensors of this size)
# stay in the cache.
_POWER_CHUNK_ELEMS = 2**18
# A float32 sum of |x|^p with p > 1 below this may have lost terms to underflow (each lost term is
# below 2^-126, so even 2^11 of them change a sum ≥ 2^-90 by < 2^-25 relative): float64 instead.
_UNDERFLOW = 2.0**-90
# ``(·)^(1/p)`` multiplies the relative error of a sum by 1/p: below this p the float32 terms are
# accumulated in float64 (numpy does it without a float64 copy: ~2x the time of a float32 sum).
_EXACT_SUM_BELOW = 0.25

Run = Callable[..., None]  # run(tasks, caller=None), see worker_pool


def _work_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (also for float16/bfloat16 inputs)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# ----------------------------------------------------------------------------------------------
# threads


def _run_serial(tasks: Sequence[Callable[[], None]], caller: Callable[[], None] | None = None) -> None:
    """Run ``caller`` (if given) and the callables one after the other on the calling thread."""
    for task in ([caller] if caller is not None else []) + list(tasks):
        task()


def _run_parallel(pool: ThreadPoolExecutor, workers: int, tasks: Sequence[Callable[[], None]],
                  caller: Callable[[], None] | None = None) -> None:
    """Run the callables on the calling thread and up to ``workers`` threads of ``pool``, each
    taking the next task when free; ``caller`` (if given) first, on the calling thread only. The
    caller's grad and inference mode (thread-local) are set in the workers; the first exception is
    re-raised here."""
    workers = min(workers, len(tasks) - (caller is None))
    if workers < 1:
        _run_serial(tasks, caller)
        return
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    queue = iter(range(len(tasks)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def loop() -> None:
        while not errors:
            with lock:
                i = next(queue, None)
            if i is None:
                return
            try:
                tasks[i]()
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)

    def worker() -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            loop()
    futures = [pool.submit(worker) for _ in range(workers)]
    try:
        if caller is not None:
            try:
                caller()
            except BaseException as exc:  # re-raised below, after the workers stopped
                errors.append(exc)
        loop()
    finally:
        for future in futures:
            future.result()
    if errors:
        raise errors[0]


@contextlib.contextmanager
def worker_pool():
    """A scoped thread pool for the independent tasks of one call.

    Yields
    ------
    callable
        ``run(tasks, caller=None)``: runs a sequence of argument-free callables (that write
        disjoint outputs), and ``caller`` on the calling thread, and returns when all are done.
        With ``torch.get_num_threads() = n > 1`` the tasks run on the calling thread and n − 1
        threads of a ``ThreadPoolExecutor`` that is shut down (its threads joined) when the
        context exits; with n = 1 one after the other. Tasks do numpy work only: a torch
        operation large enough to go parallel would start an OpenMP team in every new thread
        (measured: +15 ms per call), so torch work goes into ``caller``.
    """
    threads = torch.get_num_threads()
    if threads <= 1:
        yield _run_serial
        return
    with ThreadPoolExecutor(threads - 1, thread_name_prefix="metaseg_pgn") as pool:
        yield functools.partial(_run_parallel, pool, threads - 1)


# ----------------------------------------------------------------------------------------------
# power sums


def _chunk_power_sums(x: Tensor | None, ps: Sequence[float], log_x: Tensor | None = None,
                      cache: dict | None = None, nonneg: bool = True) -> list[Tensor]:
    """``[Σ_channels |x|^p for p in ps]`` for a float32/float64 CPU tensor x of shape (B, K, ...)
    (sums (B, ...) in x's dtype, float64 for p < 1/4), every power reduced as soon as it exists.

    ``nonneg``: x is known to be ≥ 0; otherwise x itself is tried first (the log of a negative
    entry turns a sum into NaN, which is detected, so a ReLU output costs no abs pass) and |x|
    taken where needed. ``log_x`` (optional, = log x) gives the fractional powers as
    ``exp(p · log_x)``; ``x`` may then be None (``x = exp(log_x)`` is computed if needed and left
    in ``cache[1]``). See :func:`_np_power_sums`.
    """
    ref = x if x is not None else log_x
    shape = ref.shape
    flat = [None if t is None else t.numpy().reshape(shape[0], shape[1], -1) for t in (x, log_x)]
    if not nonneg and all(kind == "int" for kind, _, _ in _plan(ps)[1]):
        flat[0] = np.abs(flat[0])  # no log to reveal negative entries
    sums, xn = _np_power_sums(flat[0], ps, flat[1])
    if not nonneg and np.isnan(np.sum([s.sum() for s in sums])):  # negative (or NaN) entries
        sums, xn = _np_power_sums(np.abs(flat[0]), ps, flat[1])
    if cache is not None and xn is not None:
        cache[1] = torch.from_numpy(xn).view(shape)
    return [torch.from_numpy(t).view(shape[0], *shape[2:]) for t in sums]


def _power_sum_tasks(source, shape: tuple[int, ...], ps: Sequence[float], dtype: torch.dtype):
    """Row-chunk tasks of ``Σ`` over dim 1 of ``|x|^p`` and a ``finish()`` that returns the sums
    (len(ps), B, h, w) float64 after the float64 fallback.

    ``source(r0, r1, dtype)`` returns the chunk (B, K, r1 - r0, w) of x in ``dtype`` and whether it
    is known to be ≥ 0; ``shape`` is x's (B, K, h, w). In float32, the p whose sums overflowed or
    may have underflowed (:func:`_float32_trouble`) are recomputed in float64 by ``finish``."""
    b, k, h, w = shape
    rows = max(1, _POWER_CHUNK_ELEMS // max(1, b * k * w))
    out = torch.empty(len(ps), b, h, w, dtype=torch.float64)
    out_np = out.numpy()  # the tasks write through numpy (see worker_pool)

    def chunk(r0: int) -> None:
        r1 = min(h, r0 + rows)
        x, nonneg = source(r0, r1, dtype)
        for i, s in enumerate(_chunk_power_sums(x, ps, nonneg=nonneg)):
            out_np[i, :, r0:r1] = s.numpy()

    def finish() -> Tensor:
        if dtype == torch.float64:
            return out
        redo = _float32_trouble(out, ps)
        if redo:
            sub = [ps[i] for i in redo]
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                x, nonneg = source(r0, r1, torch.float64)
                for i, s in zip(redo, _chunk_power_sums(x, sub, nonneg=nonneg)):
                    out[i, :, r0:r1] = s
        return out
    return [lambda r0=r0: chunk(r0) for r0 in range(0, h, rows)], finish


def _abs_power_sums(source, shape: tuple[int, ...], ps: Sequence[float], dtype: torch.dtype,
                    run: Run) -> Tensor:
    """:func:`_power_sum_tasks` run with ``run``: (len(ps), B, h, w) float64."""
    tasks, finish = _power_sum_tasks(source, shape, ps, dtype)
    run(tasks)
    return finish()


def abs_power_sums(x: Tensor, ps: Sequence[float]) -> Tensor:
    """``Σ_channels |x|^p`` for all p from one pass over x.

    Parameters
    ----------
    x : Tensor, shape (B, K, h, w), on the CPU
        float64 is computed in float64, every other dtype in float32 (module notes).
    ps : sequence of float
        Exponents > 0 (checked by the caller).

    Returns
    -------
    Tensor, shape (len(ps), B, h, w), float64
    """
    with worker_pool() as run:
        return _abs_power_sums(_raw_source(x, _work_dtype(x)), tuple(x.shape), ps, _work_dtype(x), run)


# ----------------------------------------------------------------------------------------------
# the maps (inputs checked by metaseg_pgn.pgn)


def last_layer(psi: Tensor, logits: Tensor, geometry: ConvGeometry, ps: Sequence[float],
               labels: Sequence[str], weights: str, include_bias: bool) -> dict[str, Tensor]:
    """The last-layer maps at the feature resolution (see :func:`metaseg_pgn.pgn.last_layer_pgn`).

    Parameters
    ----------
    psi : Tensor, shape (B, κ, h_in, w_in)
    logits : Tensor, shape (B, C, h, w)
    geometry : ConvGeometry
    ps : tuple of float
    labels : tuple of {"oh", "uni"}, not empty
    weights : {"paper", "gradient"}
    include_bias : bool

    Returns
    -------
    dict of str to Tensor
        ``map_name("last", label, p)`` → (B, h, w) float64.
    """
    with worker_pool() as run:
        tasks, patch_sums = _power_sum_tasks(_raw_source(psi, _work_dtype(psi)), tuple(psi.shape), ps,
                                                _work_dtype(psi))
        found = {}
        run(tasks, caller=lambda: found.update(_label_parts(logits, ps, labels, weights)))
    patch = _box_sum(patch_sums(), geometry)
    if include_bias:
        patch += 1.0
    parts = {label: found[label][:2] for label in labels}
    return combine("last", parts, patch, ps, {"psi": psi}, root=_root)


def deeper_layer(psi_prev: Tensor, prev: ConvGeometry, psi: Tensor, logits: Tensor, kernel_t: Tensor,
                 ps: Sequence[float], labels: Sequence[str], weights: str, include_bias: bool,
                 clip: float | None) -> dict[str, Tensor]:
    """The deeper-layer maps (see :func:`metaseg_pgn.pgn.deeper_layer_pgn`).

    Parameters
    ----------
    psi_prev : Tensor, shape (B, κ', h_in, w_in)
    prev : ConvGeometry
        conv_prev's geometry.
    psi : Tensor, shape (B, κ, h, w)
    logits : Tensor, shape (B, C, h, w)
    kernel_t : Tensor, shape (κ, C), float64
        ``(K_last · γ/σ)ᵀ``: the last conv's 1 × 1 kernel with the BatchNorm's slope folded in.
    ps, labels, weights, include_bias, clip
        As in :func:`metaseg_pgn.pgn.deeper_layer_pgn` (labels not empty).

    Returns
    -------
    dict of str to Tensor
        ``map_name("deep", label, p)`` → (B, h, w) float64.
    """
    dtype = _work_dtype(psi, logits)
    b, kappa, h, w = psi.shape
    with worker_pool() as run:
        # the label vectors and the ReLU mask alongside the patch sums of ψ_prev, then all δ chunks
        prev_dtype = _work_dtype(psi_prev)
        tasks, prev_sums = _power_sum_tasks(_raw_source(psi_prev, prev_dtype), tuple(psi_prev.shape), ps,
                                            prev_dtype)
        found = {}
        run(tasks, caller=lambda: found.update(_label_parts(logits, ps, labels, weights, vectors=True),
                                               mask=_relu_mask(psi, dtype, clip)))
        mask = found.pop("mask")
        # δ of each label on this thread (torch work) while the pool sums the previous label's
        sources = {label: _delta_source(kernel_t, found[label][2], mask, dtype) for label in labels}
        sources[labels[0]][0]()
        sums = {}
        for k, label in enumerate(labels):
            tasks, sums[label] = _power_sum_tasks(sources[label][1], (b, kappa, h, w), ps, dtype)
            run(tasks, caller=sources[labels[k + 1]][0] if k + 1 < len(labels) else None)
    patch = _box_sum(prev_sums(), prev)
    if include_bias:
        patch += 1.0
    parts = {label: (found[label][0], sums[label]()) for label in labels}
    return combine("deep", parts, patch, ps, {"psi_prev": psi_prev, "psi": psi}, root=_root)


# ----------------------------------------------------------------------------------------------
# internals: the elementwise passes


def _is_integer_p(p: float) -> bool:
    return p == round(p) and 1 <= p <= 16


def _plan(ps: Sequence[float]) -> tuple[float | None, list[tuple[str, int, float]]]:
    """How each power is computed: ``("int", n, p)``: ``x^n`` by products of ``x``;
    ``("frac", m, p)``: ``t^m`` with ``t = x^b`` for b the smallest non-integer p; ``("pow", 0, p)``:
    its own pass. Returns (b, steps in the order of ps)."""
    fractional = [p for p in ps if not _is_integer_p(p)]
    base = min(fractional) if fractional else None
    steps = []
    for p in ps:
        if _is_integer_p(p):
            steps.append(("int", int(round(p)), p))
            continue
        m = int(round(p / base))
        if 1 <= m <= 16 and abs(m * base - p) <= 1e-12 * p:
            steps.append(("frac", m, p))
        else:
            steps.append(("pow", 0, p))
    return base, steps


def _chain(cache: dict[int, Tensor], n: int) -> Tensor:
    """``x^n`` from ``cache`` (``{1: x, ...}``) by products, storing what it computes."""
    if n in cache:
        return cache[n]
    for i in sorted(cache, reverse=True):
        if n - i in cache:
            cache[n] = cache[i] * cache[n - i]
            return cache[n]
    if n % 2 == 0:
        half = _chain(cache, n // 2)
        cache[n] = half * half
    else:
        cache[n] = _chain(cache, n - 1) * cache[1]
    return cache[n]


def _np_power_sums(x, ps: Sequence[float], log_x=None) -> tuple[list, object]:
    """``[Σ_k x[:, k]^p for p in ps]`` for a non-negative float32 numpy array (B, K, N), and x.

    One ``t = exp(b · log x)`` for the smallest non-integer p = b; a power ``t^m`` (or ``x^n``) is
    summed without being formed where it is a product of at most three formed ones (``np.einsum``
    multiplies and sums in one pass: ``Σ t³ = Σ t²·t``, ``Σ t⁵ = Σ t²·t²·t``, ``Σ x² = Σ x·x``),
    so the default p cost one log, one exp and one product (``t²``) besides the reductions.
    ``log_x`` (= log x) may be given, and then x may be None (``exp(log_x)``, formed if needed).
    """
    base, steps = _plan(ps)
    ints: dict[int, object] = {} if x is None else {1: x}
    fracs: dict[int, object] = {}
    logs: list = [log_x]

    def exp_of(p: float):
        if logs[0] is None:
            with np.errstate(divide="ignore", invalid="ignore"):  # log 0 = -inf, exp(-inf) = 0
                logs[0] = np.log(x)
        if p == 1.0:
            return np.exp(logs[0])
        y = np.multiply(logs[0], logs[0].dtype.type(p))
        return np.exp(y, out=y)

    sums = []
    for kind, n, p in steps:
        if kind == "pow":
            sums.append(_np_sum(exp_of(p), p))
        elif kind == "frac":
            if not fracs:
                fracs[1] = exp_of(base)
            sums.append(_np_reduce(fracs, n, p))
        else:
            if not ints:
                ints[1] = exp_of(1.0)
            sums.append(_np_reduce(ints, n, p))
    return sums, ints.get(1)


def _np_reduce(cache: dict, n: int, p: float):
    """Σ over axis 1 of ``y^n`` from the formed powers in ``cache`` ({1: y, ...}), forming more
    (y² first) only where n is not a sum of at most three formed exponents."""
    dtype = np.float64 if p < _EXACT_SUM_BELOW else None
    while True:
        if n in cache:
            return _np_sum(cache[n], p)
        have = sorted(cache, reverse=True)
        for i in have:
            if n - i in cache:
                return np.einsum("bkn,bkn->bn", cache[i], cache[n - i], dtype=dtype)
        for i in have:
            for j in have:
                if n - i - j in cache:
                    return np.einsum("bkn,bkn,bkn->bn", cache[i], cache[j], cache[n - i - j], dtype=dtype)
        if 2 not in cache:
            cache[2] = cache[1] * cache[1]
        else:
            _chain(cache, n)


def _np_sum(y, p: float):
    """Σ over axis 1 of a numpy (B, K, N). float32 terms: accumulated in float64 for p < 1/4 (the
    sum's error is multiplied by 1/p > 4), else in float32 (relative error ~√K·u typically,
    ≤ (K - 1)·u, u = 6e-8)."""
    return y.sum(axis=1, dtype=np.float64 if p < _EXACT_SUM_BELOW else None)


def _raw_source(t: Tensor, dtype: torch.dtype):
    """Row chunks of ``t`` (B, K, rows, w), not known to be non-negative (the power sums take |·|).
    ``t`` is converted to ``dtype`` here, on the calling thread (see :func:`worker_pool`); the
    float64 fallback converts its chunks."""
    t_work = t.to(dtype)

    def source(r0: int, r1: int, dtype: torch.dtype) -> tuple[Tensor, bool]:
        return (t_work if t_work.dtype == dtype else t)[:, :, r0:r1].to(dtype), False
    return source


def _float32_trouble(sums: Tensor, ps: Sequence[float]) -> list[Tensor]:
    """Indices of the p whose sums of float32 terms (P, B, h, w) are not finite, or (p > 1) below
    ``_UNDERFLOW`` where the pixel is not all zero (judged by a p ≤ 1 sum when there is one)."""
    big = [i for i, p in enumerate(ps) if p > 1]
    # fast path: two reductions (the sums are ≥ 0, so their total is finite iff each one is)
    if bool(torch.isfinite(sums.sum())) and all(bool(sums[i].amin() >= _UNDERFLOW) for i in big):
        return []
    bad = ~torch.isfinite(sums).flatten(1).all(1)
    if big:
        low = sums[big] < _UNDERFLOW
        small = [i for i, p in enumerate(ps) if p <= 1]
        if small:
            low &= sums[small[0]] > 0
        bad[big] |= low.flatten(1).any(1)
    return [i for i, flag in enumerate(bad.tolist()) if flag]


def _label_parts(z: Tensor, ps: Sequence[float], labels: Sequence[str], weights: str,
                 vectors: bool = False) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
    """Per label ``(factor, sums, vec)``: ``||v||_p^p = factor^p · sums[i]``; with ``vectors``
    also ``vec`` (B, C, h, w) in the work dtype with ``v = factor · vec``. factor (B, h, w) and
    sums (P, B, h, w) are float64. See the module notes for the formulas."""
    dtype = _work_dtype(z)
    f64 = torch.float64
    b, c = z.shape[:2]
    spatial = tuple(z.shape[2:])
    if c == 1:  # s = 1: every v is zero
        zero = z.new_zeros((b, *spatial), dtype=f64)
        return {label: (zero, z.new_ones((len(ps), b, *spatial), dtype=f64),
                        z.new_zeros(z.shape, dtype=dtype) if vectors else None) for label in labels}
    zw = z.to(dtype)
    m1 = zw.amax(1, keepdim=True)
    # 1 at the largest logit, 0 elsewhere (sign is ~4x faster than ==); ĉ is the first maximum
    first = torch.sign(zw - m1).add_(1.0)
    if float(first.sum()) != first.numel() // c:  # a tie somewhere (exact below 2^24 pixels): as argmax
        first = torch.zeros_like(zw).scatter_(1, zw.argmax(1, keepdim=True), 1.0)
    m2 = torch.add(zw, first, alpha=-torch.finfo(dtype).max / 4).amax(1, keepdim=True)
    gap = m1[:, 0].to(f64) - m2[:, 0].to(f64)  # m1 - m2 >= 0, exact
    # z_c - m2 <= 0 off ĉ; 0 at ĉ. Then Σ_c exp(p (z_c - m2)) = 1 + o_p with o_p ≥ 1 (the second
    # largest logit contributes exactly 1), so o_p = sum - 1 loses at most a factor 2 in precision
    shifted = (zw - m2).clamp_max_(0.0)
    cache: dict[int, Tensor] = {}
    need_o1 = 1.0 not in ps
    eps = ps + ((1.0,) if need_o1 else ())
    osums = _chunk_power_sums(None, eps, shifted, cache)
    osums = torch.stack([o.to(f64) for o in osums]).sub_(1.0)  # Σ_{c≠ĉ} exp(p (z_c - m2)) ∈ [1, C - 1]
    o1 = osums[eps.index(1.0)]
    osums = osums[:len(ps)]
    e = cache[1]  # exp(z - m2), 1 at ĉ
    del shifted, cache
    r = torch.exp(-gap)  # s2 / s1
    s1 = 1.0 / (1.0 + r * o1)
    s2 = r * s1
    parts = {}
    for label in labels:
        if label == "oh":
            if weights == "paper":  # s with ĉ set to 0
                vec = e * (1.0 - first) if vectors else None
                parts[label] = (s2, osums, vec)
            else:  # s - e_ĉ: |s_ĉ - 1| = Σ_{c≠ĉ} s_c = s2 · o1
                sums = osums + torch.stack([o1.pow(p) for p in ps])
                vec = torch.addcmul(e, first, -(1.0 + o1[:, None].to(dtype))) if vectors else None
                parts[label] = (s2, sums, vec)
        elif weights == "paper":  # (C-1)/C · s = (C-1)/C · s1 · exp(z - m1)
            sums = torch.stack([torch.exp(-p * gap) for p in ps]).mul_(osums).add_(1.0)
            vec = None
            if vectors:
                r_w = r[:, None].to(dtype)
                vec = torch.addcmul(e * r_w, first, 1.0 - r_w)
            parts[label] = ((c - 1) / c * s1, sums, vec)
        else:  # s - 1/C cancels: the float64 softmax
            w64 = torch.softmax(z.to(f64), dim=1) - 1.0 / c
            sums = _abs_power_sums(_raw_source(w64, dtype), (b, c, *spatial), ps, dtype, _run_serial)
            parts[label] = (torch.ones_like(s1), sums, w64.to(dtype) if vectors else None)
    return parts


def _delta_chunk(kernel_t: Tensor, vec: Tensor, mask: Tensor, r0: int, r1: int, dtype: torch.dtype) -> Tensor:
    """Rows r0..r1-1 of ``mask ⊙ |K'ᵀ vec|`` in ``dtype``: (B, κ, r1 - r0, w) from kernel_t (κ, C),
    vec (B, C, h, w) and mask (B, κ, h, w)."""
    b, c, _, w = vec.shape
    d = torch.matmul(kernel_t.to(dtype), vec[:, :, r0:r1].reshape(b, c, (r1 - r0) * w).to(dtype))
    return d.view(b, kernel_t.shape[0], r1 - r0, w).abs_().mul_(mask[:, :, r0:r1].to(dtype))


def _delta_source(kernel_t: Tensor, vec: Tensor, mask: Tensor, dtype: torch.dtype):
    """Row chunks of ``|δ| / factor`` (B, κ, rows, w) and a function that computes them in
    ``dtype`` on the calling thread (torch work, see :func:`worker_pool`), chunk by chunk as the
    power sums read them (the matmul's output stays in the cache); the float64 fallback
    recomputes its chunks."""
    b, kappa, h, w = mask.shape
    rows = max(1, _POWER_CHUNK_ELEMS // max(1, b * kappa * w))  # the chunks of _power_sum_tasks
    chunks: dict[int, Tensor] = {}

    def compute() -> None:
        for r0 in range(0, h, rows):
            chunks[r0] = _delta_chunk(kernel_t, vec, mask, r0, min(h, r0 + rows), dtype)

    def source(r0: int, r1: int, want: torch.dtype) -> tuple[Tensor, bool]:
        if want == dtype:
            return chunks[r0], True
        return _delta_chunk(kernel_t, vec, mask, r0, r1, want), True
    return compute, source


def _relu_mask(psi: Tensor, dtype: torch.dtype, clip: float | None = None) -> Tensor:
    """``1[ψ > 0]`` in ``dtype``: sign(ψ) (several times faster than a comparison), clamped only
    when ψ has negative entries; with ``clip`` also 0 where ``ψ >= clip`` (a clamped activation)."""
    mask = torch.sign(psi.to(dtype))
    if not bool(psi.amin() >= 0):
        mask.clamp_min_(0.0)
    if clip is not None:
        mask.mul_(psi < clip)
    return mask


# ----------------------------------------------------------------------------------------------
# internals: combination


def _root(x: Tensor, p: float) -> Tensor:
    """``x^(1/p)`` (float64, x ≥ 0): products for integer 1/p, else numpy's sqrt/pow (~2x faster
    than torch's)."""
    n = 1.0 / p
    if abs(n - round(n)) <= 1e-12 * n and 1 <= round(n) <= 64:
        return _chain({1: x}, int(round(n)))
    xn = x.numpy()
    return torch.from_numpy(np.sqrt(xn) if p == 2.0 else np.power(xn, n))
