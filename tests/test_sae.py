"""The SAE module: shapes, each variant's sparsity pattern, the unrolled solver, save/load and SAELens compatibility."""

import json

import pytest
import torch

from absae_lib import SAE, prox
from absae_lib.sae import ARCHITECTURES

D_IN, D_SAE, K = 12, 48, 4


def make(architecture, seed=0, **kwargs):
    torch.manual_seed(seed)
    k = None if architecture in ("standard", "jumprelu") else K
    sae = SAE(D_IN, D_SAE, architecture, k=k, **kwargs)
    with torch.no_grad():  # non-trivial biases and thresholds, so save/load has something to get wrong
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        if architecture in ("jumprelu", "batchtopk"):
            sae.threshold.fill_(0.05)
    return sae


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_shapes_and_forward(architecture):
    sae = make(architecture).eval()
    x = torch.randn(3, 5, D_IN)
    out = sae(x)
    assert out.codes.shape == (3, 5, D_SAE) and out.recon.shape == (3, 5, D_IN)
    assert torch.allclose(out.recon, sae.decode(sae.encode(x)))
    assert torch.allclose(out.pre, (x - sae.b_dec) @ sae.W_enc + sae.b_enc)


def test_sparsity_patterns():
    x = torch.randn(64, D_IN)
    z = make("abstopk").encode(x)
    assert torch.all((z != 0).sum(-1) == K) and (z < 0).any()  # exactly k, both signs
    z = make("topk").encode(x)
    assert torch.all((z != 0).sum(-1) <= K) and torch.all(z >= 0)
    sae = make("batchtopk").train()
    z = sae.encode(x)
    assert (z != 0).sum() <= K * 64 and torch.all(z >= 0)
    z = make("jumprelu").encode(x)
    assert torch.all((z == 0) | (z > 0.05))


def test_bad_input_errors():
    sae = make("abstopk")
    with pytest.raises(ValueError, match="last dimension 12"):
        sae.encode(torch.randn(4, 7))
    with pytest.raises(ValueError, match="floating-point"):
        sae.encode(torch.ones(4, D_IN, dtype=torch.long))
    with pytest.raises(ValueError, match="larger than the dictionary"):
        SAE(D_IN, 8, "topk", k=9)
    with pytest.raises(ValueError, match="needs k"):
        SAE(D_IN, 8, "abstopk")
    with pytest.raises(ValueError, match="unknown architecture"):
        SAE(D_IN, 8, "gated")


def test_unrolled_equals_ista_from_the_encoder_step():
    sae = make("unrolled", unrolled_steps=4, dtype="float64")
    x = torch.randn(16, D_IN, dtype=torch.float64)
    first = prox.abs_topk(sae.pre_activation(x), K)
    expected = prox.ista(x, sae.W_dec.T, lambda v: prox.abs_topk(v, K), 3, b=sae.b_dec, step=sae.step.item(), z0=first)
    assert torch.allclose(sae.encode(x), expected.codes)
    one = make("unrolled", unrolled_steps=1, dtype="float64")
    assert torch.allclose(one.encode(x), prox.abs_topk(one.pre_activation(x), K))


def test_fold_input_scale_keeps_codes():
    sae = make("abstopk")
    x = torch.randn(32, D_IN)
    s = 3.7
    before = sae(x * s)
    sae.fold_input_scale_(s)
    after = sae(x)
    assert torch.allclose(after.codes, before.codes, atol=1e-5)
    assert torch.allclose(after.recon * s, before.recon, atol=1e-5)


def test_remove_parallel_grad():
    sae = make("abstopk")
    sae(torch.randn(8, D_IN)).recon.pow(2).sum().backward()
    sae.remove_parallel_grad_()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(-1)
    assert torch.all(parallel.abs() <= 1e-6 * sae.W_dec.grad.norm(dim=-1) + 1e-7)  # zero up to float32 rounding


