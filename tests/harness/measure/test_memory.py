"""Peak-memory readers and analytic cache sizes (measurement.md §7).

Oracles: the caches' own ``nbytes()``; the published per-sample sizes of §7.3; the kernel's
resident-set accounting for a buffer this test allocates and touches; a fake NVML.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.measure import memory
from harness.measure.memory import cache_bytes, read_peaks, reset_peaks
from harness.model.network import DiTConfig
from tests.conftest import tiny_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,L", [(1, 16), (3, 40)])
def test_cache_bytes_equal_the_allocated_caches(dtype, b, L):
    model = tiny_model("esolm")
    s = torch.empty((), dtype=dtype).element_size()
    kv = model.new_kv_cache(b, L, dtype=dtype)
    assert cache_bytes(model.config, "kv", b, L, s) == kv.nbytes()
    qkv = model.new_qkv_cache(b, L, 4, dtype=dtype)
    assert cache_bytes(model.config, "qkv", b, L, s, with_mask=True) == qkv.nbytes()
    assert cache_bytes(model.config, "qkv", b, L, s) == qkv.nbytes() - L * L


def test_cache_bytes_match_published_sizes_for_dit_small():
    cfg = DiTConfig.from_size("small", vocab_size=50258)
    assert round(cache_bytes(cfg, "kv", 1, 1024, 2) / 1e6, 1) == 37.7
    assert round(cache_bytes(cfg, "qkv", 1, 1024, 2) / 1e6, 1) == 56.6
    assert round(cache_bytes(cfg, "px0", 1, 1024, 4) / 1e9, 1) == 0.2  # "≈ 0.2 GB in fp32"
    assert cache_bytes(cfg, "px0", 8, 1024, 2) == 8 * 1024 * 50258 * 2


def test_unknown_cache_kind_names_the_value():
    with pytest.raises(ValueError, match="'kvq'.*'kv'.*'qkv'.*'px0'"):
        cache_bytes(DiTConfig(), "kvq", 1, 8, 2)


def test_cpu_peaks_are_nan_where_not_applicable_and_rss_tracks_a_buffer():
    reset_peaks("cpu")
    base = read_peaks("cpu")
    for k in ("peak_alloc_gb", "peak_reserved_gb", "nvml_used_gb"):
        assert math.isnan(base[k]), k
    assert base["peak_rss_gb"] > 0
    buf = torch.ones(300_000_000 // 4)  # 0.3 GB, touched
    grown = read_peaks("cpu")
    assert grown["peak_rss_gb"] - base["peak_rss_gb"] > 0.25
    del buf
    reset_peaks("cpu")
    after = read_peaks("cpu")
    if after["peak_rss_scope"] == "since_reset":  # clear_refs permitted (Linux ≥ 4.0)
        assert after["peak_rss_gb"] < grown["peak_rss_gb"] - 0.25
    else:
        assert after["peak_rss_gb"] >= grown["peak_rss_gb"]  # lifetime peak


def test_rss_falls_back_to_lifetime_peak(monkeypatch):
    monkeypatch.setattr(memory, "_clear_refs", lambda: False)
    reset_peaks("cpu")
    assert read_peaks("cpu")["peak_rss_scope"] == "process_lifetime"
    monkeypatch.setattr(memory, "_status_kib", lambda field: math.nan)  # no /proc
    out = read_peaks("cpu")
    assert out["peak_rss_scope"] == "process_lifetime" and out["peak_rss_gb"] > 0


class FakeNVML:
    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=7_500_000_000, total=80e9, free=72.5e9)


def test_nvml_used_from_a_fake_and_nan_without_nvml(monkeypatch):
    assert read_peaks("cuda:0", nvml=FakeNVML())["nvml_used_gb"] == pytest.approx(7.5)
    assert math.isnan(read_peaks("cpu", nvml=FakeNVML())["nvml_used_gb"])
    monkeypatch.setattr(memory, "nvml_module", lambda: None)
    out = read_peaks("cuda:0")
    assert math.isnan(out["nvml_used_gb"])
    if not torch.cuda.is_available():
        assert math.isnan(out["peak_alloc_gb"]) and math.isnan(out["peak_reserved_gb"])
