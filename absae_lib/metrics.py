"""How good is an SAE?  Reconstruction error, sparsity statistics, and the model's loss with the SAE spliced in.

Shapes: ``n`` tokens (rows), SAE input width ``d_in``, dictionary size ``d_sae``; for the model, ``n_seq`` sequences
of ``seq_len`` tokens.

    nmse          Σ‖x − x̂‖² / Σ‖x‖²              the AbsTopK paper's normalised MSE (0 is perfect, 1 is "predict 0")
    fvu           Σ‖x − x̂‖² / Σ‖x − x̄‖²          fraction of variance unexplained (1 is "predict the mean x̄")
    explained_variance = 1 − fvu
    l0            mean number of non-zero codes per token
    loss_recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean)    the paper's (H* − H₀)/(H_orig − H₀)
    nmse_per_token  mean over tokens of ‖x − x̂‖² / ‖x‖²  (every token weighs the same; see typical_mask too)

Intervals over sequences, mean ± std over seeds and verdicts live in absae_lib.intervals (re-exported here).

Every sum is over all tokens at once (a ratio of sums, not a mean of per-token ratios), accumulated in float64 so that
streaming over batches gives the same number as one big batch.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from absae_lib.intervals import (  # noqa: F401  the noise tools, importable from here beside the metrics they judge
    bootstrap_ci,
    compare,
    loss_intervals,
    mean_std,
    paired_difference_ci,
    summarize_seeds,
)
from absae_lib.sae import SAE

if TYPE_CHECKING:  # TransformerLens is slow to import; only spliced_loss needs it, and it imports it lazily
    from transformer_lens import HookedTransformer


def _ratio(num: float, den: float) -> float:
    """num / den, or nan when den is 0 (e.g. FVU of a single token, loss recovered when zero-ablation costs nothing)."""
    return num / den if den != 0 else math.nan


def _check_pair(x: Tensor, recon: Tensor) -> None:
    if x.shape != recon.shape:
        raise ValueError(f"x and recon must have the same shape, got {tuple(x.shape)} and {tuple(recon.shape)}")
    if not (x.is_floating_point() and recon.is_floating_point()):
        raise ValueError(f"x and recon must be floating-point tensors, got {x.dtype} and {recon.dtype}")
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f"x must hold at least one token [n, d_in], got shape {tuple(x.shape)}")


def _rows(codes: Tensor) -> Tensor:
    """codes [..., d_sae] -> [n, d_sae], with a clear error for an empty or non-tensor input."""
    if not isinstance(codes, Tensor) or codes.dim() < 1 or codes.numel() == 0:
        shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a non-empty tensor [n, d_sae], got {shape}")
    return codes.reshape(-1, codes.shape[-1])


# --- reconstruction ---------------------------------------------------------------------------------------------------


def nmse(x: Tensor, recon: Tensor) -> float:
    """Normalised MSE Σ‖x − x̂‖² / Σ‖x‖².  x, recon [n, d_in] (any leading dims) -> float.

    Normalised by the raw energy of x, as in the AbsTopK paper: reconstructing 0 scores 1.
    """
    _check_pair(x, recon)
    x, recon = x.double(), recon.double()
    return _ratio((x - recon).pow(2).sum().item(), x.pow(2).sum().item())


def fvu(x: Tensor, recon: Tensor) -> float:
    """Fraction of variance unexplained Σ‖x − x̂‖² / Σ‖x − x̄‖².  x, recon [n, d_in] (any leading dims) -> float.

    x̄ [d_in] is the mean over all tokens, so reconstructing every token as x̄ scores 1.  Stricter than nmse when the
    activations have a large mean (the residual stream does): part of ‖x‖² is then the easy-to-learn mean.
    """
    _check_pair(x, recon)
    x, recon = x.double().reshape(-1, x.shape[-1]), recon.double().reshape(-1, x.shape[-1])
    return _ratio((x - recon).pow(2).sum().item(), (x - x.mean(0)).pow(2).sum().item())


def nmse_per_token(x: Tensor, recon: Tensor) -> float:
    """Mean over tokens of ‖x_t − x̂_t‖² / ‖x_t‖².  x, recon [n, d_in] (any leading dims) -> float.

    Every token weighs the same, however large its norm (``nmse`` is dominated by the few massive tokens); rows with
    ‖x_t‖ = 0 have no ratio and are left out (nan if every row is zero).
    """
    _check_pair(x, recon)
    x, recon = x.double().reshape(-1, x.shape[-1]), recon.double().reshape(-1, x.shape[-1])
    norm = x.pow(2).sum(-1)
    keep = norm > 0
    return _ratio(((x - recon).pow(2).sum(-1)[keep] / norm[keep]).sum().item(), keep.sum().item())


def typical_mask(x: Tensor, factor: float = 10.0) -> Tensor:
    """[n] bool: the tokens whose norm is at most ``factor`` × the median token norm.  x [n, d_in] -> [n].

    The rest are the "massive" activations (attention sinks and their like, Sun et al. 2024): a handful of tokens
    that carry most of Σ‖x‖² and so dominate the all-token ``nmse``.  ``nmse(x[m], recon[m])`` is the typical-token NMSE.
    """
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty [n, d_in] tensor, got {tuple(x.shape) if isinstance(x, Tensor) else x}")
    if factor <= 0:
        raise ValueError(f"factor must be > 0 (a multiple of the median norm), got {factor}")
    norms = x.float().norm(dim=-1)
    return norms <= factor * norms.median()


def explained_variance(x: Tensor, recon: Tensor) -> float:
    """1 − fvu(x, recon).  x, recon [n, d_in] -> float (1 is perfect, 0 is no better than the mean)."""
    return 1.0 - fvu(x, recon)


# --- sparsity ---------------------------------------------------------------------------------------------------------


def l0(codes: Tensor) -> float:
    """Mean number of non-zero codes per token.  codes [n, d_sae] -> float."""
    codes = _rows(codes)
    return (codes != 0).sum().item() / codes.shape[0]


def mean_abs_code(codes: Tensor) -> float:
    """Mean |z| over the *non-zero* codes: the typical size of an active latent.  codes [n, d_sae] -> float.

    Averaging over the zeros too would only restate l0.  nan when no code fires.
    """
    codes = _rows(codes)
    active = codes != 0
    return _ratio(codes.abs().double().sum().item(), active.sum().item())


def fraction_negative(codes: Tensor) -> float:
    """Share of the non-zero codes that are negative.  codes [n, d_sae] -> float.

    0 for every non-negative SAE (ReLU, JumpReLU, TopK); for AbsTopK it shows how much the second pole of each
    latent is used.  nan when no code fires.
    """
    codes = _rows(codes)
    return _ratio((codes < 0).sum().item(), (codes != 0).sum().item())


def feature_density(codes: Tensor) -> Tensor:
    """Firing frequency of each latent: the fraction of tokens where it is non-zero.  codes [n, d_sae] -> [d_sae]."""
    codes = _rows(codes)
    return (codes != 0).sum(0).double() / codes.shape[0]


def dead_fraction(codes: Tensor) -> float:
    """Fraction of latents that never fire on these tokens.  codes [n, d_sae] -> float.

    "Dead" is relative to the evaluated tokens: a latent may fire on text not in the sample.
    """
    return (feature_density(codes) == 0).double().mean().item()


def dense_fraction(codes: Tensor, threshold: float = 0.1) -> float:
    """Fraction of latents that fire on more than ``threshold`` of the tokens.  codes [n, d_sae] -> float.

    Such dense latents are rarely interpretable; at threshold 0.1 a latent that fires on every 10th token counts.
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold is a firing frequency in [0, 1), got {threshold}")
    return (feature_density(codes) > threshold).double().mean().item()


