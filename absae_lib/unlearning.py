"""SAEBench's unlearning task for absae SAEs: a GPU/Colab-only path, with a plain reason when it cannot run.

SAEBench (Karvonen et al. 2025) scores unlearning by clamping the latents that fire on a "forget" corpus (WMDP-bio)
but not on a "retain" corpus (WikiText) to a negative multiple of themselves, and asking how much the model's
accuracy on WMDP-bio questions drops while its MMLU accuracy stays above 99% of the unsteered one. It needs three
things this book's offline machines do not have: an instruction-tuned model of a few billion parameters (its prompt
template is written for Gemma-2-2B-it), the WMDP bio forget corpus (``bio-forget-corpus.jsonl``, given out by the
WMDP authors on request, never downloaded automatically) and a GPU. ``unavailable_reason`` says which is missing.

SAEBench assumes non-negative codes: it picks latents by how often they are > 0 on each corpus and clamps them to a
negative value. An AbsTopK SAE goes through the ``[D, −D]`` view (``probing.signed_to_nonneg``), so each pole of a
signed latent is a latent of its own, as the paper does. ``saebench_sae`` wraps any absae SAE as SAEBench's
``BaseSAE``; ``run_unlearning`` runs the eval on several.

    saes = {v: pipeline.sae(S, v) for v in ("topk", "abstopk")}        # trained on S.model_name (e.g. gemma-2-2b-it)
    scores = run_unlearning(saes, S.model_name, S.hook_name, forget_corpus="bio-forget-corpus.jsonl")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

FORGET_CORPUS = "bio-forget-corpus.jsonl"
SAEBENCH_HINT = "pip install sae-bench  (Colab; it pulls datasets, sae-lens and the rest of SAEBench's dependencies)"


def _layer_of(hook_name: str) -> int:
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(post|pre)", hook_name)
    if not match:
        raise ValueError(f"SAEBench reads SAEs on the residual stream; got hook {hook_name!r} "
                         "(expected blocks.L.hook_resid_post)")
    return int(match.group(1))


def saebench_sae(sae, model_name: str, hook_name: str):
    """``sae`` as an SAEBench custom SAE (``sae_bench.custom_saes.base_sae.BaseSAE``).

    Signed SAEs (AbsTopK) are presented through the ``[D, −D]`` view: 2·d_sae latents, codes ReLU([z, −z]) ≥ 0.
    SAEBench requires unit-norm decoder rows; rows of another norm are folded into the codes (code·‖D_i‖ with row
    D_i/‖D_i‖), which leaves every reconstruction unchanged.

    The wrapper's encode runs the absae SAE itself (so TopK/AbsTopK keep their own selection) and its decode uses
    the wrapper's weights: ``W_dec`` [d_sae', d_in] with unit rows, ``b_dec`` [d_in].
    """
    try:
        from sae_bench.custom_saes.base_sae import BaseSAE
    except ImportError as err:
        raise ImportError(f"SAEBench is not installed ({err}); {SAEBENCH_HINT}") from None
    from absae_lib.probing import signed_to_nonneg

    view = signed_to_nonneg(sae) if sae.cfg.signed else sae
    layer = _layer_of(hook_name)

    class AbsaeSAE(BaseSAE):
        def __init__(self):
            super().__init__(d_in=view.cfg.d_in, d_sae=view.cfg.d_sae, model_name=model_name, hook_layer=layer,
                             device=view.W_dec.device, dtype=view.W_dec.dtype, hook_name=hook_name)
            self.inner = sae  # a submodule: SAEBench's .to(device, dtype) moves it along
            with torch.no_grad():
                norms = view.W_dec.norm(dim=-1).clamp_min(1e-8)
                self.W_dec.copy_(view.W_dec / norms[:, None])
                self.W_enc.copy_(view.W_enc * norms)  # the pre-activations, scaled like the codes
                self.b_enc.copy_(view.b_enc * norms)
                self.b_dec.copy_(view.b_dec)
                self.register_buffer("row_norms", norms.clone())
            self.cfg.architecture = f"absae-{view.cfg.architecture}"

        def encode(self, x: Tensor) -> Tensor:
            """[..., d_in] -> [..., d_sae'] ≥ 0."""
            codes = view.encode(x.to(self.inner.W_dec.dtype))
            return (codes * self.row_norms.to(codes.dtype)).to(x.dtype)

        def decode(self, feature_acts: Tensor) -> Tensor:
            """[..., d_sae'] -> [..., d_in]."""
            return (feature_acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec).to(feature_acts.dtype)

        def forward(self, x: Tensor) -> Tensor:
            return self.decode(self.encode(x))

    return AbsaeSAE().eval()


def unavailable_reason(model_name: str, forget_corpus: str | os.PathLike | None,
                       device: str | torch.device | None = None) -> str | None:
    """Why SAEBench's unlearning eval cannot run here, or None if it can.

    Checked in order: a CUDA device, SAEBench installed (with its eval's dependencies), an instruction-tuned model
    (SAEBench refuses others), and the WMDP forget corpus at ``forget_corpus``.
    """
    device = torch.device(device) if device is not None else None
    if not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return ("no CUDA GPU here (SAEBench runs a 2B-parameter chat model over 1,024 sequences of 1,024 tokens per "
                "SAE); run this chapter on Colab with a GPU")
    try:
        import sae_bench.evals.unlearning.main  # noqa: F401  (imports the eval's own dependencies too)
    except ImportError as err:
        return f"SAEBench's unlearning eval cannot be imported ({err}); {SAEBENCH_HINT}"
    if "it" not in model_name.split("-"):
        return (f"SAEBench's unlearning eval needs an instruction-tuned model (a name with '-it', e.g. "
                f"'gemma-2-2b-it', whose prompt template SAEBench has); got {model_name!r}")
    if forget_corpus is None or not Path(forget_corpus).is_file():
        where = "no path given" if forget_corpus is None else f"no file at {forget_corpus}"
        return (f"the WMDP bio forget corpus ({FORGET_CORPUS}) is missing ({where}); its authors share it on request "
                "(https://huggingface.co/datasets/cais/wmdp-corpora): pass its path as forget_corpus")
    return None


@contextlib.contextmanager
def _saebench_workdir(folder: Path, forget_corpus: Path):
    """SAEBench reads ./sae_bench/evals/unlearning/data/<corpus>.jsonl relative to the working directory."""
    data = folder / "sae_bench" / "evals" / "unlearning" / "data"
    data.mkdir(parents=True, exist_ok=True)
    link = data / FORGET_CORPUS
    if not link.exists():
        link.symlink_to(forget_corpus.resolve())
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)


