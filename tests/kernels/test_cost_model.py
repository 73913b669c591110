"""The search cost model: its choices follow the measured rates, and its cache survives damage."""
from __future__ import annotations

import json
import math

import pytest

from headwater.kernels import _dispatch, cost_model
from headwater.kernels.cost_model import GEMM_QUERIES, MachineRates, plan_search


def rates(bf16_speedup: float = 2.0, bandwidth_cost: float = 5e-11) -> MachineRates:
    f32 = (3e10, 6e10, 1.8e11, 2.4e11)
    return MachineRates(
        fused_per_element=bandwidth_cost,
        fused_per_query_element=3e-11,
        unit_rows_per_element=1.2e-10,
        scan_per_score=3e-10,
        gemm_f32_flops=f32,
        gemm_bf16_flops=tuple(r * bf16_speedup for r in f32),
    )


def plan(r: MachineRates, q: int, n: int = 200_000, d: int = 576, k: int = 10, prepared: bool = False) -> str:
    return plan_search(r, q, n, d, k, few_max=8, screen_block_rows=14563, prepared=prepared)[0]


def test_one_query_takes_the_fused_pass_and_many_take_a_gemm():
    assert plan(rates(), 1) == "few"
    assert plan(rates(), 1024) == "screen"


def test_a_machine_that_emulates_bfloat16_never_screens():
    slow = rates(bf16_speedup=0.1)  # oneDNN without native bf16: far slower than float32
    assert all(plan(slow, q) != "screen" for q in (1, 8, 64, 1024))
    assert plan(slow, 1024) == "blas"


def test_prepared_keys_make_screening_cheaper():
    r = rates(bf16_speedup=1.05)
    _, raw = plan_search(r, 64, 50_000, 4096, 100, few_max=8, screen_block_rows=2048)
    _, ready = plan_search(r, 64, 50_000, 4096, 100, few_max=8, screen_block_rows=2048, prepared=True)
    assert ready["screen"] < raw["screen"] and ready["blas"] == raw["blas"]


def test_gemm_rates_interpolate_between_measured_heights():
    r = rates()
    assert r.gemm_rate("f32", 1) == pytest.approx(3e10)
    assert r.gemm_rate("f32", 4096) == pytest.approx(2.4e11)  # clamped to the tallest measured
    assert 6e10 < r.gemm_rate("f32", 20) < 1.8e11


def test_cache_is_reused_and_a_damaged_one_is_measured_again(tmp_path, monkeypatch):
    ext = _dispatch.load_extension()
    if ext is None:
        pytest.skip(str(_dispatch.extension_error()))
    monkeypatch.setenv("HEADWATER_CACHE", str(tmp_path))
    monkeypatch.setattr(cost_model, "_RATES", None)
    path = tmp_path / cost_model.RATES_FILE
    path.write_text("{not json")
    measured = cost_model.machine_rates(ext)
    assert all(math.isfinite(v) and v > 0 for v in (measured.fused_per_element, measured.scan_per_score))
    assert len(measured.gemm_bf16_flops) == len(GEMM_QUERIES)
    cached = json.loads(path.read_text())[cost_model.machine_fingerprint()]
    assert cost_model._parse(cached) == measured
    # a later process reads the file instead of measuring
    monkeypatch.setattr(cost_model, "_RATES", None)
    monkeypatch.setattr(cost_model, "measure_rates", lambda ext: pytest.fail("measured again"))
    assert cost_model.machine_rates(ext) == measured
    # entries from another layout or with nonsense values are not trusted
    assert cost_model._parse({**cached, "scan_per_score": -1.0}) is None
    assert cost_model._parse({**cached, "gemm_f32_flops": [1.0]}) is None
    assert cost_model._parse({"old": 1}) is None
