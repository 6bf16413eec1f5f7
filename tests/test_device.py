"""The device and precision rules: bf16 only where native, fp16 with a scaler elsewhere on CUDA, SAEs follow the model.

No GPU here: the CUDA answers are checked by faking the reported compute capability, and PyTorch's ``meta`` device
stands in for a second device (it runs every op for shapes only, and refuses to mix with CPU tensors, as CUDA does).
"""

from __future__ import annotations

import pytest
import torch

from absae_lib import device as dev
from absae_lib import train
from absae_lib.sae import SAE
from absae_lib.steering.hooks import clamp_latent_hook


@pytest.mark.parametrize("capability, bf16, amp", [((7, 5), False, torch.float16),  # T4: bf16 only emulated
                                                   ((8, 0), True, torch.bfloat16),  # A100
                                                   ((9, 0), True, torch.bfloat16)])  # H100
def test_bf16_needs_compute_capability_8(monkeypatch, capability, bf16, amp):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 reports: not trusted
    cuda = torch.device("cuda")
    assert dev.bf16_is_fast(cuda) is bf16
    assert dev.compute_dtype(cuda) == (torch.bfloat16 if bf16 else torch.float32)
    assert dev.autocast_dtype(cuda) == amp
    assert train._autocast_dtype(train.TrainConfig(autocast="auto"), cuda) == amp


def test_cpu_precision_is_unchanged():
    want = torch.bfloat16 if dev._cpu_has_fast_bf16() else None
    assert dev.autocast_dtype("cpu") == want
    assert train._autocast_dtype(train.TrainConfig(autocast="auto"), torch.device("cpu")) == want
    assert dev.autocast_dtype("meta") is None
    with pytest.raises(ValueError, match="'fp16'"):
        train._autocast_dtype(train.TrainConfig(autocast="half"), torch.device("cpu"))


def _tiny_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=20, act_fn="relu",
                                  device="cpu", seed=0)
    return HookedTransformer(cfg).eval()


def test_sae_follows_the_model_to_another_device():
    model = _tiny_model().to("meta")  # meta stands in for CUDA
    sae = SAE(16, 32, "abstopk", k=4).eval()  # read from a cache: on the CPU
    hook_name = "blocks.0.hook_resid_post"
    # One position: the hook's multi-position mask does a host sync (bool(mask.any())), which meta cannot answer.
    tokens = torch.tensor([[1]])
    with pytest.raises((RuntimeError, NotImplementedError)):  # the mix of devices the rule prevents
        model.run_with_hooks(tokens.to("meta"), fwd_hooks=[(hook_name, clamp_latent_hook(sae, 0, 1.0))])
    assert dev.follow(sae, model) is sae and sae.W_dec.device.type == "meta"
    device = dev.module_device(model)
    logits = model.run_with_hooks(tokens.to(device), fwd_hooks=[(hook_name, clamp_latent_hook(sae, 0, 1.0))])
    assert logits.device.type == "meta" and logits.shape == (1, 1, 20)


def test_module_device():
    assert dev.module_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters or buffers
    assert dev.module_device(torch.nn.Linear(2, 2, device="meta")).type == "meta"
    norm = torch.nn.BatchNorm1d(3, affine=False).to("meta")  # buffers only
    assert dev.module_device(norm).type == "meta"


def test_row_loader_is_plain_indexing_off_cuda():
    data = torch.randn(50, 6, dtype=torch.float16)
    loader = dev.RowLoader(data, "cpu", max_rows=8)
    index = torch.tensor([3, 7, 0, 49])
    rows = loader.rows(index)
    assert not loader.pinned and rows.dtype == torch.float16 and torch.equal(rows, data[index])


def test_fp16_training_with_a_gradient_scaler_on_cpu(tmp_path):
    # autocast="fp16" is what "auto" picks on a T4; here it runs on the CPU, through the same GradScaler path.
    g = torch.Generator().manual_seed(0)
    data = torch.rand(2048, 64, generator=g).pow(8) @ torch.randn(64, 16, generator=g)  # sparse mixtures
    config = dict(architecture="topk", d_sae=64, k=4, batch_size=256, n_steps=30, device="cpu", progress=False)
    _, fp32 = train.train_sae(data, train.TrainConfig(autocast="off", **config))
    _, fp16 = train.train_sae(data, train.TrainConfig(autocast="fp16", checkpoint_dir=str(tmp_path), **config))
    assert fp16[-1]["nmse"] < 0.9 * fp16[0]["nmse"]  # it learns
    assert fp16[-1]["nmse"] == pytest.approx(fp32[-1]["nmse"], rel=0.02)  # and tracks fp32
    state = torch.load(tmp_path / train.STATE_FILENAME, weights_only=False)
    assert state["scaler"]["scale"] > 1  # the loss was scaled (an fp32 run's disabled scaler saves nothing)
