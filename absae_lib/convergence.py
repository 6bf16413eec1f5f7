"""Has training converged?  Held-out evaluation during training, the plateau test, and the train/held-out gap.

``train_sae(data, config, eval_data=heldout)`` with ``TrainConfig.eval_every = N`` calls :func:`heldout_row` every N
steps (and at the last step) and adds its keys to that step's history row:

    heldout_nmse            Σ‖x − x̂‖² / Σ‖x‖² on the held-out rows, raw units (all tokens)
    heldout_nmse_per_token  mean over held-out tokens of ‖x − x̂‖² / ‖x‖²
    heldout_l0              mean active latents per held-out token (BatchTopK: its inference threshold)
    train_sample_nmse       the same NMSE on a fixed sample of training rows, same weights: the gap's other side
    train_sample_nmse_per_token   and its mean per-token NMSE

The evaluation runs under ``torch.no_grad`` in eval mode and draws no random numbers, so the training trajectory
is the same with and without it.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from absae_lib.sae import SAE

# raw rows [n, d_in] -> (SAE input rows [n, d_in], factor [n, 1] or scalar with input = raw · factor)
InputTransform = Callable[[Tensor], tuple[Tensor, Tensor]]


@torch.no_grad()
def heldout_row(sae: SAE, rows: Tensor, transform: InputTransform, batch_size: int = 4096,
                prefix: str = "heldout_") -> dict[str, float]:
    """NMSE (all tokens, raw units), mean per-token NMSE and L0 of ``sae`` on raw ``rows`` [n, d_in].

    ``transform`` maps raw rows to what the SAE sees during training (global scale or per-token normalisation) and
    returns the factor used, so the reconstruction is compared in raw units whatever the normalisation.
    Keys: ``{prefix}nmse``, ``{prefix}nmse_per_token``, ``{prefix}l0``.
    """
    device = sae.W_enc.device
    was_training = sae.training
    sae.eval()
    err = energy = per_token = active = 0.0
    n = rows.shape[0]
    try:
        for start in range(0, n, batch_size):
            x = rows[start : start + batch_size].to(device, torch.float32)
            x_in, factor = transform(x)
            out = sae(x_in)
            recon = out.recon.float() / factor
            sq_err = (x - recon).double().pow(2).sum(-1)  # [b]
            sq_norm = x.double().pow(2).sum(-1)
            err += sq_err.sum().item()
            energy += sq_norm.sum().item()
            per_token += (sq_err / sq_norm.clamp_min(1e-30)).sum().item()
            active += (out.codes != 0).sum().item()
    finally:
        sae.train(was_training)
    return {
        f"{prefix}nmse": err / energy if energy > 0 else math.nan,
        f"{prefix}nmse_per_token": per_token / n,
        f"{prefix}l0": active / n,
    }


def heldout_curve(history: Sequence[dict], key: str = "heldout_nmse") -> list[list[float]]:
    """[[step, value], ...] of the history rows that carry ``key`` (the rows where held-out evaluation ran)."""
    return [[row["step"], row[key]] for row in history if key in row and row[key] is not None]


class Plateau(NamedTuple):
    reached: bool  # the last ``window`` of steps improved the curve by less than ``tol`` (relative)
    improvement: float  # (value at the window's start − last value) / value at the window's start; > 0 is better


def plateau(curve: Sequence[Sequence[float]] | Sequence[dict], window: float = 0.2, tol: float = 0.02,
            key: str = "heldout_nmse") -> Plateau:
    """Whether the last ``window`` (a fraction) of the steps improved a lower-is-better curve by less than ``tol``.

    ``curve``: [[step, value], ...] (e.g. :func:`heldout_curve`) or a training history (rows with ``key``).  The value
    at the window's start step is interpolated linearly between the evaluated steps.  Needs ≥ 2 points.

    Note: with the trainer's default LR schedule the last 20% of steps are also the LR decay, which usually brings a
    last drop; a run "has plateaued" by this test when even that drop is below ``tol``.
    """
    if not 0 < window < 1:
        raise ValueError(f"window is a fraction of the steps in (0, 1), got {window}")
    if tol < 0:
        raise ValueError(f"tol is a relative improvement ≥ 0, got {tol}")
    if len(curve) and isinstance(curve[0], dict):
        curve = heldout_curve(curve, key)
    points = np.asarray(curve, dtype=float)
    if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] != 2:
        raise ValueError(
            "plateau needs a curve of at least 2 [step, value] points; train with TrainConfig.eval_every and "
            "eval_data so the history has held-out rows"
        )
    steps, values = points[:, 0], points[:, 1]
    if not np.all(np.diff(steps) > 0):
        raise ValueError("the curve's steps must increase")
    start = steps[-1] - window * (steps[-1] - steps[0])
    at_start = float(np.interp(start, steps, values))
    improvement = (at_start - values[-1]) / at_start if at_start != 0 else 0.0
    return Plateau(reached=bool(improvement < tol), improvement=float(improvement))


def train_heldout_gap(history: Sequence[dict], key: str = "nmse") -> float:
    """(held-out − training-sample) / training-sample ``key`` ("nmse" or "nmse_per_token") at the last evaluation:
    > 0 means the SAE fits its training rows better than unseen ones (overfitting shows as a gap that grows with the
    passes).  The all-token NMSE of an 8192-row sample hinges on the one or two massive tokens it happens to hold,
    so its gap can be large either way; the per-token gap does not (histories before that key: use final_gap)."""
    rows = [row for row in history if f"heldout_{key}" in row and f"train_sample_{key}" in row]
    if not rows:
        raise ValueError(f"the history has no held-out rows with {key!r}; train with TrainConfig.eval_every and "
                         "eval_data, or measure the final SAE with final_gap")
    last = rows[-1]
    return (last[f"heldout_{key}"] - last[f"train_sample_{key}"]) / last[f"train_sample_{key}"]


@torch.no_grad()
def final_gap(sae: SAE, train_rows: Tensor, heldout_rows: Tensor) -> float:
    """(held-out − training) / training mean per-token NMSE of a trained SAE (raw rows [n, d_in] on each side)."""
    from absae_lib.metrics import evaluate_reconstruction

    train = evaluate_reconstruction(sae, train_rows, progress=False)["nmse_per_token"]
    heldout = evaluate_reconstruction(sae, heldout_rows, progress=False)["nmse_per_token"]
    return (heldout - train) / train
