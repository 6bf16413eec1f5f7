"""Shared pytest fixtures. The real SmolLM2-135M-Instruct model is loaded once per session, on CPU in fp32.

The first session on a fresh machine also converts the GGUF into the cache (~15-30 s); later sessions load
the cached fp32 folder in a few seconds.
"""

import pytest
import torch

from absae_lib.models import embedded_model_folder, load_model

# The test machines have 2 cores shared by several people: never let torch take more.
torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """For tests of tiny tensors: a second thread only adds sync overhead, which is huge when the cores are shared.
    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model():
    """The embedded SmolLM2 ``HookedTransformer`` (CPU, fp32, eval mode). Tests must not modify its weights."""
    return load_model(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def hf_model(model):
    """The same weights as a plain transformers ``LlamaForCausalLM`` (the reference the TL model must match).

    Depends on ``model`` so that the dequantised cache folder exists; loading it takes about a second.
    """
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_model_folder(), local_files_only=True).float().eval()


def _tiny_llama():
    """A 2-layer random Llama-like HookedTransformer (seed 0) with the SmolLM2 tokenizer (no BOS)."""
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder(), local_files_only=True)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=256, d_head=8, n_heads=4, n_key_value_heads=2, d_mlp=64, d_vocab=len(tokenizer),
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True, seed=0,
        device="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TransformerLens 3.9 points to its 4.x successor
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.tokenizer = tokenizer  # TransformerLens wraps a BOS-adding copy; SmolLM2 has no BOS
    model.cfg.default_prepend_bos = False
    model.cfg.tokenizer_prepends_bos = False  # else to_tokens(prepend_bos=False) drops each text's first token
    return model.eval()


@pytest.fixture(scope="session")
def make_tiny_llama():
    """Builds a fresh tiny Llama (``_tiny_llama``) on each call, for fixtures of any scope."""
    return _tiny_llama


@pytest.fixture
def tiny_llama():
    """A fresh tiny Llama per test: tests may change its weights."""
    return _tiny_llama()