def test_jumprelu_threshold_gets_straight_through_gradient():
    sae = make("jumprelu", jumprelu_bandwidth=0.1)
    pre = torch.tensor([[0.06, 0.5, -1.0] + [0.0] * (D_SAE - 3)])
    codes = sae.activation(pre)
    codes.sum().backward()
    # d/dθ of z·1[z > θ] ≈ −(θ/ε)·rect((z − θ)/ε): only the first entry lies within ε/2 of θ = 0.05
    expected = torch.zeros(D_SAE)
    expected[0] = -(0.05 / 0.1)
    assert torch.allclose(sae.threshold.grad, expected)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_load_round_trip_is_bit_identical(architecture, tmp_path):
    sae = make(architecture)
    sae.cfg.metadata.update(model_name="smollm2-135m", hook_name="blocks.15.hook_resid_post")
    sae.save(tmp_path / "sae")
    loaded = SAE.load(tmp_path / "sae")
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded.cfg == sae.cfg
    x = torch.randn(10, D_IN)
    sae.eval(), loaded.eval()
    assert torch.equal(sae.encode(x), loaded.encode(x))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved SAE"):
        SAE.load(tmp_path)
    make("topk").save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a/cfg.json").read_text())
    cfg["architecture"] = "gated"
    (tmp_path / "a/cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="cannot load"):
        SAE.load(tmp_path / "a")
    cfg["architecture"], cfg["d_sae"] = "topk", 64  # a config that does not match the weights
    (tmp_path / "a/cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="another config"):
        SAE.load(tmp_path / "a")
    make("topk").save(tmp_path / "b")
    (tmp_path / "b/sae_weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt"):
        SAE.load(tmp_path / "b")


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk", "abstopk"])
def test_sae_lens_reads_our_folders(architecture, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = make(architecture).eval()
    sae.save(tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    assert theirs.cfg.architecture() == architecture
    x = torch.randn(20, D_IN)
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), sae.encode(x), atol=1e-6)
        assert torch.allclose(theirs(x), sae(x).recon, atol=1e-6)


# --- safe saves and loads that check what they read (issue 13) ----------------------------------------------------------


def _same_sae(a, b):
    return a.cfg == b.cfg and all(torch.equal(t, b.state_dict()[name]) for name, t in a.state_dict().items())


def _save_forever(folder, saes):
    i = 0
    while True:  # until the parent's SIGKILL
        saes[i % 2].save(folder, overwrite=True)
        i += 1


def test_sigkill_during_save_leaves_the_old_sae_or_the_new_one(tmp_path):
    import multiprocessing
    import os
    import random
    import signal
    import time

    # Same tensor shapes, different SAEs: a TopK k=4 and an AbsTopK k=8 (the pair the old two-step save mixed up).
    old, new = make("topk"), SAE(D_IN, D_SAE, "abstopk", k=8)
    folder = tmp_path / "sae"
    old.save(folder)
    context = multiprocessing.get_context("fork")
    rng = random.Random(0)
    for trial in range(8):
        child = context.Process(target=_save_forever, args=(folder, (new, old)))
        child.start()
        time.sleep(rng.uniform(0.03, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        loaded = SAE.load(folder)
        assert _same_sae(loaded, old) or _same_sae(loaded, new), trial
        assert not list(folder.glob(".save.tmp-*"))  # the cut-short save was finished or dropped by load
    # A save that completes after all that is read back exactly.
    new.save(folder, overwrite=True)
    assert _same_sae(SAE.load(folder), new)


def test_save_refuses_to_overwrite_an_sae_but_not_other_files(tmp_path):
    folder = tmp_path / "sae"
    (folder / "checkpoint").mkdir(parents=True)  # what pipeline.sae_with_history saves beside
    make("topk").save(folder)
    with pytest.raises(FileExistsError, match="already holds a saved SAE.*overwrite=True"):
        make("abstopk").save(folder)
    assert SAE.load(folder).cfg.architecture == "topk"
    make("abstopk").save(folder, overwrite=True)
    assert SAE.load(folder).cfg.architecture == "abstopk" and (folder / "checkpoint").is_dir()
    assert sorted(p.name for p in folder.iterdir()) == [".sae.lock", "cfg.json", "checkpoint", "sae_weights.safetensors"]


@pytest.mark.parametrize("saved, claimed", [("topk", "abstopk"), ("abstopk", "topk"), ("standard", "topk"),
                                             ("batchtopk", "jumprelu")])
def test_cfg_beside_weights_of_another_architecture_is_refused(tmp_path, saved, claimed):
    # The tensors have the same names and shapes: only the weights' own metadata can tell.
    make(saved).save(tmp_path / "a")
    make(claimed).save(tmp_path / "b")
    (tmp_path / "a/cfg.json").write_text((tmp_path / "b/cfg.json").read_text())
    with pytest.raises(ValueError, match=r"cfg\.json and .*sae_weights\.safetensors describe different SAEs"):
        SAE.load(tmp_path / "a")


def test_cfg_from_another_save_of_the_same_kind_is_refused(tmp_path):
    make("topk", seed=0).save(tmp_path / "a")
    make("topk", seed=1).save(tmp_path / "b")
    (tmp_path / "a/cfg.json").write_text((tmp_path / "b/cfg.json").read_text())
    with pytest.raises(ValueError, match="two different saves"):
        SAE.load(tmp_path / "a")


def test_broken_cfg_errors_name_the_file(tmp_path):
    make("topk").save(tmp_path / "a")
    cfg_path = tmp_path / "a/cfg.json"
    cfg = json.loads(cfg_path.read_text())
    for broken, message in [({k: v for k, v in cfg.items() if k != "d_in"}, "lacks d_in"),
                            ({**cfg, "metadata": 3}, "metadata must be a JSON object"),
                            ([1, 2], "must hold a JSON object")]:
        cfg_path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=message) as err:
            SAE.load(tmp_path / "a")
        assert str(cfg_path) in str(err.value)
    cfg_path.write_text(json.dumps({**cfg, "metadata": None}))  # SAELens's "no metadata"
    assert SAE.load(tmp_path / "a").cfg.metadata == {}
    cfg_path.write_text('{"d_in": 12,')
    with pytest.raises(ValueError, match="not valid JSON") as err:
        SAE.load(tmp_path / "a")
    assert str(cfg_path) in str(err.value)


def test_encode_takes_numpy_and_refuses_scalars():
    import numpy as np

    sae = make("abstopk").eval()
    x = torch.randn(5, D_IN)
    assert torch.equal(sae.encode(x.numpy()), sae.encode(x))
    assert torch.equal(sae(x.numpy()).recon, sae(x).recon)
    assert sae.encode(x[0]).shape == (D_SAE,)  # one token [d_in] is fine
    with pytest.raises(ValueError, match="0-D tensor"):
        sae.encode(torch.tensor(1.0))
    with pytest.raises(ValueError, match="must be a tensor"):
        sae.encode("not an array")
    with pytest.raises(ValueError, match="last dimension 12"):
        sae.encode(np.ones(3, dtype=np.float32))
