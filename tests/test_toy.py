"""The toy data generator and the atom-recovery measures of chapter 2, on cases whose answers are known exactly."""

import math

import pytest
import torch

from absae_lib.toy import atom_cosines, atom_recovery, atom_usage, best_atom, signed_atom_data


# --- signed_atom_data ----------------------------------------------------------------------------------------------


def test_signed_atom_data_shapes_and_structure():
    x, atoms, codes = signed_atom_data(n=500, d=8, n_atoms=12, k_true=3, seed=1)
    assert x.shape == (500, 8) and atoms.shape == (12, 8) and codes.shape == (500, 12)
    assert x.dtype == atoms.dtype == codes.dtype == torch.float32
    torch.testing.assert_close(atoms.norm(dim=-1), torch.ones(12))
    assert ((codes != 0).sum(-1) == 3).all()  # exactly k_true atoms per sample
    active = codes[codes != 0].abs()
    assert active.min() >= 1.0 and active.max() <= 2.0  # magnitudes in the default (1, 2)
    assert (codes > 0).any() and (codes < 0).any()  # both signs occur
    torch.testing.assert_close(x, codes @ atoms)  # no noise: x is exactly the sum of its atoms


def test_signed_atom_data_is_deterministic_and_seeded():
    a = signed_atom_data(50, 6, 10, 2, seed=3)
    b = signed_atom_data(50, 6, 10, 2, seed=3)
    c = signed_atom_data(50, 6, 10, 2, seed=4)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a.atoms, c.atoms)


def test_signed_atom_data_signs_are_balanced():
    _, _, codes = signed_atom_data(4000, 6, 10, 2, seed=0, dtype=torch.float64)
    fraction_negative = (codes < 0).sum().item() / (codes != 0).sum().item()
    # 8000 fair coin flips: the standard deviation of the share is 1/(2·√8000) ≈ 0.0056
    assert abs(fraction_negative - 0.5) < 5 * 0.0056


def test_signed_atom_data_noise_and_magnitude():
    x, atoms, codes = signed_atom_data(200, 8, 12, 2, seed=0, magnitude=(3.0, 3.0), noise=0.1, dtype=torch.float64)
    assert torch.equal(codes[codes != 0].abs(), torch.full(((codes != 0).sum().item(),), 3.0, dtype=torch.float64))
    residual = x - codes @ atoms
    assert 0.08 < residual.std().item() < 0.12


@pytest.mark.parametrize("kwargs", [dict(k_true=5, n_atoms=4), dict(n=0), dict(magnitude=(2.0, 1.0)),
                                    dict(magnitude=(0.0, 1.0)), dict(noise=-1.0)])
def test_signed_atom_data_rejects_bad_arguments(kwargs):
    args = dict(n=10, d=4, n_atoms=6, k_true=2) | kwargs
    with pytest.raises(ValueError):
        signed_atom_data(**args)


# --- atom_cosines, best_atom, atom_recovery ------------------------------------------------------------------------


def _basis(n_atoms: int = 4, d: int = 6) -> torch.Tensor:
    return torch.eye(d, dtype=torch.float64)[:n_atoms]  # orthonormal atoms: every cosine is known in closed form


