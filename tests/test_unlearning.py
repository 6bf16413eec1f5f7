"""The SAEBench adapter for the unlearning task: absae SAEs as SAEBench custom SAEs (real ``BaseSAE``; SAEBench is
installed without its dependencies by ``make setup``), and the reasons the eval cannot run offline."""

import os
import sys
import types
from pathlib import Path

import pytest
import torch

from absae_lib import unlearning
from absae_lib.sae import SAE

base_sae = pytest.importorskip("sae_bench.custom_saes.base_sae", reason="make setup installs sae-bench (no deps)")

HOOK = "blocks.3.hook_resid_post"


def trained_like(architecture: str, d_in: int = 16, d_sae: int = 40, k: int = 4, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(d_in, d_sae, architecture, k=k)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


@pytest.mark.parametrize("architecture", ["topk", "abstopk", "standard"])
def test_wrapper_is_a_saebench_sae_that_reconstructs_like_the_original(architecture):
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae

    sae = trained_like(architecture)
    wrapped = unlearning.saebench_sae(sae, "gemma-2-2b-it", HOOK)
    assert isinstance(wrapped, base_sae.BaseSAE)
    width = 2 * 40 if architecture == "abstopk" else 40
    assert wrapped.W_dec.shape == (width, 16) and wrapped.W_enc.shape == (16, width) and wrapped.cfg.d_sae == width
    # What SAEBench's run_eval does first with a custom SAE object: check unit decoder rows, standardise the cfg.
    sae_id, same, _ = load_and_format_sae("absae_test", wrapped, "cpu")
    assert same is wrapped and sae_id == "custom_sae"
    assert wrapped.cfg.hook_layer == 3 and wrapped.cfg.hook_name == HOOK and wrapped.cfg.model_name == "gemma-2-2b-it"
    x = torch.randn(50, 16)
    codes = wrapped.encode(x)
    assert (codes >= 0).all()
    if architecture != "standard":
        assert ((codes != 0).sum(-1) <= 4).all()
    torch.testing.assert_close(wrapped(x), sae(x).recon, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wrapped.decode(codes), sae(x).recon, rtol=1e-5, atol=1e-5)


def test_signed_codes_split_into_two_poles_with_rows_d_and_minus_d():
    sae = trained_like("abstopk")
    wrapped = unlearning.saebench_sae(sae, "gemma-2-2b-it", HOOK)
    torch.testing.assert_close(wrapped.W_dec[:40], sae.W_dec)
    torch.testing.assert_close(wrapped.W_dec[40:], -sae.W_dec)
    x = torch.randn(30, 16)
    z = sae.encode(x)
    codes = wrapped.encode(x)
    torch.testing.assert_close(codes[:, :40] - codes[:, 40:], z)
    assert not ((codes[:, :40] > 0) & (codes[:, 40:] > 0)).any()  # a latent sits at one pole at a time
    assert (z < 0).any()  # so the negative half is actually exercised


def test_decoder_norms_are_folded_into_the_codes():
    sae = trained_like("topk")
    scale = torch.linspace(0.5, 2.0, 40)
    with torch.no_grad():
        sae.W_dec.mul_(scale[:, None])  # rows no longer unit-norm, as after folding an input scale
    wrapped = unlearning.saebench_sae(sae, "gemma-2-2b-it", HOOK)
    torch.testing.assert_close(wrapped.W_dec.norm(dim=-1), torch.ones(40))
    x = torch.randn(20, 16)
    torch.testing.assert_close(wrapped.encode(x), sae.encode(x) * scale, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wrapped(x), sae(x).recon, rtol=1e-5, atol=1e-5)


def test_to_bfloat16_moves_the_wrapped_sae_along():
    sae = trained_like("abstopk")
    x = torch.randn(20, 16)
    reference = sae(x).recon
    wrapped = unlearning.saebench_sae(sae, "gemma-2-2b-it", HOOK).to(dtype=torch.bfloat16)  # what run_eval does
    assert wrapped.inner.W_dec.dtype == torch.bfloat16 and wrapped.dtype == torch.bfloat16
    out = wrapped(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)


def test_wrong_hook_is_refused():
    with pytest.raises(ValueError, match="resid"):
        unlearning.saebench_sae(trained_like("topk"), "gemma-2-2b-it", "blocks.3.hook_mlp_out")


def test_unavailable_reasons_in_order(monkeypatch, tmp_path):
    if not torch.cuda.is_available():
        assert "CUDA GPU" in unlearning.unavailable_reason("gemma-2-2b-it", None)
        with pytest.raises(RuntimeError, match="CUDA GPU"):
            unlearning.run_unlearning({"topk": trained_like("topk")}, "gemma-2-2b-it", HOOK, tmp_path / "x.jsonl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "CUDA GPU" in unlearning.unavailable_reason("gemma-2-2b-it", None, device="cpu")
    # Past the GPU check: the eval module, then the model, then the corpus.
    monkeypatch.setitem(sys.modules, "sae_bench.evals.unlearning.main", None)  # makes the import fail
    assert "pip install sae-bench" in unlearning.unavailable_reason("gemma-2-2b-it", None)
    monkeypatch.setitem(sys.modules, "sae_bench.evals.unlearning.main", types.ModuleType("main"))
    assert "instruction-tuned" in unlearning.unavailable_reason("gpt2-small", None)
    corpus = tmp_path / unlearning.FORGET_CORPUS
    assert "forget corpus" in unlearning.unavailable_reason("gemma-2-2b-it", corpus)
    corpus.write_text('{"text": "a line"}\n')
    assert unlearning.unavailable_reason("gemma-2-2b-it", corpus) is None


def test_workdir_puts_the_corpus_where_saebench_reads_it(tmp_path):
    corpus = tmp_path / "mine.jsonl"
    corpus.write_text('{"text": "x"}\n')
    before = os.getcwd()
    with unlearning._saebench_workdir(tmp_path / "run", corpus):
        assert Path("sae_bench/evals/unlearning/data/bio-forget-corpus.jsonl").read_text() == corpus.read_text()
    assert os.getcwd() == before
