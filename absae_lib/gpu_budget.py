"""How long each chapter takes on a Colab GPU: an estimate from operation counts, for the chapters' Colab notes.

No GPU was at hand when the ``gpu`` profile was sized, so its times are estimated, not measured.  The estimate
counts the work a chapter does in a *fresh* runtime (every badge opens one): the harvest, every SAE it trains (the
same lists :mod:`absae_lib.study` and the chapters use), the spliced-in loss passes, and its analysis.  It turns
FLOPs and bytes into seconds with a :class:`GPU`'s sustained rates, which are assumptions stated here:

    T4 (free Colab): 65 TFLOP/s fp16 tensor-core peak, 8.1 TFLOP/s fp32, 320 GB/s.  We assume 20 TFLOP/s
    sustained for the SAE's large matmuls (fp16 autocast: B 4096 × d 768 × m 6144-12288), 4 TFLOP/s for the
    language model's forward pass (fp32: a T4 has no native bf16, so the harvest and the spliced-in loss run in the
    model's dtype), 250 GB/s for elementwise and top-k passes, and 2 ms of fixed cost per training step (launches,
    Adam, the dead-latent count).

The analysis of chapters 5-7 (probes, patches, generations) is scaled from its measured ``cpu`` time (two CPU
cores, SAEs cached) by how much more the ``gpu`` profile does, divided by an assumed 10× speed-up of a T4 over two
cores on those forward passes.  ``scripts/gpu_check.py`` measures the step on a real GPU; when it has run, its
step times should replace :data:`T4`'s rates here.

    python -m absae_lib.gpu_budget --profile gpu          # minutes per chapter on a T4
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import NamedTuple

from absae_lib import book

K_SPARSE = ("topk", "abstopk", "batchtopk")
DENSE = ("standard", "jumprelu")


@dataclass(frozen=True)
class GPU:
    name: str
    sae_flops: float  # sustained FLOP/s of the SAE's large matmuls (autocast dtype)
    model_flops: float  # sustained FLOP/s of the language model's forward pass
    bandwidth: float  # sustained bytes/s of elementwise and top-k passes
    step_overhead_s: float  # fixed cost of one training step
    analysis_speedup: float  # the GPU over two CPU cores on the chapters' analysis passes


T4 = GPU("T4 (free Colab)", sae_flops=20e12, model_flops=4e12, bandwidth=250e9, step_overhead_s=2e-3,
         analysis_speedup=10.0)

SETUP_S = 180.0  # the install cell's pip install, the model and the Hub dataset download (assumed)

# (d_model, d_mlp, n_layers, vocab) of the models a profile names; the forward pass's FLOPs come from these.
MODEL_SHAPES = {"gpt2-small": (768, 3072, 12, 50257), "smollm2-135m": (576, 1536, 30, 49152)}

# Chapter analysis measured at cpu with every SAE cached (``runtime_s`` in its record, seconds on 2 cores), and how
# many times more examples / passes the gpu profile's parameters cell asks for (N_PER_CLASS 1000 vs 400, ...).
CPU_ANALYSIS_S = {"05": 161.0, "06": 191.0, "06b": 110.0, "07": 583.0}
GPU_WORK_RATIO = {"05": 2.5, "06": 2.5, "06b": 1.5, "07": 3.0}


class Job(NamedTuple):
    what: str
    seconds: float


def _model_shape(model_name: str) -> tuple[int, int, int, int]:
    if model_name not in MODEL_SHAPES:
        raise ValueError(f"no shape recorded for {model_name!r}: add (d_model, d_mlp, n_layers, vocab) to "
                         f"gpu_budget.MODEL_SHAPES (known: {', '.join(MODEL_SHAPES)})")
    return MODEL_SHAPES[model_name]


def forward_flops_per_token(model_name: str, n_layers: int | None = None, seq_len: int = 128,
                            unembed: bool = False) -> float:
    """FLOPs of one token through the first ``n_layers`` blocks (all by default), + the unembedding if asked."""
    d, d_mlp, layers, vocab = _model_shape(model_name)
    n_layers = layers if n_layers is None else n_layers
    # 2 FLOPs per weight (attention projections 4d², MLP 2·d·d_mlp) + attention over the context (Kaplan et al. 2020)
    per_block = 2 * (4 * d * d + 2 * d * d_mlp) + 2 * seq_len * d
    return n_layers * per_block + (2 * d * vocab if unembed else 0)


def step_seconds(architecture: str, d_in: int, d_sae: int, k: int, batch: int, gpu: GPU = T4,
                 unrolled_steps: int = 1) -> float:
    """One training step of ``architecture`` at these sizes.

    k-sparse variants (the fast step): the dense encoder matmul 2·B·d·m, the sparse decoder and gradients 8·B·k·d,
    and ~6 passes over the [B, m] fp16 pre-activations (write, top-k, AuxK's top-k).  ReLU / JumpReLU: five dense
    matmuls (encoder, decoder, and their weight/input gradients) and ~12 fp32 passes over [B, m].  The unrolled
    encoder does its encoder matmul 2T − 1 times (forward and back through T proximal steps).
    """
    encoder = 2 * batch * d_in * d_sae
    if architecture in DENSE:
        flops, passes, width = 5 * encoder, 12, 4
    elif architecture in K_SPARSE or architecture == "unrolled":
        flops = (2 * unrolled_steps - 1) * encoder + 8 * batch * k * d_in * unrolled_steps
        passes, width = 6 * unrolled_steps, 2
    else:
        raise ValueError(f"unknown architecture {architecture!r}")
    return flops / gpu.sae_flops + passes * batch * d_sae * width / gpu.bandwidth + gpu.step_overhead_s


def training_seconds(s: book.Settings, architecture: str, d_sae: int, n_steps: int, k: int | None = None,
                     gpu: GPU = T4, unrolled_steps: int = 1, eval_every: int | None = None) -> float:
    """One SAE: its steps, plus the held-out evaluations (2 × 8192 rows each time) when ``eval_every`` is set."""
    d_in = _model_shape(s.model_name)[0]
    k = k or s.k
    total = n_steps * step_seconds(architecture, d_in, d_sae, k, s.batch_size, gpu, unrolled_steps)
    if eval_every:
        total += (n_steps // eval_every + 1) * 2 * 2 * 8192 * d_in * d_sae / gpu.sae_flops * 2  # encode + decode
    return total


def harvest_seconds(s: book.Settings, n_tokens: int, gpu: GPU = T4) -> float:
    """Activations of ``n_tokens`` tokens at the profile's layer (the forward pass stops there)."""
    return n_tokens * forward_flops_per_token(s.model_name, s.layer + 1, s.seq_len) / gpu.model_flops


def spliced_loss_seconds(s: book.Settings, n_saes: int, gpu: GPU = T4) -> float:
    """The clean pass plus one spliced-in pass per SAE over ``s.ce_sequences`` held-out sequences."""
    tokens = s.ce_sequences * s.seq_len
    return (n_saes + 2) * tokens * forward_flops_per_token(s.model_name, unembed=True, seq_len=s.seq_len) / gpu.model_flops


def _book_saes(s: book.Settings, variants: tuple[str, ...], gpu: GPU) -> list[Job]:
    steps = s.n_tokens // s.batch_size  # the book SAEs train one pass (TrainConfig.n_steps default)
    return [Job(f"book SAE {v} ({s.d_sae} latents, {steps} steps)",
                training_seconds(s, v, s.d_sae, steps, gpu=gpu)) for v in variants]


def _study_saes(s: book.Settings, runs: list[tuple[str, int, int, str]], gpu: GPU,
                calibration_trials: int = 4) -> list[Job]:
    """Study SAEs (architecture, k, seed, normalisation); ReLU / JumpReLU at the first seed cost a calibration
    search, counted at its most trials (``pipeline.matched_sae``'s max_trials; the cpu study needed 3)."""
    from absae_lib.pipeline import CALIBRATION

    jobs = []
    for architecture, k, seed, normalization in runs:
        trials = calibration_trials if architecture in CALIBRATION and seed == s.seeds[0] else 1
        steps = s.study_steps_for(architecture)
        seconds = trials * training_seconds(s, architecture, s.study_d_sae, steps, k, gpu,
                                            eval_every=max(1, steps // 16))
        jobs.append(Job(f"study SAE {architecture} k {k} seed {seed} {normalization}"
                        + (f" ({trials} trials)" if trials > 1 else ""), seconds))
    return jobs


def chapter_jobs(s: book.Settings, chapter: str, gpu: GPU = T4) -> list[Job]:
    """What chapter ``chapter`` ("03", "04", ...) computes in a fresh runtime, with the estimated seconds."""
    from absae_lib import study

    variants = ("standard", "jumprelu", "topk", "batchtopk", "abstopk")
    setup = [Job("install, model and dataset download", SETUP_S)]
    harvest = [Job(f"harvest {s.n_tokens + s.n_eval_tokens:,} tokens", harvest_seconds(s, s.n_tokens + s.n_eval_tokens, gpu))]
    if chapter == "03":
        jobs = setup + harvest + _book_saes(s, variants, gpu)
        jobs += _study_saes(s, [(v, s.k, s.seeds[0], s.study_normalization) for v in variants], gpu)
    elif chapter == "04":
        runs = study.jobs(s)
        jobs = setup + harvest + _study_saes(s, runs, gpu)
        for name, fields in study.UNROLLED.items():
            steps = s.study_steps_for("unrolled")
            seconds = training_seconds(s, "unrolled", s.study_d_sae, steps, s.k, gpu,
                                       unrolled_steps=fields["unrolled_steps"], eval_every=max(1, steps // 16))
            jobs.append(Job(f"study SAE {name}", seconds))
        jobs.append(Job(f"spliced-in loss, {len(runs) + len(study.UNROLLED)} SAEs",
                        spliced_loss_seconds(s, len(runs) + len(study.UNROLLED), gpu)))
    elif chapter in ("05", "06", "06b", "07"):
        book_variants = ("topk", "abstopk") if chapter == "05" else variants
        jobs = setup + harvest + _book_saes(s, book_variants, gpu)
        if chapter == "05":  # §5.6: TopK and AbsTopK study SAEs at two seeds; §5.1's Brown rows for word classes
            jobs += _study_saes(s, [(a, s.k, seed, s.study_normalization) for seed in s.seeds[:2]
                                    for a in ("topk", "abstopk")], gpu)
            jobs.append(Job(f"harvest {s.n_eval_tokens:,} Brown tokens", harvest_seconds(s, s.n_eval_tokens, gpu)))
        if chapter == "06":  # §6.5: TopK and AbsTopK study SAEs over the seeds
            jobs += _study_saes(s, [(a, s.k, seed, s.study_normalization) for seed in s.seeds
                                    for a in ("topk", "abstopk")], gpu)
        jobs.append(Job("analysis (scaled from the cpu run)",
                        CPU_ANALYSIS_S[chapter] * GPU_WORK_RATIO[chapter] / gpu.analysis_speedup))
    else:
        raise ValueError(f"no GPU work is counted for chapter {chapter!r}: chapters 03-07 use the model "
                         "(01, 02 and 08 need none; their Colab notes say so)")
    return jobs


CHAPTERS = ("03", "04", "05", "06", "06b", "07")


def chapter_minutes(s: book.Settings, gpu: GPU = T4) -> dict[str, float]:
    """{chapter: estimated minutes in a fresh runtime}."""
    return {c: sum(job.seconds for job in chapter_jobs(s, c, gpu)) / 60 for c in CHAPTERS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="gpu", help="a profile of absae_lib.book (default gpu)")
    parser.add_argument("--detail", action="store_true", help="list every job of every chapter")
    args = parser.parse_args(argv)
    s = book.settings(args.profile)
    print(f"{T4.name}, profile {s.profile}, a fresh runtime per chapter (estimates, not measurements):")
    for chapter in CHAPTERS:
        jobs = chapter_jobs(s, chapter)
        print(f"  chapter {chapter}: {sum(j.seconds for j in jobs) / 60:5.1f} min")
        if args.detail:
            for job in jobs:
                print(f"      {job.seconds / 60:6.2f} min  {job.what}")


if __name__ == "__main__":
    main()
