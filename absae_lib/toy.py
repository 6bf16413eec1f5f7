"""Synthetic data built from known *signed* atoms, and how well a learned dictionary recovers them (chapter 2).

    signed_atom_data   x = codes @ atoms (+ noise): each sample is k_true atoms, each with a random sign
    atom_cosines       cosine of every decoder row with every true atom
    best_atom          each decoder row's closest atom (by |cos|) and the signed cosine to it
    atom_recovery      how many atoms some decoder row finds (|cos| > threshold), and how many are found twice,
                       once per sign (a + row and a − row: the split a non-negative SAE needs)
    atom_usage         on data with known codes: which latents actually *write* each atom occurrence, per sign

Shapes: ``n`` samples, ``d`` the ambient dimension, ``n_atoms`` true atoms, ``d_sae`` decoder rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class SignedAtomData(NamedTuple):
    x: Tensor  # [n, d] samples
    atoms: Tensor  # [n_atoms, d] unit-norm true atoms (rows, like an SAE's W_dec)
    codes: Tensor  # [n, n_atoms] true codes: k_true non-zeros per row, signed, |value| in magnitude


def signed_atom_data(
    n: int,
    d: int,
    n_atoms: int,
    k_true: int,
    seed: int = 0,
    magnitude: tuple[float, float] = (1.0, 2.0),
    noise: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> SignedAtomData:
    """Samples that are sums of ``k_true`` random atoms out of ``n_atoms``, each with a random sign.

    atoms: ``n_atoms`` independent Gaussian directions in R^d, normalised to unit norm.
    codes: per sample, ``k_true`` distinct atoms chosen uniformly; each gets a magnitude uniform in ``magnitude``
    and a sign +1 or −1 with probability ½.  x = codes @ atoms + noise·N(0, I).

    Args:
        n: number of samples.
        d: ambient dimension.
        n_atoms: number of true atoms.
        k_true: active atoms per sample, 1 ≤ k_true ≤ n_atoms.
        seed: the generator's seed (same arguments, same data).
        magnitude: (low, high) of the uniform magnitudes, 0 < low ≤ high.
        noise: standard deviation of the isotropic Gaussian noise added to x.
        dtype: floating-point dtype of all three tensors.

    Returns:
        SignedAtomData(x [n, d], atoms [n_atoms, d], codes [n, n_atoms]).
    """
    for name, value in (("n", n), ("d", d), ("n_atoms", n_atoms), ("k_true", k_true)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if k_true > n_atoms:
        raise ValueError(f"k_true = {k_true} is larger than n_atoms = {n_atoms}")
    low, high = magnitude
    if not 0 < low <= high:
        raise ValueError(f"magnitude must be (low, high) with 0 < low ≤ high, got {magnitude!r}")
    if noise < 0:
        raise ValueError(f"noise must be ≥ 0, got {noise}")
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g, dtype=torch.float64)
    atoms /= atoms.norm(dim=-1, keepdim=True)
    support = torch.rand(n, n_atoms, generator=g).argsort(-1)[:, :k_true]  # [n, k_true] distinct atoms
    values = low + (high - low) * torch.rand(n, k_true, generator=g, dtype=torch.float64)
    signs = torch.randint(0, 2, (n, k_true), generator=g).to(torch.float64) * 2 - 1
    codes = torch.zeros(n, n_atoms, dtype=torch.float64).scatter_(1, support, values * signs)
    x = codes @ atoms
    if noise > 0:
        x += noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return SignedAtomData(x.to(dtype), atoms.to(dtype), codes.to(dtype))


def atom_cosines(W_dec: Tensor, atoms: Tensor) -> Tensor:
    """Cosine of every decoder row with every atom.  W_dec [d_sae, d], atoms [n_atoms, d] -> [d_sae, n_atoms].

    Norms do not matter (both are normalised here); computed in float64.
    """
    if W_dec.dim() != 2 or atoms.dim() != 2 or W_dec.shape[1] != atoms.shape[1]:
        raise ValueError(f"W_dec [d_sae, d] and atoms [n_atoms, d] must be 2-D with the same d, got "
                         f"{tuple(W_dec.shape)} and {tuple(atoms.shape)}")
    rows = W_dec.detach().double().cpu()
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    targets = atoms.detach().double().cpu()
    targets = targets / targets.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return rows @ targets.T


class BestAtom(NamedTuple):
    atom: Tensor  # [d_sae] long: the atom with the largest |cos| to each decoder row
    cosine: Tensor  # [d_sae] the signed cosine to that atom


def best_atom(W_dec: Tensor, atoms: Tensor) -> BestAtom:
    """Each decoder row's closest atom up to sign.  W_dec [d_sae, d], atoms [n_atoms, d] -> BestAtom([d_sae], [d_sae])."""
    cos = atom_cosines(W_dec, atoms)
    atom = cos.abs().argmax(dim=1)
    return BestAtom(atom, cos.gather(1, atom[:, None])[:, 0])