class DensityHistogram(NamedTuple):
    """Histogram of log10(feature density) over the latents that fire at least once.

    Plot with ``plt.stairs(h.counts, h.log10_edges)`` and report ``h.n_dead`` beside it: log10(0) = −inf has no bin.
    """

    log10_edges: Tensor  # [bins + 1] bin edges in log10(firing frequency); the last bin includes its right edge
    counts: Tensor  # [bins] number of live latents per bin (int64)
    n_dead: int  # latents that never fired


def density_histogram(
    codes: Tensor | None = None,
    bins: int | Sequence[float] | Tensor = 50,
    *,
    density: Tensor | None = None,
) -> DensityHistogram:
    """Histogram data of log10 firing frequency.  codes [n, d_sae], or ``density=`` [d_sae] from feature_density
    (or ``evaluate_reconstruction(..., return_density=True)``, which never holds all codes in memory).

    ``bins``: a number of equal bins from the rarest live latent (with codes: from 1/n, the rarest possible) up to
    log10(1) = 0, or explicit log10 edges (use the same edges to compare SAEs; densities outside them are not counted).
    """
    if (codes is None) == (density is None):
        raise ValueError("pass exactly one of codes [n, d_sae] or density= [d_sae]")
    if codes is not None:
        density = feature_density(codes)
        lowest = math.log10(1.0 / _rows(codes).shape[0])
    else:
        density = torch.as_tensor(density)
        if density.dim() != 1 or ((density < 0) | (density > 1)).any():
            raise ValueError(f"density must be a [d_sae] tensor of frequencies in [0, 1], got {tuple(density.shape)}")
        lowest = None
    density = density.detach().double().cpu()
    live = density[density > 0]
    n_dead = int((density == 0).sum())
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"bins must be a positive int or a sequence of edges, got {bins}")
        if lowest is None:
            lowest = live.min().log10().item() if live.numel() else -1.0
        if lowest == 0.0:  # every live latent fires on every token: give the bins some width
            lowest = -1.0
        edges = torch.linspace(lowest, 0.0, bins + 1, dtype=torch.float64)
    else:
        edges = torch.as_tensor(bins, dtype=torch.float64)
        if edges.dim() != 1 or edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("bins given as edges must be an increasing 1-D sequence of at least 2 log10 values")
    counts = torch.histogram(live.log10(), bins=edges).hist.round().long()
    return DensityHistogram(log10_edges=edges, counts=counts, n_dead=n_dead)


