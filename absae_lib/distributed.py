"""Data-parallel SAE training on ``torch.distributed`` (NCCL on GPUs, gloo on CPU), as ``torchrun`` starts it.

    torchrun --nproc_per_node 4 my_training_script.py     # calls absae_lib.train_sae(...) as usual

Every rank holds the same data and the same initial SAE (same seed; rank 0's weights are broadcast to make sure).
Each step, the global batch (``TrainConfig.batch_size`` rows, the same rows a single process would draw) is cut into
``world_size`` equal slices, rank r trains on slice r, and the gradients are averaged: the loss is a mean over rows,
so the averaged gradient is the single-process gradient of the whole batch and the weights match a one-process run
up to float rounding.  The dead-latent counts see every rank's batch (the fired masks are all-reduced) and
BatchTopK's inference threshold takes the smallest kept activation across ranks.  Rank 0 alone writes checkpoints;
every rank reads the same file on resume.

Two things are per rank rather than global: BatchTopK picks its k·B codes within each rank's slice, and AuxK's
normalised error (a ratio of sums over the batch) is averaged over the slices; both match the single-process run
only in expectation.  Logged metrics are means over ranks.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) nothing here does anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, or (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    return world()[1] > 1


def is_main() -> bool:
    """True on rank 0 (the one that writes files), and in an ordinary single process."""
    return world()[0] == 0


def setup(device: torch.device | None = None) -> torch.device | None:
    """Join the process group ``torchrun`` describes in the environment, if any; return this rank's device.

    NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo otherwise.  A group initialised by the caller is used
    as it is.  Returns ``device`` unchanged outside ``torchrun``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def local_rows(rows: Tensor) -> Tensor:
    """This rank's slice of the global batch ``rows`` [B] -> [B / world_size] (contiguous slices, rank order)."""
    rank, size = world()
    if size == 1:
        return rows
    if len(rows) % size:
        raise ValueError(
            f"batch_size {len(rows)} does not split evenly over {size} processes; use a multiple of {size} "
            "(each process trains on batch_size / world_size rows of every batch)"
        )
    share = len(rows) // size
    return rows[rank * share : (rank + 1) * share]


def broadcast_parameters_(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (in place)."""
    if is_distributed():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients_(parameters: Iterable[nn.Parameter]) -> None:
    """All-reduce the gradients to their mean over ranks, in place (one flat buffer: one collective per step)."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()[1]
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank_(mask: Tensor) -> Tensor:
    """Logical OR over ranks of a bool tensor (e.g. latents fired this step); returns the reduced mask."""
    if not is_distributed():
        return mask
    counts = mask.to(torch.int32)
    dist.all_reduce(counts)
    return counts > 0


def min_over_ranks(value: Tensor) -> Tensor:
    """The minimum over ranks of a tensor (elementwise); the input is not modified."""
    if not is_distributed():
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MIN)
    return out


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of each float in ``values`` (the logged metrics); ``device``: the ranks' device."""
    if not is_distributed():
        return values
    keys = sorted(values)
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)  # NCCL: a CUDA tensor
    dist.all_reduce(flat)
    flat /= world()[1]
    return dict(zip(keys, flat.tolist()))


def barrier() -> None:
    if is_distributed():
        dist.barrier()