class AtomRecovery(NamedTuple):
    n_atoms: int
    recovered: int  # atoms with at least one decoder row at |cos| > threshold (either sign)
    both_signs: int  # atoms with a row at cos > threshold AND a row at cos < −threshold (a ± pair)
    rows_per_atom: Tensor  # [n_atoms] long: how many decoder rows have |cos| > threshold with the atom
    best_positive: Tensor  # [n_atoms] the largest cosine of any decoder row with the atom
    best_negative: Tensor  # [n_atoms] the smallest (most negative) cosine of any decoder row with the atom

    @property
    def fraction(self) -> float:
        """recovered / n_atoms."""
        return self.recovered / self.n_atoms

    @property
    def both_signs_fraction(self) -> float:
        """both_signs / n_atoms."""
        return self.both_signs / self.n_atoms


def atom_recovery(W_dec: Tensor, atoms: Tensor, threshold: float = 0.9) -> AtomRecovery:
    """Which true atoms a dictionary has found, and which it has found twice, once per sign.

    A signed atom a is *recovered* if some decoder row w has |cos(w, a)| > threshold: a signed code (AbsTopK) can
    then write both +a and −a with that one row.  A non-negative code can only write the −a pole with a second
    row pointing the other way, so for it the telling count is ``both_signs``: atoms with a row at cos > threshold
    and another at cos < −threshold.

    Args:
        W_dec: [d_sae, d] decoder rows (any norms).
        atoms: [n_atoms, d] true atoms (any norms).
        threshold: the cosine a row must beat, in (0, 1).

    Returns:
        AtomRecovery(n_atoms, recovered, both_signs, rows_per_atom [n_atoms], best_positive [n_atoms],
        best_negative [n_atoms]).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    cos = atom_cosines(W_dec, atoms)  # [d_sae, n_atoms]
    best_positive = cos.max(dim=0).values
    best_negative = cos.min(dim=0).values
    has_positive, has_negative = best_positive > threshold, best_negative < -threshold
    return AtomRecovery(
        n_atoms=atoms.shape[0],
        recovered=int((has_positive | has_negative).sum()),
        both_signs=int((has_positive & has_negative).sum()),
        rows_per_atom=(cos.abs() > threshold).sum(dim=0),
        best_positive=best_positive,
        best_negative=best_negative,
    )


class AtomUsage(NamedTuple):
    written_positive: float  # share of the (sample, atom) occurrences with a + sign that some active latent writes
    written_negative: float  # the same for the occurrences with a − sign
    latents_per_atom: Tensor  # [n_atoms] long: distinct latents that write the atom anywhere (either sign)


def atom_usage(codes: Tensor, W_dec: Tensor, true_codes: Tensor, atoms: Tensor, threshold: float = 0.9) -> AtomUsage:
    """Which latents write which atom occurrences, on data whose true codes are known.

    Atom j occurs in sample s with sign σ = sign(true_codes[s, j]) when true_codes[s, j] ≠ 0.  Latent i *writes*
    that occurrence if it is active in s and its contribution z_si·w_i points along σ·a_j:
    sign(z_si)·cos(w_i, σ·a_j) > threshold.  A non-negative SAE needs a second latent for the − occurrences; a
    signed one can write both with one latent.

    Args:
        codes: [n, d_sae] the SAE's codes of the samples.
        W_dec: [d_sae, d] its decoder rows (any norms).
        true_codes: [n, n_atoms] the codes the samples were built from.
        atoms: [n_atoms, d] the true atoms.
        threshold: the cosine the contribution must beat, in (0, 1).

    Returns:
        AtomUsage(written_positive, written_negative (fractions in [0, 1], nan if there is no such occurrence),
        latents_per_atom [n_atoms]).
    """
    if codes.dim() != 2 or true_codes.dim() != 2 or codes.shape[0] != true_codes.shape[0]:
        raise ValueError(f"codes [n, d_sae] and true_codes [n, n_atoms] must be 2-D with the same n, got "
                         f"{tuple(codes.shape)} and {tuple(true_codes.shape)}")
    if codes.shape[1] != W_dec.shape[0] or true_codes.shape[1] != atoms.shape[0]:
        raise ValueError(f"codes {tuple(codes.shape)} must match W_dec {tuple(W_dec.shape)} and true_codes "
                         f"{tuple(true_codes.shape)} must match atoms {tuple(atoms.shape)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    cos = atom_cosines(W_dec, atoms)  # [d_sae, n_atoms]
    codes, true_sign = codes.detach().cpu().double(), true_codes.detach().cpu().double().sign()
    sample, latent = codes.nonzero(as_tuple=True)  # the N active (sample, latent) entries
    # [N, n_atoms]: entry (s, i) writes atom j's occurrence in s (false where atom j does not occur in s).
    writes = codes[sample, latent].sign()[:, None] * true_sign[sample] * cos[latent] > threshold
    n, n_atoms = true_codes.shape
    written = torch.zeros(n, n_atoms, dtype=torch.long).index_add_(0, sample, writes.long()) > 0  # [n, n_atoms]
    used = torch.zeros(codes.shape[1], n_atoms, dtype=torch.long).index_add_(0, latent, writes.long()) > 0

    def share(mask: Tensor) -> float:
        total = int(mask.sum())
        return int((written & mask).sum()) / total if total else float("nan")

    return AtomUsage(share(true_sign > 0), share(true_sign < 0), used.sum(dim=0))
