"""Which CPU path an exact top-k search takes, from rates measured on the machine it runs on.

The C++ backend of :func:`headwater.kernels.cosine_topk` has three ways to search:

- ``"few"``: one fused pass over the keys computes every query's dot products and the key norms
  (bound by memory bandwidth; at most :data:`headwater.kernels.topk.FEW_QUERIES` queries);
- ``"blas"``: a float32 GEMM per key tile, then a C++ scan into per-row heaps;
- ``"screen"``: a bfloat16 GEMM of unit rows screens the keys, and only the survivors get an exact
  float32 score (see :mod:`headwater.kernels.topk`).

Which is fastest depends on the machine: whether it multiplies bfloat16 natively (AVX512-BF16,
AMX) or emulates it, how its GEMM rate compares with its memory bandwidth, and on Q, N, d and k.
So no constant decides: :func:`machine_rates` measures the few primitives each path is made of
(about two seconds, once), caches them per machine and software (``$HEADWATER_CACHE`` or
``~/.cache/headwater``, file ``search-rates.json``), and :func:`plan_search` predicts each path's
time from them and picks the fastest. The prediction is a sum of measured unit costs::

    few     N·d·(a + b·Q)                         + N·Q·scan
    blas    N·d·a   + 2·Q·N·d / gemm_f32          + N·Q·scan
    screen  N·d·u   + 2·Q·N·d / gemm_bf16         + N·Q·scan + D·d·a + Q·S·d·b

with ``a`` the fused pass's cost per key element (reading it from memory, mostly), ``b`` its
extra cost per query (also the cost of an exact rescoring dot product per element), ``u`` the
cost of making bfloat16 unit rows per element (zero for search-ready keys), ``S`` the keys a row
rescores exactly, about ``k·(1 + ln(blocks))`` (see the topk module), and ``D`` the distinct key
rows those are, N·(1 - (1 - S/N)^Q), each fetched once. The GEMM rates are measured at
Q = 1, 8, 64 and 256 and interpolated in log Q (skinny GEMMs run far below the full rate).
``python bench/search_plan.py`` measures and prints the rates, then times every path at a set of
shapes beside its prediction (bench/RESULTS.md: the fastest path at 12 of 14 shapes, at worst
1.30x the best). A machine whose caches or thread count change should delete the cache file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

LOG = logging.getLogger("headwater.kernels")

RATES_FILE = "search-rates.json"
_CALIBRATION_KEYS, _CALIBRATION_DIM, _CALIBRATION_QUERIES = 16384, 1024, 256
GEMM_QUERIES = (1, 8, 64, 256)
PARK_SECONDS = 0.25  # long enough for another library's spinning worker threads to go to sleep


@dataclass(frozen=True)
class MachineRates:
    """Unit costs of the search primitives on this machine (seconds, or FLOP/s for the GEMMs)."""

    fused_per_element: float  # a: the fused few-query pass, per key element, one query
    fused_per_query_element: float  # b: each further query's dot product, per key element
    unit_rows_per_element: float  # u: inverse norms + bfloat16 unit rows + rounding errors
    scan_per_score: float  # one score through the C++ merge scan
    # FLOP/s of the score GEMM with GEMM_QUERIES[i] query rows: skinny GEMMs run far below the
    # full rate, so the rate is measured at several heights and interpolated in log Q
    gemm_f32_flops: tuple[float, ...]
    gemm_bf16_flops: tuple[float, ...]

    def gemm_rate(self, dtype: str, q: int) -> float:
        """FLOP/s of a [q, d] x [d, n] score GEMM in ``dtype`` ("f32" or "bf16")."""
        rates = self.gemm_f32_flops if dtype == "f32" else self.gemm_bf16_flops
        x = math.log(min(max(q, GEMM_QUERIES[0]), GEMM_QUERIES[-1]))
        xs = [math.log(v) for v in GEMM_QUERIES]
        return float(np.exp(np.interp(x, xs, np.log(rates))))

    def predict(self, path: str, q: int, n: int, d: int, k: int, screen_block_rows: int,
                prepared: bool = False) -> float:
        """Predicted seconds of ``path`` for Q queries, N keys of dim d, top-k; ``prepared``: the
        keys' screening copies exist already (:mod:`headwater.kernels.prepared`)."""
        scan = n * q * self.scan_per_score
        flops = 2.0 * q * n * d
        if path == "few":
            return n * d * (self.fused_per_element + self.fused_per_query_element * q) + scan
        if path == "blas":
            return n * d * self.fused_per_element + flops / self.gemm_rate("f32", q) + scan
        if path == "screen":
            rate = self.gemm_rate("bf16", q)
            blocks = max(1.0, n / max(1, screen_block_rows))
            survivors = min(float(n), 1.3 * k * (1.0 + math.log(blocks)))
            # each distinct surviving key row is fetched from memory once for all the rows that
            # kept it: with few queries and a large k that traffic, not the dot products, dominates
            distinct = n * (1.0 - (1.0 - survivors / n) ** q) if n else 0.0
            return (
                (0.0 if prepared else n * d * self.unit_rows_per_element)
                + flops / rate
                + scan
                + distinct * d * self.fused_per_element
                + q * survivors * d * self.fused_per_query_element
            )
        raise ValueError(f"unknown search path {path!r}")


def _best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()  # warm-up: page faults, thread pools, code paths
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


