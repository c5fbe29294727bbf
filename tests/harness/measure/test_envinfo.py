"""Environment fingerprint (measurement.md §9): complete, JSON-serialisable, and it reflects the
switches it claims to record. Oracles: a throw-away git repository, torch's own settings toggled
here, and a fake NVML.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from harness.measure.envinfo import fingerprint, git_info, nvml_info

REQUIRED = [
    "device", "git_commit", "git_dirty", "python", "os", "cpu_model", "machine_fingerprint",
    "torch", "cuda_runtime", "cudnn", "transformers", "safetensors", "torch_threads",
    "torch_interop_threads", "cpu_usable", "tf32_matmul", "tf32_cudnn", "float32_matmul_precision",
    "cudnn_benchmark", "deterministic_algorithms", "gpu_name", "gpu_memory_gb", "gpu_count",
]  # fmt: skip


def test_cpu_fingerprint_is_complete_and_serialisable():
    fp = fingerprint("cpu")
    missing = [k for k in REQUIRED if k not in fp]
    assert not missing, f"fingerprint lacks {missing}"
    assert json.loads(json.dumps(fp, allow_nan=True)).keys() == fp.keys()
    assert fp["torch"] == torch.__version__ and fp["torch_threads"] == torch.get_num_threads()
    assert fp["gpu_name"] is None and fp["gpu_count"] == 0 and math.isnan(fp["gpu_memory_gb"])
    assert fp["safetensors"] is not None  # installed in this venv
    assert "nvidia_driver" not in fp  # no NVML queried for a CPU run


def test_numerics_switches_are_read_live():
    old = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        fp = fingerprint("cpu")
        assert fp["cudnn_benchmark"] is True and fp["float32_matmul_precision"] == "high"
    finally:
        torch.backends.cudnn.benchmark = old[0]
        torch.set_float32_matmul_precision(old[1])
    assert fingerprint("cpu")["float32_matmul_precision"] == old[1]


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_git_commit_and_dirty_flag(tmp_path):
    assert git_info(tmp_path) == {"git_commit": None, "git_dirty": None}  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("1")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = git_info(tmp_path)
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    assert git_info(tmp_path) == {**clean, "git_dirty": True}
    assert fingerprint("cpu", repo=tmp_path)["git_commit"] == clean["git_commit"]


class NVMLError(Exception):
    pass


class FakeNVML:
    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUUID(self, h):
        return "GPU-1234"

    def nvmlDeviceGetMigMode(self, h):
        return (0, 0)

    def nvmlDeviceGetEccMode(self, h):
        raise NVMLError("Not Supported")

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 300_000

    def nvmlDeviceGetClockInfo(self, h, kind):
        return {1: 1410, 2: 1593}[kind]

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        return 1980

    def nvmlDeviceGetApplicationsClock(self, h, kind):
        raise NVMLError("Not Supported")


def test_nvml_fields_from_a_fake():
    info = nvml_info("cuda:0", FakeNVML())
    assert info["nvidia_driver"] == "550.54.15" and info["cuda_driver_version"] == 12040
    assert info["gpu_uuid"] == "GPU-1234" and info["mig_mode"] is False
    assert info["ecc_mode"] is None  # refused by NVML: unknown, not False
    assert info["power_limit_w"] == 300.0
    assert (info["sm_clock_mhz"], info["mem_clock_mhz"], info["sm_clock_max_mhz"]) == (
        1410,
        1593,
        1980,
    )
    assert math.isnan(info["sm_clock_app_mhz"])
    fp = fingerprint("cuda:0", nvml=FakeNVML())
    assert fp["nvidia_driver"] == "550.54.15" and fp["device"] == "cuda:0"


@pytest.mark.gpu
def test_gpu_fingerprint_on_a_real_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    fp = fingerprint("cuda:0")
    assert fp["gpu_name"] and fp["gpu_memory_gb"] > 1 and fp["gpu_count"] >= 1
