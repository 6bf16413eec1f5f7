"""Matched sparsity: land every architecture at a target L0 on held-out data.

- BatchTopK: its inference threshold, recalibrated from the *final* weights.  During training the trainer keeps a
  running mean of the smallest kept activation, which lags a moving model; :func:`batchtopk_threshold` instead takes
  the mean over a few batches of B tokens of the (B·k)-th largest activation, the threshold at which a batch keeps
  exactly k·B codes.  ``TrainConfig(calibrate_batchtopk=True)`` does it at the end of training.
- ReLU and JumpReLU have no k: their L0 follows from the penalty coefficient (or the starting threshold).
  :func:`calibrate_l0` searches such a TrainConfig field by bisection on a log scale, one (short or full) training
  run per trial, until the held-out L0 lies within ±tol of the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from absae_lib.sae import SAE


@torch.no_grad()
def batchtopk_threshold(sae: SAE, rows: Tensor, batch_size: int = 4096) -> float:
    """Mean over batches of ``batch_size`` rows of the (B·k)-th largest ReLU(pre): BatchTopK's inference threshold.

    rows [n, d_in] raw activations (the SAE applies its own normalisation); a last partial batch is dropped unless it
    is the only one.  At this threshold a batch like these keeps k codes per token on average.
    """
    if sae.cfg.architecture != "batchtopk":
        raise ValueError(f"batchtopk_threshold needs a BatchTopK SAE, got {sae.cfg.architecture!r}")
    if rows.dim() != 2 or rows.shape[0] == 0:
        raise ValueError(f"rows must be a non-empty [n, d_in] tensor, got shape {tuple(rows.shape)}")
    device = sae.W_enc.device
    n = rows.shape[0]
    batch_size = min(batch_size, n)
    values = []
    for start in range(0, n - batch_size + 1, batch_size):
        pre = torch.relu(sae.pre_activation(rows[start : start + batch_size].to(device)))  # [B, d_sae]
        budget = min(batch_size * sae.cfg.k, pre.numel())
        values.append(pre.flatten().topk(budget, sorted=False).values.min())
    return torch.stack(values).double().mean().item()


@torch.no_grad()
def recalibrate_batchtopk_(sae: SAE, rows: Tensor, batch_size: int = 4096) -> float:
    """Set a BatchTopK SAE's inference threshold (every latent) to :func:`batchtopk_threshold`; returns it."""
    threshold = batchtopk_threshold(sae, rows, batch_size)
    sae.threshold.fill_(threshold)
    sae.cfg.metadata["calibrated_threshold"] = threshold
    return threshold


@torch.no_grad()
def heldout_l0(sae: SAE, rows: Tensor, batch_size: int = 4096) -> float:
    """Mean active latents per token of ``sae`` (eval mode) on raw rows [n, d_in]."""
    was_training = sae.training
    sae.eval()
    try:
        active = sum((sae.encode(rows[s : s + batch_size].to(sae.W_enc.device)) != 0).sum().item()
                     for s in range(0, rows.shape[0], batch_size))
    finally:
        sae.train(was_training)
    return active / rows.shape[0]


@dataclass
class Calibration:
    """The outcome of :func:`calibrate_l0`."""

    field: str  # the TrainConfig field searched
    value: float  # the chosen value (the trial whose L0 came closest to the target)
    l0: float  # its held-out L0
    target_l0: float
    within_tolerance: bool  # |l0 / target − 1| ≤ tol
    trials: list[tuple[float, float]] = field(default_factory=list)  # (value, held-out L0) in the order tried
    sae: Any = None  # the SAE of the chosen trial
    history: list[dict] | None = None


# L0 falls as these grow (penalty weights, starting thresholds) or rises (a starting firing rate).
_L0_FALLS_WITH = {"sparsity_coefficient": True, "init_l0": False}


