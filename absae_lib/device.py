"""Device and precision choices: pick what the hardware has, never assume a GPU.

The device rule: the model decides.  SAEs, hooks' tensors and tokens follow the model's device (``module_device``,
``follow``); nothing here moves a model.  The precision rule: bf16 autocast only where the hardware does it natively
(a CUDA GPU of compute capability ≥ 8, a CPU with AVX512-BF16 or AMX), fp16 autocast on older CUDA GPUs (a T4
reports ``torch.cuda.is_bf16_supported()`` True, but emulates it), fp32 everywhere else.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn


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


def cuda_has_native_bf16(device: torch.device | str = "cuda") -> bool:
    """Compute capability ≥ 8.0 (Ampere and later): bf16 tensor cores.  ``is_bf16_supported`` is not this test."""
    return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 compute is worth using on ``device`` (native on the GPU or CPU, not emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return cuda_has_native_bf16(device)
    if device.type == "cpu":
        return _cpu_has_fast_bf16()
    return False


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 where it is fast, else fp32 (for reading activations; training uses ``autocast_dtype``)."""
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype worth using on ``device``: bf16 where native, fp16 on an older CUDA GPU, else None (fp32).

    fp16 has a narrow exponent range: a trainer that uses it needs a gradient scaler (``torch.amp.GradScaler``).
    """
    device = torch.device(device)
    if bf16_is_fast(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); CPU for a module that holds neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def follow(module: nn.Module, model: nn.Module) -> nn.Module:
    """Move ``module`` (an SAE, a probe) onto ``model``'s device, in place, and return it.  Dtypes are kept."""
    return module.to(module_device(model))


class RowLoader:
    """Rows of a host tensor, gathered into pinned staging buffers and copied to ``device`` without blocking.

    On CUDA a gathered batch is written into one of two pinned buffers and sent with ``non_blocking=True``, so the
    copy overlaps the previous step's compute; a buffer is reused only after its copy has finished (a CUDA event),
    so a batch is never overwritten in flight.  Anywhere else (CPU training, data already on the device) it is
    ``data[rows].to(device)``, exactly.

    Args:
        data: [n, d] tensor (host or device).
        device: where the batches are wanted.
        max_rows: the largest batch ``rows`` will be asked for (the staging buffers' size).
    """

    def __init__(self, data: Tensor, device: torch.device | str, max_rows: int):
        self.data, self.device = data, torch.device(device)
        self.pinned = self.device.type == "cuda" and data.device.type == "cpu"
        shape = (max_rows, *data.shape[1:])
        self._buffers = [torch.empty(shape, dtype=data.dtype, pin_memory=True) for _ in range(2)] if self.pinned else []
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def rows(self, index: Tensor) -> Tensor:
        """``data[index]`` on the device, in ``data``'s dtype.  index: [b] long (host), b ≤ max_rows."""
        if not self.pinned:
            return self.data[index.to(self.data.device)].to(self.device)
        turn, self._turn = self._turn, 1 - self._turn
        if self._events[turn] is not None:
            self._events[turn].synchronize()  # the copy out of this buffer (two batches ago) is done
        staging = self._buffers[turn][: len(index)]
        torch.index_select(self.data, 0, index, out=staging)
        out = staging.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._events[turn] = event
        return out


def check_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a torch.device (None: ``default_device()``), refused at once if this machine does not have it.

    Torch would only fail at the first tensor moved there, after a model has been loaded, with an assertion.
    """
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{device!r} is not a torch device ({err}); use 'cpu', 'cuda', 'cuda:0' or None (auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for, but this machine has no usable CUDA GPU "
                             "(torch.cuda.is_available() is False); use device='cpu', or None to pick automatically")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r} was asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s): use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device='mps' was asked for, but MPS is not available here; use device='cpu' or None")
    return device
