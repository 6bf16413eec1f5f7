"""How long must each study SAE train?  The held-out plateau test by architecture and run length.

    python benchmarks/plateau.py --profile cpu --steps 732 1464 [--arch topk abstopk ...] [--out plateau.json]
    python benchmarks/plateau.py --time-steps 30 --d-sae 576 1152 --batch 1024 4096 --out steps.json  # ms/step
    python benchmarks/plateau.py --budget steps.json --steps 732 1464   # the study's training minutes from those

Each (architecture, steps) is chapter 4's study SAE (``pipeline.study_config``: ``s.study_d_sae`` latents, the
study's normalisation, held-out NMSE 16 times per run) with ``study_steps`` set to ``steps``, trained once and cached
under the key a profile with that ``study_steps`` would use, so a later run of the book reads it.  ReLU and JumpReLU
are trained at one fixed knob each (``--relu-coefficient``, ``--jumprelu-init-l0``: by default the values chapter 4's
search found at 732 steps) rather than searched again; their held-out L0 says whether that value still matches k at
the new length.  Per run it prints and records chapter 3's plateau test (the last 20% of steps improve held-out
per-token NMSE by < 2%), the final held-out per-token NMSE and L0, the train/held-out gap and the seconds per step
(0 when the SAE came from the cache).  ``--time-steps N`` instead times N steps of each architecture (the same
recipe on the profile's training rows, no held-out evaluation, nothing cached) at every ``--d-sae`` × ``--batch``,
the cost model for choosing a study that fits the run's budget, and ``--budget`` adds up what every SAE of
``study.jobs`` and the unrolled encoders would cost at a given length.  ``--lr``, ``--batch``,
``--jumprelu-coefficient`` and ``--jumprelu-bandwidth`` change the recipe (and so the cache key).  Run it alone: two jobs on two cores time each
other.  ``benchmarks/plateau.cpu.json`` holds the rows and step times RESULTS.md §6 reports.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

from absae_lib import book, convergence, pipeline, study
from absae_lib.atomic import write_json
from absae_lib.train import train_sae

KNOB_AT_732 = {"standard": 1.8455, "jumprelu": 59.6}  # chapter 4's matched-L0 search, cpu, k = 32, 732 steps


def run(s: book.Settings, architecture: str, steps: int, knob: float | None, batch_size: int | None = None,
        lr: float | None = None, jumprelu_coefficient: float | None = None,
        jumprelu_bandwidth: float | None = None) -> dict:
    """Train (or read) one study SAE of ``steps`` steps (of ``batch_size`` rows at learning rate ``lr``, default the
    book's); its plateau, final held-out scores and cost."""
    at = replace(s, study_steps=steps, study_step_factors=())  # exactly `steps`, whatever the architecture
    overrides: dict = {} if batch_size is None else {"batch_size": batch_size}
    if lr is not None:
        overrides["lr"] = lr
    if architecture == "standard":
        overrides["sparsity_coefficient"] = knob
    elif architecture == "jumprelu":
        overrides["init_l0"] = knob
        if jumprelu_coefficient is not None:
            overrides["sparsity_coefficient"] = jumprelu_coefficient
        if jumprelu_bandwidth is not None:  # 0.001 gives the kernel of the runs before it was scaled with √d_in
            overrides["jumprelu_bandwidth"] = jumprelu_bandwidth
    config = pipeline.study_config(at, architecture, **overrides)
    cached = (pipeline.sae_folder(at, config) / "history.json").exists()
    start = time.perf_counter()
    _, history = pipeline.trained(at, config)
    seconds = 0.0 if cached else time.perf_counter() - start
    found = convergence.plateau(history, key="heldout_nmse_per_token")
    last = [row for row in history if "heldout_nmse_per_token" in row][-1]
    return {"architecture": architecture, "steps": steps, "batch_size": config.batch_size, "lr": config.lr,
            "sparsity_coefficient": config.sparsity_coefficient,
            "passes": steps * config.batch_size / s.n_tokens, "knob": knob, "plateau_reached": found.reached,
            "improvement_last_20pct": found.improvement, "heldout_nmse_per_token": last["heldout_nmse_per_token"],
            "heldout_l0": last["heldout_l0"],
            "train_heldout_gap": convergence.train_heldout_gap(history, key="nmse_per_token"),
            "seconds": seconds, "seconds_per_step": seconds / steps, "from_cache": cached}


def step_time(s: book.Settings, architecture: str, d_sae: int, batch_size: int, n_steps: int) -> float:
    """Seconds per training step of one study recipe: a run of 5 + n_steps steps minus one of 5 (set-up, first
    steps), after a discarded run of 5 (the first touch of the memory-mapped rows)."""
    overrides = {}
    if architecture.startswith("unrolled"):
        overrides = {"sae_kwargs": dict(study.UNROLLED[architecture], unrolled_prox="abstopk")}
        architecture = "unrolled"
    rows = pipeline.train_activations(s)
    times = []
    for steps in (5, 5, 5 + n_steps):
        config = pipeline.study_config(s, architecture, d_sae=d_sae, batch_size=batch_size, n_steps=steps,
                                       eval_every=None, **overrides)
        start = time.perf_counter()
        train_sae(rows, config)
        times.append(time.perf_counter() - start)
    return (times[2] - times[1]) / n_steps


def budget(s: book.Settings, step_ms: dict[str, float], steps: int, search_trials: int) -> dict[str, float]:
    """Minutes of training in chapter 4's study (``study.jobs`` and the unrolled encoders) at ``steps`` steps each
    (times the profile's ``study_step_factors`` for the architectures that train longer),
    from measured ms per step {architecture: ms}; a ReLU/JumpReLU search costs ``search_trials`` runs (its other
    seeds one run each: they reuse the value found)."""
    at = replace(s, study_steps=steps)  # the profile's longer runs (study_step_factors) stay longer
    minutes = {"k-sparse": 0.0, "ReLU/JumpReLU": 0.0, "unrolled": 0.0}
    for architecture, k, seed, _ in study.jobs(s):
        runs = search_trials if architecture in pipeline.CALIBRATION and seed == s.seeds[0] else 1
        group = "ReLU/JumpReLU" if architecture in pipeline.CALIBRATION else "k-sparse"
        minutes[group] += runs * at.study_steps_for(architecture) * step_ms[architecture] / 60_000
    for name in study.UNROLLED:
        minutes["unrolled"] += at.study_steps_for("unrolled") * step_ms[name] / 60_000
    return minutes | {"total": sum(minutes.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, nargs="+", default=[732, 1464])
    parser.add_argument("--arch", nargs="+", default=["topk", "abstopk", "batchtopk", "jumprelu", "standard"])
    parser.add_argument("--relu-coefficient", type=float, default=KNOB_AT_732["standard"])
    parser.add_argument("--jumprelu-init-l0", type=float, default=KNOB_AT_732["jumprelu"])
    parser.add_argument("--out", default=None, help="JSON file for the rows (written after every run)")
    parser.add_argument("--time-steps", type=int, default=0, help="only time this many steps per recipe")
    parser.add_argument("--d-sae", type=int, nargs="+", default=None, help="with --time-steps (default: the study's)")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="the batch size (default: the book's); several with --time-steps")
    parser.add_argument("--jumprelu-coefficient", type=float, default=None,
                        help="JumpReLU's L0 penalty weight (default: the book's, pipeline.DEFAULT_SPARSITY)")
    parser.add_argument("--lr", type=float, default=None, help="the learning rate (default: the book's)")
    parser.add_argument("--jumprelu-bandwidth", type=float, default=None,
                        help="JumpReLU's straight-through kernel width (default: the study's, 0.001·√d_in; 0.001 "
                             "reproduces the rows measured before that fix)")
    parser.add_argument("--budget", default=None, metavar="STEP_TIMES_JSON",
                        help="only print the study's training minutes at each --steps, from a --time-steps file")
    parser.add_argument("--search-trials", type=int, default=2, help="with --budget: runs per ReLU/JumpReLU search")
    args = parser.parse_args()
    s = book.settings(args.profile)
    if args.budget:
        d_sae, batch_size = (args.d_sae or [s.study_d_sae])[0], (args.batch or [s.batch_size])[0]
        measured = json.loads(open(args.budget).read())["step_times"]
        step_ms = {r["architecture"]: r["ms"] for r in measured if (r["d_sae"], r["batch_size"]) == (d_sae, batch_size)}
        for steps in args.steps:
            minutes = budget(s, step_ms, steps, args.search_trials)
            print(f"d_sae {d_sae}, batch {batch_size}, {steps} steps ({steps * batch_size / s.n_tokens:.1f} passes): "
                  + ", ".join(f"{group} {m:.0f}" for group, m in minutes.items()) + " minutes")
        return
    if args.time_steps:
        rows = []
        for d_sae in args.d_sae or [s.study_d_sae]:
            for batch_size in args.batch or [s.batch_size]:
                for architecture in args.arch:
                    ms = 1000 * step_time(s, architecture, d_sae, batch_size, args.time_steps)
                    rows.append({"architecture": architecture, "d_sae": d_sae, "batch_size": batch_size, "ms": ms})
                    print(f"{architecture:>20} d_sae {d_sae:5d} batch {batch_size:5d}: {ms:6.0f} ms/step", flush=True)
                    if args.out:
                        write_json(args.out, {"profile": args.profile, "step_times": rows})
        return
    knobs = {"standard": args.relu_coefficient, "jumprelu": args.jumprelu_init_l0}
    rows = []
    print(f"{args.profile}: {s.study_d_sae} latents, k {s.k}, batch {s.batch_size}, {s.study_normalization} "
          f"normalisation; load average {os.getloadavg()[0]:.2f}", flush=True)
    for steps in args.steps:
        for architecture in args.arch:
            row = run(s, architecture, steps, knobs.get(architecture), (args.batch or [None])[0], args.lr,
                      args.jumprelu_coefficient, args.jumprelu_bandwidth)
            rows.append(row)
            print(f"{architecture:>9} {steps:5d} steps of {row['batch_size']}, lr {row['lr']:g}: last 20% improved "
                  f"{row['improvement_last_20pct']:+.2%} "
                  f"({'plateau' if row['plateau_reached'] else 'still improving'}), per-token NMSE "
                  f"{row['heldout_nmse_per_token']:.4f}, L0 {row['heldout_l0']:.1f}, gap "
                  f"{row['train_heldout_gap']:+.2%}, {row['seconds_per_step'] * 1000:.0f} ms/step", flush=True)
            if args.out:
                write_json(args.out, {"profile": args.profile, "rows": rows})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
