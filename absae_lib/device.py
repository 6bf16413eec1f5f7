"""Device and precision choices: pick what the hardware has, never assume a GPU."""

from __future__ import annotations

from functools import lru_cache

import torch


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=None)
def _cpu_has_fast_bf16() -> bool:
    # bf16 matmuls only beat fp32 on CPUs with native bf16 dot products (AVX512-BF16 or AMX);
    # on plain AVX2 they are emulated and slower, so we stay in fp32 there.
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 compute is worth using on ``device`` (true on recent GPUs and bf16-capable CPUs)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_fast_bf16()
    return False


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 where it is fast, else fp32."""
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32
