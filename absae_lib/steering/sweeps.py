"""Sweeping α: every steering method at every push size, judged and costed (``sweep_axis`` -> ``AxisSweep``).

α > 0 pushes towards the positive pole, α < 0 towards the negative one, so a direction is judged only by the α of its
own sign: "towards positive" is the best shift a positive push reaches, "towards negative" the best a negative push
reaches. A push *moves* the judge when the 95% bootstrap interval of its mean shift over the judge's prompts excludes
0; it moves the right way when that interval lies on α's side, the wrong way when it lies on the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from absae_lib.intervals import mean_interval
from absae_lib.steering.hooks import HookFn
from absae_lib.steering.judges import CachedPrefix, MultipleChoice, logprob_margin

@dataclass(frozen=True)
class Push:
    """The best push of one sign within a perplexity budget, and whether it moved the judge that way."""

    shift: float  # mean judged shift (nats); NaN when no α of this sign is within the budget
    alpha: float | None  # the α that reached it
    interval: tuple[float, float]  # 95% bootstrap interval of that mean over the judge's prompts
    moved: str  # "right way", "wrong way" or "no move" (over every α of this sign within the budget)


@dataclass
class AxisSweep:
    """Scores of steering hooks over an α grid (α = 0 is the unsteered model; NaN where a cost was not measured)."""

    alphas: list[float]
    shift: dict[str, list[float]]  # judged shift of the word-list margin (nats), per method and α: mean over prompts
    prompt_shift: dict[str, list[list[float]]]  # the same per judge prompt: [α][prompt]
    perplexity: dict[str, list[float]]  # on the held-out texts
    accuracy: dict[str, list[float]]  # multiple-choice accuracy (empty without questions)
    push_norm: dict[str, list[float]]  # mean ‖Δx‖ each hook adds at the judge's tokens (residual units)
    clean_margin: float  # the unsteered margin, mean over the judge's prompts
    base_perplexity: float
    base_accuracy: float | None

    def _admitted(self, method: str, sign: int, budget: float | None) -> list[int]:
        """Indices of the α of this sign whose measured perplexity is within the budget (all of them for None)."""
        return [i for i, a in enumerate(self.alphas) if a * sign > 0 and (
            budget is None or self.perplexity[method][i] <= budget * self.base_perplexity)]  # NaN (unmeasured) fails

    def best_push(self, method: str, sign: int, budget: float | None = None) -> Push:
        """Among the α of ``sign`` (±1) within ``budget`` × the unsteered perplexity (None: any), the largest shift
        in that direction, its interval, and whether any of those pushes moved the judge the right or wrong way."""
        if sign not in (1, -1):
            raise ValueError(f"sign must be 1 or -1, got {sign!r}")
        if budget is not None and budget < 1:
            raise ValueError(f"budget is a multiple of the unsteered perplexity and must be ≥ 1, got {budget}")
        admitted = self._admitted(method, sign, budget)
        if not admitted:
            return Push(math.nan, None, (math.nan, math.nan), "no move")
        intervals = {i: mean_interval(self.prompt_shift[method][i]) for i in admitted}
        right = [i for i in admitted if min(v * sign for v in intervals[i]) > 0]
        wrong = [i for i in admitted if max(v * sign for v in intervals[i]) < 0]
        best = max(admitted, key=lambda i: sign * self.shift[method][i])
        moved = "right way" if right else "wrong way" if wrong else "no move"
        return Push(self.shift[method][best], self.alphas[best], intervals[best], moved)

    def within_budget(self, method: str, budget: float) -> dict[str, float | None]:
        """The record of both directions: best shift towards each pole from α of that sign within the budget."""
        up, down = self.best_push(method, 1, budget), self.best_push(method, -1, budget)
        return {"towards positive": up.shift, "alpha positive": up.alpha, "interval positive": list(up.interval),
                "moved positive": up.moved, "towards negative": down.shift, "alpha negative": down.alpha,
                "interval negative": list(down.interval), "moved negative": down.moved}

    def moves_both_ways(self, method: str, budget: float | None = None) -> bool:
        """A positive push raised the judge and a negative push lowered it (intervals excluding 0), within budget."""
        return (self.best_push(method, 1, budget).moved == "right way"
                and self.best_push(method, -1, budget).moved == "right way")


def sweep_axis(
    hooks: Mapping[str, Callable[[float], HookFn]], alphas: Sequence[float], judge: CachedPrefix, tokenizer,
    positive_words: Sequence[str], negative_words: Sequence[str], texts: CachedPrefix,
    choices: MultipleChoice | None = None, choice_prefix: CachedPrefix | None = None,
    cost_alphas: Mapping[str, Sequence[float]] | None = None, progress: bool = False,
) -> AxisSweep:
    """Every method at every α: the judged shift (per prompt), the push's actual size, and the costs.

    Args:
        hooks: {method: α -> hook}, α > 0 towards the positive pole (e.g. ``lambda a: axis_hook(sae, poles, a, n)``).
        alphas: the grid; must contain 0 (the unsteered reference).
        judge: the judge's prompts; the shift is the change of ``logprob_margin`` (positive − negative words).
        texts: held-out texts for perplexity.
        choices, choice_prefix: questions and their ``CachedPrefix`` (both or neither) for the accuracy cost.
        cost_alphas: {method: the α at which to measure the costs}; default every α (the costs are the slow part).
    """
    alphas = [float(a) for a in alphas]
    if 0.0 not in alphas:
        raise ValueError(f"alphas must contain 0 (the unsteered reference), got {alphas}")
    if (choices is None) != (choice_prefix is None):
        raise ValueError("give both choices and choice_prefix, or neither")
    if choices is not None and len(choice_prefix) != len(choices):
        raise ValueError(f"choice_prefix has {len(choice_prefix)} texts for {len(choices)} questions")

    def margin(hook=None) -> Tensor:
        return logprob_margin(judge.next_token_logprobs(hook), tokenizer, positive_words, negative_words)

    clean = margin()
    base_ppl = texts.perplexity()
    base_acc = choices.accuracy(choice_prefix.next_token_logprobs()) if choices is not None else None
    shift, per_prompt, ppl, acc, norm = {}, {}, {}, {}, {}
    for method in tqdm(hooks, desc="sweep", disable=not progress):
        measured = set(alphas if cost_alphas is None or method not in cost_alphas else cost_alphas[method]) | {0.0}
        shift[method], per_prompt[method], ppl[method], acc[method], norm[method] = [], [], [], [], []
        for a in alphas:
            hook = hooks[method](a) if a != 0 else None
            delta = torch.zeros_like(clean) if hook is None else margin(hook) - clean  # [n_prompts]
            per_prompt[method].append(delta.tolist())
            shift[method].append(delta.mean().item())
            norm[method].append(0.0 if hook is None else judge.push_norm(hook))
            cost = a in measured
            ppl[method].append(base_ppl if hook is None else texts.perplexity(hook) if cost else float("nan"))
            if choices is not None:
                acc[method].append(base_acc if hook is None else choices.accuracy(choice_prefix.next_token_logprobs(hook))
                                   if cost else float("nan"))
    if choices is None:
        acc = {}
    return AxisSweep(alphas, shift, per_prompt, ppl, acc, norm, clean.mean().item(), base_ppl, base_acc)