def calibrate_l0(data: Any, eval_rows: Tensor, config: Any, target_l0: float, *, knob: str = "sparsity_coefficient",
                 low: float, high: float, tol: float = 0.1, max_trials: int = 8, pilot_steps: int | None = None,
                 l0_falls: bool | None = None, train: Any = None, first: float | None = None) -> Calibration:
    """Search ``config.<knob>`` in [low, high] so that the trained SAE's held-out L0 lands within ±tol of target_l0.

    Each trial trains ``replace(config, <knob>=value)`` (with ``n_steps = pilot_steps`` for cheap pilot runs; the L0
    of a longer run may still drift, so check the final one) and measures L0 on ``eval_rows`` [m, d_in].  The search
    is a bisection on log(value), stepping by the log-log secant between the bracket's ends when it falls inside:
    L0 is close to a power law in a penalty weight.  If [low, high] does not bracket the target, the closer end is
    returned with ``within_tolerance`` False (widen the range).  ``knob`` may also be "init_l0" or any numeric
    TrainConfig field; ``l0_falls`` says whether L0 falls as it grows (known for sparsity_coefficient and init_l0).
    ``train``: config -> (sae, history), default ``train_sae(data, config)``; the book passes one that caches each
    trial (absae_lib.pipeline), so a search that is run again replays from the cache.  ``first``: a best guess
    inside [low, high] tried before either end (one trial when it is already within tolerance).
    """
    from absae_lib.train import train_sae  # imported here: train.py imports this module

    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high for a log-scale search, got low={low}, high={high}")
    if first is not None and not low <= first <= high:
        raise ValueError(f"first guess {first} lies outside [low, high] = [{low}, {high}]")
    if target_l0 <= 0 or tol <= 0:
        raise ValueError(f"target_l0 and tol must be > 0, got {target_l0} and {tol}")
    if not hasattr(config, knob):
        raise ValueError(f"TrainConfig has no field {knob!r} to search")
    falls = _L0_FALLS_WITH.get(knob) if l0_falls is None else l0_falls
    if falls is None:
        raise ValueError(f"say whether L0 falls as {knob} grows: pass l0_falls=True or False")
    overrides = {"n_steps": pilot_steps} if pilot_steps is not None else {}
    trials: list[tuple[float, float]] = []
    best: dict[str, Any] = {}

    def trial(value: float) -> float:
        trial_config = replace(config, **{knob: value}, **overrides)
        sae, history = train(trial_config) if train is not None else train_sae(data, trial_config)
        l0 = heldout_l0(sae, eval_rows)
        trials.append((value, l0))
        if not best or abs(math.log(l0 / target_l0)) < abs(math.log(best["l0"] / target_l0)):
            best.update(value=value, l0=l0, sae=sae, history=history)
        return l0

    def close(l0: float) -> bool:
        return abs(l0 / target_l0 - 1) <= tol

    # Orient the bracket so that L0 falls from `lo` to `hi`.
    lo, hi = (low, high) if falls else (high, low)
    if first is None:
        l0_lo = trial(lo)
        if close(l0_lo) or len(trials) >= max_trials:
            return _result(knob, best, target_l0, close, trials)
        l0_hi = trial(hi)
    else:  # the best guess first; then the bracket's end on the side the target lies
        l0_first = trial(first)
        if close(l0_first) or len(trials) >= max_trials:
            return _result(knob, best, target_l0, close, trials)
        if l0_first > target_l0:
            lo, l0_lo = first, l0_first
            l0_hi = trial(hi)
        else:
            hi, l0_hi = first, l0_first
            l0_lo = trial(lo)
    bracketed = l0_hi <= target_l0 <= l0_lo
    while bracketed and not close(best["l0"]) and len(trials) < max_trials:
        a, b = math.log(lo), math.log(hi)
        mid = 0.5 * (a + b)
        if l0_lo > 0 and l0_hi > 0 and l0_lo != l0_hi:  # log-log secant, kept inside the middle 80%
            t = (math.log(target_l0) - math.log(l0_lo)) / (math.log(l0_hi) - math.log(l0_lo))
            mid = a + min(0.9, max(0.1, t)) * (b - a)
        value = math.exp(mid)
        l0 = trial(value)
        if l0 > target_l0:
            lo, l0_lo = value, l0
        else:
            hi, l0_hi = value, l0
    return _result(knob, best, target_l0, close, trials)


def _result(knob: str, best: dict, target_l0: float, close: Any, trials: list) -> Calibration:
    return Calibration(field=knob, value=best["value"], l0=best["l0"], target_l0=target_l0,
                       within_tolerance=close(best["l0"]), trials=trials, sae=best["sae"], history=best["history"])