# --- streaming evaluation over a large activation set -----------------------------------------------------------------


def _batch(activations: Tensor | np.ndarray, start: int, stop: int, device: torch.device) -> Tensor:
    """Rows start:stop as a tensor on ``device``; a numpy memmap is read only for those rows."""
    rows = activations[start:stop]
    if not isinstance(rows, Tensor):
        rows = torch.from_numpy(np.array(rows))  # copy: memmaps are often read-only, and torch wants writable memory
    return rows.to(device)


def evaluate_reconstruction(
    sae: SAE,
    activations: Tensor | np.ndarray,
    batch_size: int = 4096,
    *,
    dense_threshold: float = 0.1,
    return_density: bool = False,
    progress: bool = True,
) -> dict:
    """Reconstruction and sparsity metrics of ``sae`` on ``activations`` [n, d_in] (a tensor or a numpy memmap).

    Streams over batches under ``torch.inference_mode`` and keeps only running sums, never the [n, d_sae] codes.
    The SAE is evaluated in eval mode (BatchTopK then uses its inference threshold) and its mode is restored after.

    Returns a dict of floats: nmse, fvu, explained_variance, l0, mean_abs_code, dead_fraction, dense_fraction
    (latents firing on > ``dense_threshold`` of tokens), fraction_negative, nmse_per_token (the mean over tokens of
    ‖x − x̂‖²/‖x‖², zero rows left out), n_tokens; plus feature_density [d_sae]
    (a float64 CPU tensor) when ``return_density``.  Each equals the function of the same name on all rows at once.
    """
    if activations.ndim != 2 or activations.shape[0] == 0:
        raise ValueError(f"activations must be a non-empty [n, d_in] array, got shape {tuple(activations.shape)}")
    if activations.shape[1] != sae.cfg.d_in:
        raise ValueError(
            f"activations have width {activations.shape[1]} but the SAE expects d_in = {sae.cfg.d_in} "
            "(harvested from another hook or model?)"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not 0 <= dense_threshold < 1:
        raise ValueError(f"dense_threshold is a firing frequency in [0, 1), got {dense_threshold}")

    device = sae.W_enc.device
    n_total, d_in = activations.shape
    f64 = dict(device=device, dtype=torch.float64)
    # Running sums, kept on the device so the loop never waits for a .item().
    sq_err = torch.zeros((), **f64)  # Σ‖x − x̂‖²
    sq_norm = torch.zeros((), **f64)  # Σ‖x‖²
    mean = torch.zeros(d_in, **f64)  # running mean x̄ and Σ‖x − x̄‖², merged batch by batch (Chan et al.):
    m2 = torch.zeros((), **f64)  # computing Σ‖x‖² − n‖x̄‖² at the end would cancel badly when the mean is large
    fires = torch.zeros(sae.cfg.d_sae, device=device, dtype=torch.int64)  # tokens on which each latent fired
    n_negative = torch.zeros((), device=device, dtype=torch.int64)
    abs_sum = torch.zeros((), **f64)
    per_token_sum = torch.zeros((), **f64)  # Σ_t ‖x_t − x̂_t‖² / ‖x_t‖² over tokens with ‖x_t‖ > 0
    n_nonzero = torch.zeros((), device=device, dtype=torch.int64)
    n = 0

    was_training = sae.training
    sae.eval()
    try:
        with torch.inference_mode():
            starts = range(0, n_total, batch_size)
            for start in tqdm(starts, desc="evaluate SAE", disable=not progress, leave=False):
                x = _batch(activations, start, start + batch_size, device)
                out = sae(x)
                x64 = x.double()
                row_err = (x64 - out.recon.double()).pow(2).sum(-1)  # [b]
                row_norm = x64.pow(2).sum(-1)
                sq_err += row_err.sum()
                sq_norm += row_norm.sum()
                nonzero = row_norm > 0
                per_token_sum += (row_err[nonzero] / row_norm[nonzero]).sum()
                n_nonzero += nonzero.sum()
                n_b = x64.shape[0]
                mean_b = x64.mean(0)
                delta = mean_b - mean
                m2 += (x64 - mean_b).pow(2).sum() + delta.pow(2).sum() * (n * n_b / (n + n_b))
                mean += delta * (n_b / (n + n_b))
                n += n_b
                codes = out.codes
                fires += (codes != 0).sum(0)
                n_negative += (codes < 0).sum()
                abs_sum += codes.abs().sum(dtype=torch.float64)
    finally:
        sae.train(was_training)

    n_active = int(fires.sum())
    density = fires.double().cpu() / n
    fvu_value = _ratio(sq_err.item(), m2.item())
    result = {
        "nmse": _ratio(sq_err.item(), sq_norm.item()),
        "fvu": fvu_value,
        "explained_variance": 1.0 - fvu_value,
        "l0": n_active / n,
        "mean_abs_code": _ratio(abs_sum.item(), n_active),
        "dead_fraction": (density == 0).double().mean().item(),
        "dense_fraction": (density > dense_threshold).double().mean().item(),
        "fraction_negative": _ratio(n_negative.item(), n_active),
        "nmse_per_token": _ratio(per_token_sum.item(), n_nonzero.item()),
        "n_tokens": n,
    }
    if return_density:
        result["feature_density"] = density
    return result


# --- downstream: the language model's loss with the SAE spliced in ----------------------------------------------------


def _first_layer_touched(model: "HookedTransformer", hook_name: str) -> int | None:
    """The block whose input is the last thing all three runs share: L for ``blocks.L.*``, n_layers for the final norm
    and unembedding, None for hooks before the first block (embeddings), where nothing can be shared."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    if match:
        return int(match.group(1))
    if hook_name.startswith(("ln_final.", "unembed.")):
        return model.cfg.n_layers
    return None


def _runner(model: "HookedTransformer", batch: Tensor, layer: int | None) -> Callable[[list], Tensor]:
    """``run(fwd_hooks) -> logits`` [b, seq_len, d_vocab] for ``batch`` [b, seq_len], equal to
    ``model.run_with_hooks(batch, fwd_hooks=fwd_hooks)`` for hooks in block ``layer`` or later.

    The embedding and blocks < ``layer`` run once, here; each call runs only the rest of the model.
    """
    if layer is None:  # a hook in the embedding: nothing to share, full forward passes
        return lambda fwd_hooks: model.run_with_hooks(batch, return_type="logits", fwd_hooks=fwd_hooks)
    # input_to_embed gives the same attention mask and positional inputs that model(batch) would use.
    resid, _, shortformer_pos_embed, attention_mask = model.input_to_embed(batch)
    rest = dict(shortformer_pos_embed=shortformer_pos_embed, attention_mask=attention_mask)
    if layer > 0:
        resid = model(resid, start_at_layer=0, stop_at_layer=layer, **rest)  # [b, seq_len, d_model]
    return lambda fwd_hooks: model.run_with_hooks(
        resid, start_at_layer=layer, return_type="logits", fwd_hooks=fwd_hooks, **rest
    )


def _next_token_log_probs(logits: Tensor) -> Tensor:
    """logits [b, seq_len, d_vocab] -> log-probabilities [b, seq_len − 1, d_vocab] at the predicting positions, fp32
    (a bf16 log-softmax would round the loss)."""
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


def _nll_sum(log_probs: Tensor, targets: Tensor) -> Tensor:
    """Σ −log p(target).  log_probs [b, pos, d_vocab], targets [b, pos] -> scalar (float64)."""
    return -log_probs.gather(-1, targets[..., None]).sum(dtype=torch.float64)


def _nll_per_sequence(log_probs: Tensor, targets: Tensor) -> Tensor:
    """Σ over positions of −log p(target), per sequence.  [b, pos, d_vocab], [b, pos] -> [b] float64 on the CPU."""
    return -log_probs.gather(-1, targets[..., None])[..., 0].sum(-1, dtype=torch.float64).cpu()


def spliced_loss(
    model: "HookedTransformer",
    sae: SAE,
    tokens: Tensor,
    hook_name: str,
    batch_size: int = 8,
    *,
    progress: bool = True,
    per_sequence: bool = False,
) -> dict:
    """Next-token cross-entropy of ``model`` on ``tokens`` [n_seq, seq_len]: clean, with the SAE's reconstruction
    replacing the activation at ``hook_name``, and with that activation zero-ablated.

    Position 0 (the attention sink, ~100× the norm of the other positions and never in the SAE's training data) keeps
    its clean activation in both interventions; positions 1.. are replaced.  The losses are means over *all*
    predicted positions (0 .. seq_len − 2, as ``model(tokens, return_type="loss")``).  The prediction made at
    position 0 only sees position 0, so it is the same in all three runs: loss_recovered is exactly what it would be
    over positions 1.. alone, while delta_loss and kl are diluted by (seq_len − 2)/(seq_len − 1).

    The SAE runs in eval mode and in its own dtype/device (cast in the hook), so an fp32 SAE works in a bf16 model.
    The three runs share the model up to the hooked block: that prefix runs once per batch.

    Returns a dict of floats: ce_clean, ce_spliced, ce_zero (nats per token);
    loss_recovered = (ce_zero − ce_spliced) / (ce_zero − ce_clean) (1: as good as the model, 0: as bad as zeroing;
    nan when zero-ablating changes nothing); delta_loss = ce_spliced − ce_clean; kl = mean over predicted positions
    of KL(p_clean ‖ p_spliced) of the next-token distributions (nats); n_tokens = number of predicted positions.
    With ``per_sequence``, also "per_sequence": a dict of float64 numpy arrays [n_seq], the sums over each
    sequence's predicted positions of clean, spliced and zero NLL and of KL, and its "n_tokens": what
    :func:`bootstrap_ci` and :func:`loss_intervals` resample.
    """
    return spliced_losses(model, {"sae": sae}, tokens, hook_name, batch_size, progress=progress,
                          per_sequence=per_sequence)["sae"]


def spliced_losses(
    model: "HookedTransformer",
    saes: dict[str, SAE],
    tokens: Tensor,
    hook_name: str,
    batch_size: int = 8,
    *,
    progress: bool = True,
    per_sequence: bool = False,
) -> dict[str, dict]:
    """:func:`spliced_loss` for several SAEs on the same tokens: {name: its result}, each equal to
    ``spliced_loss(model, sae, tokens, ...)``.  The clean and zero-ablated runs do not depend on the SAE, so they run
    once per batch here, and each SAE costs one pass of the layers from its hook on instead of three."""
    if not saes:
        raise ValueError("spliced_losses needs at least one SAE")
    from absae_lib.models import validate_hook

    validate_hook(model, hook_name)
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point() or tokens.is_complex():
        got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be an integer tensor [n_seq, seq_len] (tokens[None] for one row), got {got}")
    if tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must hold at least one sequence of at least 2 tokens, got {tuple(tokens.shape)}")
    if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab:
        raise ValueError(f"token ids must lie in [0, {model.cfg.d_vocab}) (the model's vocabulary)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    layer = _first_layer_touched(model, hook_name)
    model_device = model.W_U.device
    names = ("clean", "spliced", "zero", "kl")
    # Σ over tokens, and per-sequence sums [b] (per_sequence only), per SAE; clean and zero are shared
    sums = {key: {name: torch.zeros((), dtype=torch.float64, device=model_device) for name in names} for key in saes}
    rows: dict[str, dict[str, list[Tensor]]] = {key: {name: [] for name in names} for key in saes}
    n_predicted = 0

    def zero(act: Tensor, hook) -> Tensor:
        return torch.cat([act[:, :1], torch.zeros_like(act[:, 1:])], dim=1)

    modes = {key: sae.training for key, sae in saes.items()}
    for sae in saes.values():
        sae.eval()
    try:
        with torch.inference_mode():
            starts = range(0, tokens.shape[0], batch_size)
            for start in tqdm(starts, desc=f"spliced loss @ {hook_name}", disable=not progress, leave=False):
                batch = tokens[start : start + batch_size].to(model_device)
                run = _runner(model, batch, layer)
                targets = batch[:, 1:]
                clean = _next_token_log_probs(run([]))
                zeroed = _next_token_log_probs(run([(hook_name, zero)]))
                shared = {"clean": (_nll_sum(clean, targets), _nll_per_sequence(clean, targets)),
                          "zero": (_nll_sum(zeroed, targets), _nll_per_sequence(zeroed, targets))}
                del zeroed
                for key, sae in saes.items():
                    for name, (total, per_row) in shared.items():
                        sums[key][name] += total
                        rows[key][name].append(per_row)
                    spliced = _next_token_log_probs(run([(hook_name, _splice_hook(sae, hook_name))]))
                    sums[key]["spliced"] += _nll_sum(spliced, targets)
                    # KL(clean ‖ spliced) per position [b, seq_len − 1]; kl_div takes (log q, log p).
                    kl_per_position = F.kl_div(spliced, clean, log_target=True, reduction="none").sum(-1)
                    sums[key]["kl"] += kl_per_position.sum(dtype=torch.float64)
                    rows[key]["spliced"].append(_nll_per_sequence(spliced, targets))
                    rows[key]["kl"].append(kl_per_position.sum(-1, dtype=torch.float64).cpu())
                    del spliced
                n_predicted += targets.numel()
    finally:
        for key, sae in saes.items():
            sae.train(modes[key])

    results = {}
    for key in saes:
        ce_clean, ce_spliced, ce_zero, kl = (sums[key][name].item() / n_predicted for name in names)
        result = {
            "ce_clean": ce_clean,
            "ce_spliced": ce_spliced,
            "ce_zero": ce_zero,
            "loss_recovered": _ratio(ce_zero - ce_spliced, ce_zero - ce_clean),
            "delta_loss": ce_spliced - ce_clean,
            "kl": kl,
            "n_tokens": n_predicted,
        }
        if per_sequence:
            result["per_sequence"] = {name: torch.cat(rows[key][name]).numpy() for name in names}
            result["per_sequence"]["n_tokens"] = np.full(tokens.shape[0], tokens.shape[1] - 1, dtype=np.float64)
        results[key] = result
    return results


def _splice_hook(sae: SAE, hook_name: str) -> Callable:
    """A hook that replaces positions 1.. of the activation with the SAE's reconstruction (position 0 kept)."""
    sae_device, sae_dtype, d_in = sae.W_enc.device, sae.W_enc.dtype, sae.cfg.d_in

    def splice(act: Tensor, hook) -> Tensor:  # act [b, seq_len, d_in]
        if act.shape[-1] != d_in:
            raise ValueError(
                f"{hook_name} carries activations of shape {tuple(act.shape)}, but the SAE expects d_in = {d_in}: "
                "was it trained on another hook or model?"
            )
        recon = sae(act[:, 1:].to(sae_device, sae_dtype)).recon
        return torch.cat([act[:, :1], recon.to(act.device, act.dtype)], dim=1)

    return splice
