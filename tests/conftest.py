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