def run_unlearning(
    saes: Mapping[str, object], model_name: str, hook_name: str, forget_corpus: str | os.PathLike,
    out_dir: str | os.PathLike = "saebench_unlearning", device: str = "cuda", llm_batch_size: int = 4,
    llm_dtype: str = "bfloat16", force_rerun: bool = False, **config,
) -> dict[str, float]:
    """SAEBench's unlearning score for each SAE: {name: score in [0, 1]} (higher: more WMDP-bio forgotten at ≤1%
    MMLU cost). Results and SAEBench's artifacts are kept under ``out_dir`` and reused unless ``force_rerun``.

    ``config`` overrides fields of SAEBench's ``UnlearningEvalConfig`` (e.g. ``n_features_list``, ``multipliers``).
    Call ``unavailable_reason`` first; this raises with that reason if the eval cannot run.

    SAEBench loads the model itself with ``HookedTransformer.from_pretrained_no_processing``, while absae trains on
    ``from_pretrained(fold_ln=True)``. For RMSNorm models (Gemma, Llama, SmolLM2) the two have the same residual
    stream, so the SAEs transfer; for LayerNorm models (GPT-2) TransformerLens's centring changes it, and the SAEs
    would read shifted activations (SAEBench only runs instruction-tuned models, Gemma-2-2B-it by default).
    """
    reason = unavailable_reason(model_name, forget_corpus, device)
    if reason is not None:
        raise RuntimeError(f"SAEBench unlearning cannot run: {reason}")
    from sae_bench.evals.unlearning.eval_config import UnlearningEvalConfig
    from sae_bench.evals.unlearning.main import run_eval

    folder = Path(out_dir).resolve()
    cfg = UnlearningEvalConfig(model_name=model_name, llm_batch_size=llm_batch_size, llm_dtype=llm_dtype, **config)
    selected = [(f"absae_{name}", saebench_sae(sae, model_name, hook_name)) for name, sae in saes.items()]
    with _saebench_workdir(folder, Path(forget_corpus)):
        results = run_eval(cfg, selected, device, str(folder / "results"), force_rerun=force_rerun,
                           artifacts_path=str(folder / "artifacts"))
    scores = {}
    for name in saes:
        key = next((k for k in results if k.startswith(f"absae_{name}_")), None)
        if key is None:  # already computed: SAEBench skips it and returns nothing for it
            path = next((folder / "results").glob(f"absae_{name}_*_eval_results.json"))
            result = json.loads(path.read_text())
        else:
            result = results[key]
        scores[name] = float(result["eval_result_metrics"]["unlearning"]["unlearning_score"])
    return scores