def test_atom_cosines_ignores_norms():
    atoms = _basis()
    W = torch.stack([3 * atoms[0], -0.5 * atoms[2], atoms[0] + atoms[1]])
    expected = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [1 / math.sqrt(2), 1 / math.sqrt(2), 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(atom_cosines(W, 2 * atoms), expected)
    best = best_atom(W, atoms)
    assert best.atom.tolist() == [0, 2, 0]
    torch.testing.assert_close(best.cosine, torch.tensor([1.0, -1.0, 1 / math.sqrt(2)], dtype=torch.float64))


def test_recovery_of_the_atoms_themselves():
    atoms = _basis()
    r = atom_recovery(atoms, atoms)
    assert (r.n_atoms, r.recovered, r.both_signs) == (4, 4, 0)
    assert r.rows_per_atom.tolist() == [1, 1, 1, 1]
    assert r.fraction == 1.0 and r.both_signs_fraction == 0.0


def test_recovery_with_signs_flipped_counts_each_atom_once():
    atoms = _basis()
    W = atoms * torch.tensor([1.0, -1.0, -2.0, 5.0], dtype=torch.float64)[:, None]  # either sign, any norm
    r = atom_recovery(W, atoms)
    assert (r.recovered, r.both_signs) == (4, 0)
    assert r.best_negative[1].item() == -1.0 and r.best_positive[1].item() == 0.0


def test_recovery_of_antipodal_pairs():
    atoms = _basis()
    r = atom_recovery(torch.cat([atoms, -atoms]), atoms)
    assert (r.recovered, r.both_signs) == (4, 4)
    assert r.rows_per_atom.tolist() == [2, 2, 2, 2]
    assert r.both_signs_fraction == 1.0


def test_recovery_threshold_is_strict_and_closed_form():
    atoms = _basis()
    # Row i = cos θ_i e_0 + sin θ_i e_5 (e_5 is not an atom), so cos(row_i, atom 0) = cos θ_i exactly.
    cosines = torch.tensor([0.95, 0.85], dtype=torch.float64)
    W = torch.zeros(2, 6, dtype=torch.float64)
    W[:, 0], W[:, 5] = cosines, (1 - cosines**2).sqrt()
    assert atom_recovery(W, atoms, threshold=0.9).recovered == 1
    assert atom_recovery(W, atoms, threshold=0.8).rows_per_atom.tolist() == [2, 0, 0, 0]
    assert atom_recovery(W, atoms, threshold=0.96).recovered == 0
    assert atom_recovery(W[:1], atoms, threshold=0.9).rows_per_atom.tolist() == [1, 0, 0, 0]


def test_recovery_of_half_the_atoms():
    atoms = _basis()
    r = atom_recovery(atoms[:2], atoms)
    assert (r.recovered, r.fraction) == (2, 0.5)


def test_recovery_rejects_bad_input():
    with pytest.raises(ValueError):
        atom_recovery(_basis(), _basis(), threshold=1.0)
    with pytest.raises(ValueError):
        atom_cosines(torch.zeros(3, 5), torch.zeros(4, 6))


# --- atom_usage ----------------------------------------------------------------------------------------------------

_CODES = torch.tensor([[1.5, 0.0, -2.0, 0.0], [0.0, -1.0, 0.0, 1.0], [-1.0, 0.0, 0.0, 2.0]], dtype=torch.float64)


def test_usage_signed_code_writes_both_poles_with_one_latent():
    atoms = _basis()
    u = atom_usage(_CODES, atoms, _CODES, atoms)  # an AbsTopK-like SAE that found every atom
    assert (u.written_positive, u.written_negative) == (1.0, 1.0)
    assert u.latents_per_atom.tolist() == [1, 1, 1, 1]


def test_usage_nonnegative_code_needs_a_pair():
    atoms = _basis()
    split = torch.cat([_CODES.clamp(min=0), (-_CODES).clamp(min=0)], dim=1)  # [z⁺, z⁻] on the rows [D; −D]
    u = atom_usage(split, torch.cat([atoms, -atoms]), _CODES, atoms)
    assert (u.written_positive, u.written_negative) == (1.0, 1.0)
    # atom 0 occurs as + and − (two latents), atom 3 only as +, atoms 1 and 2 only as − (one latent each)
    assert u.latents_per_atom.tolist() == [2, 1, 1, 1]


def test_usage_nonnegative_code_with_one_row_per_atom_misses_the_negative_pole():
    atoms = _basis()
    u = atom_usage(_CODES.clamp(min=0), atoms, _CODES, atoms)  # ReLU of the codes, no − rows
    assert (u.written_positive, u.written_negative) == (1.0, 0.0)
    assert u.latents_per_atom.tolist() == [1, 0, 0, 1]


def test_usage_wrong_sign_or_off_direction_does_not_count():
    atoms = _basis()
    u = atom_usage(-_CODES, atoms, _CODES, atoms)  # every code has the wrong sign
    assert (u.written_positive, u.written_negative) == (0.0, 0.0)
    W = atoms.clone()
    W[0] = atoms[0] + atoms[1]  # cos 1/√2 with atom 0: below 0.9
    assert atom_usage(_CODES, W, _CODES, atoms).latents_per_atom.tolist() == [0, 1, 1, 1]


def test_usage_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        atom_usage(_CODES[:2], _basis(), _CODES, _basis())