def measure_rates(ext) -> MachineRates:
    """Time each primitive once on synthetic data (about two seconds on a 2-core machine, half of
    it the pauses between libraries).

    ``ext`` is the loaded ``headwater._C``. Shapes: 16,384 keys of dim 1,024 (64 MiB, more than
    the last-level caches of most machines hold); the GEMMs at 1, 8, 64 and 256 queries.
    """
    g = torch.Generator().manual_seed(0)
    n, d, q = _CALIBRATION_KEYS, _CALIBRATION_DIM, _CALIBRATION_QUERIES
    keys = torch.randn(n, d, generator=g)
    queries = torch.nn.functional.normalize(torch.randn(q, d, generator=g), dim=1)
    keys_np, queries_np = keys.numpy(), queries.numpy()
    inv = np.empty(n, dtype=np.float32)

    def fused(count: int) -> float:
        raw = np.empty((count, n), dtype=np.float32)
        return _best_of(lambda: ext.cosine_scores_few_queries(queries_np[:count], keys_np, raw, inv))

    one, eight = fused(1), fused(8)
    per_query = max((eight - one) / 7.0, 1e-12) / (n * d)
    per_element = max(one / (n * d) - per_query, 1e-12)

    unit = torch.empty(n, d, dtype=torch.bfloat16)
    errors = np.empty(n, dtype=np.float32)
    unit_time = _best_of(lambda: ext.unit_rows_bf16(keys_np, inv, unit.view(torch.int16).numpy(), errors))

    # the calls the search makes: torch float32, torch bfloat16 with bfloat16 output
    scores = torch.empty(q, n, dtype=torch.float32)
    approx = torch.empty(q, n, dtype=torch.bfloat16)
    queries_bf16 = queries.to(torch.bfloat16)
    # a pause first: another library's worker threads (OpenBLAS's spin for tens of ms after a
    # call) slowed the GEMMs that followed by up to 6x
    time.sleep(PARK_SECONDS)
    f32_rates = [
        2.0 * rows * n * d / _best_of(lambda r=rows: torch.mm(queries[:r], keys.T, out=scores[:r]))
        for rows in GEMM_QUERIES
    ]
    bf16_rates = [
        2.0 * rows * n * d / _best_of(lambda r=rows: torch.mm(queries_bf16[:r], unit.T, out=approx[:r]))
        for rows in GEMM_QUERIES
    ]

    ext.inverse_row_norms(keys_np, inv)
    heap_s = np.full((q, 10), -np.inf, dtype=np.float32)
    heap_i = np.full((q, 10), -1, dtype=np.int64)

    scores_np = scores.numpy()

    def scan() -> None:
        heap_s.fill(-np.inf)
        heap_i.fill(-1)
        ext.topk_merge_tile(scores_np, inv, 0, heap_s, heap_i)

    scan_time = _best_of(scan)
    return MachineRates(
        fused_per_element=per_element,
        fused_per_query_element=per_query,
        unit_rows_per_element=unit_time / (n * d),
        scan_per_score=scan_time / (q * n),
        gemm_f32_flops=tuple(f32_rates),
        gemm_bf16_flops=tuple(bf16_rates),
    )


def machine_fingerprint() -> str:
    """What the rates depend on: CPU model and vector flags, thread count, torch/numpy versions."""
    model, flags = platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")
                    flags = " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
                    break
    except OSError:
        pass
    return (
        f"{model} | {flags} | threads {torch.get_num_threads()} | cpus {os.cpu_count()} | "
        f"torch {torch.__version__} | numpy {np.__version__}"
    )


def _cache_path() -> Path:
    root = os.environ.get("HEADWATER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "headwater")
    return Path(root) / RATES_FILE


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: measure again and rewrite


def _write_cache(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".search-rates-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as error:  # a read-only home still searches; it measures once per process
        LOG.warning("could not cache the search rates in %s (%s)", path, error)


_RATES: MachineRates | None = None


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _parse(entry: object) -> MachineRates | None:
    """The cached rates, or None when the entry is missing, damaged or from another layout."""
    if not isinstance(entry, dict) or sorted(entry) != sorted(f.name for f in fields(MachineRates)):
        return None
    values = {}
    for name, value in entry.items():
        if name.startswith("gemm_"):
            if not (isinstance(value, list) and len(value) == len(GEMM_QUERIES) and all(map(_positive, value))):
                return None
            values[name] = tuple(float(v) for v in value)
        elif _positive(value):
            values[name] = float(value)
        else:
            return None
    return MachineRates(**values)


def machine_rates(ext) -> MachineRates:
    """This machine's rates: from memory, else from the cache file, else measured and cached."""
    global _RATES
    if _RATES is None:
        path, key = _cache_path(), machine_fingerprint()
        data = _read_cache(path)
        rates = _parse(data.get(key))
        if rates is None:
            LOG.info("measuring this machine's search rates once (cached in %s)", path)
            rates = measure_rates(ext)
            data = _read_cache(path)  # another process may have written meanwhile
            data[key] = asdict(rates)
            _write_cache(path, data)
        _RATES = rates
    return _RATES


def plan_search(
    rates: MachineRates, q: int, n: int, d: int, k: int, *, few_max: int, screen_block_rows: int,
    prepared: bool = False,
) -> tuple[str, dict[str, float]]:
    """The fastest path for this shape and every candidate's predicted seconds."""
    candidates = ["blas", "screen"] + (["few"] if q <= few_max else [])
    predicted = {path: rates.predict(path, q, n, d, k, screen_block_rows, prepared) for path in candidates}
    return min(predicted, key=predicted.__getitem__), predicted
