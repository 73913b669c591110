"""The prediction check (method.md §6, step 5): does the audit predict what DPO teaches?

Three predictions of each concept's shift, all made before training:

- ``delta``: its Δ in the data, the mean over pairs of the chosen − rejected pooled activation
  (the audit's headline statistic);
- ``first_order``: DPO's first step in the tabular limit. A step raises log π(y⁺) and lowers
  log π(y⁻) of each pair, which moves the expected activation of generations by
  π(y⁺)(a(y⁺) − E[a]) − π(y⁻)(a(y⁻) − E[a]): a side moves the model in proportion to how likely
  the model already is to produce it, and only as far as it differs from what the model already
  does. With π(y) read as M0's per-token likelihood exp(mean log p) and E[a] as the concept's
  mean on M0's own generations:

      predicted_c = Σ_i [p⁺_i (a_c(y⁺_i) − m_c) − p⁻_i (a_c(y⁻_i) − m_c)] / Σ_i (p⁺_i + p⁻_i).

  Δ ignores both factors: a concept the chosen side carries but M0 already shows everywhere (a
  refusal M0 always gives) cannot rise, and one only rejected responses M0 never writes carry
  cannot fall.
- ``local_first_order``: the same step read prompt by prompt. DPO moves each prompt's generations
  through the pairs that teach about prompts like it, and relative to what M0 already does *there*
  (not on average): on a prompt where M0 refuses, a refusing chosen response teaches nothing and a
  complying one a lot. For each evaluation prompt x, the pairs whose prompts are its
  ``neighbours`` nearest (cosine of the prompts' mean activation at ℓ, the representation the
  audit's topics come from; exact top-k) give

      predicted_c(x) = Σ_{i ∈ N(x)} [p⁺_i (a_c(y⁺_i) − m_c(x)) − p⁻_i (a_c(y⁻_i) − m_c(x))] / Σ_{i ∈ N(x)} (p⁺_i + p⁻_i),

  with m_c(x) the concept's mean on M0's generations to x, and the prediction is its mean over
  the evaluation prompts. With every pair as a neighbour of every prompt it is ``first_order``
  again. Nothing in it is fitted to measured shifts; the number of neighbours is the one setting
  (bench/RESULTS.md shows how little it matters between 5 and 100).

After training, the measured shift is the mean pooled activation on M1's generations minus that
on M0's, to the same held-out prompts, both read through M0 at ℓ and the same SAE (the reader
stays fixed, so only the text differs). Agreement over concepts is the R² of the least-squares
line measured ≈ a·predicted + b (the squared Pearson correlation), with Spearman's ρ beside it;
each measured shift has a 95% bootstrap interval over prompts.

Topic and response concepts act within one prompt topic, so :func:`scoped_shifts` checks each over
the evaluation prompts of its topic only (an evaluation prompt's topic is the one most common
among its neighbour pairs, :func:`topics_from_neighbours`): measured on those prompts' generations,
predicted locally from their neighbours, and globally from the topic's pairs.
"""
from __future__ import annotations

import base64
import io
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import stats

from headwater.audit.features import PooledFeatures, captured_chunks, pool_codes
from headwater.audit.sae import SparseAutoencoder
from headwater.engine.capture import DEFAULT_MAX_TOKENS_PER_BATCH, pad_token_id_of, response_token_activations
from headwater.engine.tokenization import TokenizationSettings, encode_pairs, encode_response, pad_batch
from headwater.kernels import cosine_topk, prepare_keys
from headwater.training.common import response_logps


@torch.no_grad()
def response_columns(
    model: Any, tokenizer: Any, sae: SparseAutoencoder, layer: int, prompts: Sequence[Any], responses: Sequence[Any],
    read: Callable[[PooledFeatures], np.ndarray], width: int, settings: TokenizationSettings = TokenizationSettings(),
    *, chunk: int = 256, max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
) -> np.ndarray:
    """[n, width] float64: ``read`` applied to the pooled SAE features of each response (to its
    prompt), read through ``model`` at ``layer``, ``chunk`` responses at a time. An empty response
    (a model may stop at once) reads as 0 everywhere."""
    sae = sae.inference_form()
    out = np.zeros((len(responses), width))
    for rows, captured in captured_chunks(model, tokenizer, layer, prompts, responses, settings, chunk=chunk,
                                          max_tokens_per_batch=max_tokens_per_batch):
        out[rows] = read(pool_codes(sae, captured.activations, captured.lengths))
    return out


def concept_activations(
    model: Any, tokenizer: Any, sae: SparseAutoencoder, layer: int, prompts: Sequence[Any],
    responses: Sequence[Any], concepts: Sequence[Sequence[int]], settings: TokenizationSettings = TokenizationSettings(),
    *, pooling: str = "mean", chunk: int = 256, max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
) -> np.ndarray:
    """[n, n_concepts] float64: each response's pooled activation of each concept (the sum over the
    concept's latents). An empty response (a model may stop at once) reads as 0 everywhere."""
    return response_columns(model, tokenizer, sae, layer, prompts, responses,
                            lambda pooled: pooled.concept_columns(concepts, sae.d_sae, pooling).numpy(), len(concepts),
                            settings, chunk=chunk, max_tokens_per_batch=max_tokens_per_batch)


@torch.no_grad()
def pair_token_likelihoods(model: Any, tokenizer: Any, pairs: Sequence[Any], settings: TokenizationSettings,
                           *, batch: int = 32) -> dict[str, np.ndarray]:
    """Per pair, M0's mean log-probability per response token of chosen and rejected.

    Returns ``{"pair_ids": [n], "chosen": [n], "rejected": [n]}`` (pairs that cannot be encoded
    are left out). One forward pass with the LM head per pair, like DPO's reference pass.
    """
    encoded = encode_pairs(tokenizer, pairs, settings)
    chosen, rejected = [], []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    for start in range(0, len(encoded.encoded), batch):
        part = encoded.encoded[start:start + batch]
        padded = pad_batch([c for c, _ in part] + [r for _, r in part], pad)
        padded.input_ids, padded.attention_mask = padded.input_ids.to(device), padded.attention_mask.to(device)
        padded.response_mask = padded.response_mask.to(device)
        values = response_logps(model, padded, average=True).double().cpu().numpy()
        chosen.append(values[:len(part)])
        rejected.append(values[len(part):])
    return {"pair_ids": np.array([pairs[k].pair_id for k in encoded.kept]),
            "chosen": np.concatenate(chosen) if chosen else np.zeros(0),
            "rejected": np.concatenate(rejected) if rejected else np.zeros(0)}


def first_order_shift(chosen: np.ndarray, rejected: np.ndarray, chosen_logp: np.ndarray, rejected_logp: np.ndarray,
                      m0_mean: np.ndarray) -> np.ndarray:
    """[C] the first-order prediction of the module docstring.

    Args:
        chosen, rejected: [n, C] pooled concept activations of each pair's sides.
        chosen_logp, rejected_logp: [n] M0's mean log-probability per token of each side.
        m0_mean: [C] the concepts' mean activation on M0's own generations.
    """
    p_chosen, p_rejected = np.exp(chosen_logp), np.exp(rejected_logp)
    moved = p_chosen[:, None] * (chosen - m0_mean) - p_rejected[:, None] * (rejected - m0_mean)
    return moved.sum(axis=0) / max(float((p_chosen + p_rejected).sum()), 1e-300)


@torch.no_grad()
def prompt_representations(
    model: Any, tokenizer: Any, prompts: Sequence[Any], layer: int, settings: TokenizationSettings = TokenizationSettings(),
    *, chunk: int = 256, max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
) -> np.ndarray:
    """[n, d_model] float32: each prompt's mean activation at ``layer``, as the feature store keeps
    it for the audited pairs (the prompt tokens of an encoded response; a causal model's prompt
    activations do not depend on the response, so a one-word placeholder is read)."""
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), chunk):
        encoded = [encode_response(tokenizer, prompt, "ok", settings) for prompt in prompts[start:start + chunk]]
        captured = response_token_activations(model, encoded, layer, pad_token_id=pad_token_id_of(tokenizer),
                                              max_tokens_per_batch=max_tokens_per_batch)
        out.append(captured.prompt_means.float())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def local_first_order_shift(chosen: np.ndarray, rejected: np.ndarray, chosen_logp: np.ndarray, rejected_logp: np.ndarray,
                            pair_prompts: np.ndarray, eval_prompts: np.ndarray, eval_m0_means: np.ndarray,
                            *, neighbours: int = 20, chunk: int = 256) -> np.ndarray:
    """[C] the prompt-by-prompt first-order prediction of the module docstring.

    Args:
        chosen, rejected: [n, C] pooled concept activations of each pair's sides.
        chosen_logp, rejected_logp: [n] M0's mean log-probability per token of each side.
        pair_prompts: [n, d] the pairs' prompt representations (:func:`prompt_representations`,
            or the feature store's ``prompt`` rows).
        eval_prompts: [P, d] the evaluation prompts' representations.
        eval_m0_means: [P, C] each concept's mean on M0's generations to each evaluation prompt.
        neighbours: pairs per evaluation prompt (at most n).
    """
    n, n_concepts = chosen.shape
    if not (rejected.shape == chosen.shape and chosen_logp.shape == rejected_logp.shape == (n,)
            and pair_prompts.shape[0] == n and eval_prompts.shape[0] == eval_m0_means.shape[0]
            and eval_m0_means.shape[1] == n_concepts and eval_prompts.shape[1] == pair_prompts.shape[1]):
        raise ValueError(f"shapes do not match: chosen {chosen.shape}, rejected {rejected.shape}, log-likelihoods "
                         f"{chosen_logp.shape}/{rejected_logp.shape}, pair prompts {pair_prompts.shape}, evaluation "
                         f"prompts {eval_prompts.shape}, M0 means {eval_m0_means.shape}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise ValueError(f"neighbours must be a positive int, got {neighbours!r}")
    if n == 0 or eval_prompts.shape[0] == 0:
        raise ValueError("the local prediction needs at least one pair and one evaluation prompt")
    near = nearest_pairs(eval_prompts, pair_prompts, neighbours, chunk=chunk)
    return shift_from_neighbours(chosen, rejected, chosen_logp, rejected_logp, near, eval_m0_means, chunk=chunk)


def nearest_pairs(eval_prompts: np.ndarray, pair_prompts: np.ndarray, neighbours: int, *, chunk: int = 256
                  ) -> np.ndarray:
    """[P, min(neighbours, n)] int64: each evaluation prompt's nearest pair rows by cosine of the
    prompt representations, nearest first (ties: lower row first), from the exact top-k kernel. The
    first k columns are the answer for any smaller count k, so one search serves several counts."""
    keys = prepare_keys(torch.from_numpy(np.ascontiguousarray(pair_prompts, dtype=np.float32)))  # searched per chunk
    k = min(neighbours, pair_prompts.shape[0])
    out = [cosine_topk(torch.from_numpy(np.ascontiguousarray(eval_prompts[start:start + chunk], dtype=np.float32)),
                       keys, k)[1].numpy() for start in range(0, eval_prompts.shape[0], chunk)]
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def shift_from_neighbours(chosen: np.ndarray, rejected: np.ndarray, chosen_logp: np.ndarray,
                          rejected_logp: np.ndarray, near: np.ndarray, eval_m0_means: np.ndarray, *,
                          chunk: int = 256) -> np.ndarray:
    """[C] the local first-order prediction given each evaluation prompt's neighbour rows ``near``
    [P, k] (:func:`nearest_pairs`); the other arguments as in :func:`local_first_order_shift`."""
    p_chosen, p_rejected = np.exp(chosen_logp), np.exp(rejected_logp)
    total = np.zeros(chosen.shape[1])
    for start in range(0, near.shape[0], chunk):
        rows = near[start:start + chunk]  # [p, k] pair rows, nearest first
        m = eval_m0_means[start:start + chunk, None, :]  # [p, 1, C]
        wc, wr = p_chosen[rows], p_rejected[rows]  # [p, k]
        moved = wc[..., None] * (chosen[rows] - m) - wr[..., None] * (rejected[rows] - m)  # [p, k, C]
        total += (moved.sum(axis=1) / np.maximum(wc.sum(axis=1) + wr.sum(axis=1), 1e-300)[:, None]).sum(axis=0)
    return total / near.shape[0]


def per_prompt_means(acts: np.ndarray, owner: Sequence[int], prompts: Sequence[int]) -> np.ndarray:
    """[len(prompts), C]: the mean of ``acts`` [n, C] over the responses to each prompt (``owner``
    [n] names each response's prompt); a prompt without responses is an error."""
    owner = np.asarray(owner)
    means = np.zeros((len(prompts), acts.shape[1]))
    for j, p in enumerate(prompts):
        mine = owner == p
        if not mine.any():
            raise ValueError(f"prompt {p} has responses from one model only")
        means[j] = acts[mine].mean(axis=0)
    return means


def measured_shifts(before: np.ndarray, after: np.ndarray, before_prompt: Sequence[int], after_prompt: Sequence[int],
                    *, n_boot: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """Per concept, mean over prompts of (mean on ``after`` − mean on ``before``) with a 95%
    bootstrap interval that resamples prompts.

    Args:
        before, after: [n_before, C] and [n_after, C] activations of M0's and M1's responses.
        before_prompt, after_prompt: the prompt index of each response (several samples per
            prompt share one).
    """
    prompts = np.unique(np.concatenate([np.asarray(before_prompt), np.asarray(after_prompt)]))
    diff = per_prompt_means(after, after_prompt, prompts) - per_prompt_means(before, before_prompt, prompts)  # [P, C]
    rng = np.random.default_rng(seed)
    boots = np.stack([diff[rng.integers(0, prompts.size, prompts.size)].mean(axis=0) for _ in range(n_boot)])
    low, high = np.quantile(boots, [0.025, 0.975], axis=0)
    return {"shift": diff.mean(axis=0), "low": low, "high": high}


def topics_from_neighbours(near: np.ndarray, pair_topics: np.ndarray) -> np.ndarray:
    """[P] int: each evaluation prompt's prompt topic, the one most common among its neighbour pairs
    ``near`` [P, k] (rows of ``pair_topics``); a tie goes to the topic of the nearer pair."""
    out = np.zeros(near.shape[0], dtype=np.int64)
    for i, row in enumerate(pair_topics[near]):
        counts = np.bincount(row)
        tied = counts == counts.max()
        out[i] = next(int(t) for t in row if tied[t])
    return out


def scoped_shifts(chosen: np.ndarray, rejected: np.ndarray, chosen_logp: np.ndarray, rejected_logp: np.ndarray,
                  pair_topics: np.ndarray, near: np.ndarray, eval_topics: np.ndarray, m0_acts: np.ndarray,
                  m1_acts: np.ndarray, owners: Sequence[int], concept_topics: Sequence[int], *, seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """Predicted and measured shifts of concepts that act within one prompt topic (topic and
    response concepts), each over the evaluation prompts of its topic only.

    Args:
        chosen, rejected: [n, C] the concepts' activations on the pairs' sides.
        chosen_logp, rejected_logp: [n] M0's mean log-probability per token of each side.
        pair_topics: [n] each pair's prompt topic.
        near: [P, k] each evaluation prompt's neighbour pair rows (:func:`nearest_pairs`).
        eval_topics: [P] each evaluation prompt's topic (:func:`topics_from_neighbours`).
        m0_acts, m1_acts: [R, C] the concepts on M0's and M1's generations; ``owners`` [R] the
            evaluation prompt of each (the same for both models).
        concept_topics: [C] each concept's topic.

    Returns ``shift``, ``low``, ``high`` (measured, with its bootstrap interval over the topic's
    prompts), ``first_order`` (over the topic's pairs, centred on M0's generations to the topic's
    prompts), ``local_first_order`` (over the topic's prompts) and ``n_prompts``, each [C]; NaN
    (and 0 prompts) for a concept whose topic no evaluation prompt falls in.
    """
    c = chosen.shape[1]
    owners = np.asarray(owners)
    concept_topics = np.asarray(concept_topics, dtype=np.int64)
    out = {key: np.full(c, np.nan) for key in ("shift", "low", "high", "first_order", "local_first_order")}
    out["n_prompts"] = np.zeros(c, dtype=np.int64)
    for topic in np.unique(concept_topics):
        cols = np.flatnonzero(concept_topics == topic)
        prompts = np.flatnonzero(eval_topics == topic)
        if prompts.size == 0:
            continue
        responses = np.isin(owners, prompts)
        measured = measured_shifts(m0_acts[responses][:, cols], m1_acts[responses][:, cols], owners[responses],
                                   owners[responses], seed=seed)
        for key in ("shift", "low", "high"):
            out[key][cols] = measured[key]
        by_prompt = per_prompt_means(m0_acts[:, cols], owners, prompts)
        out["local_first_order"][cols] = shift_from_neighbours(chosen[:, cols], rejected[:, cols], chosen_logp,
                                                               rejected_logp, near[prompts], by_prompt)
        mine = pair_topics == topic
        if mine.any():
            out["first_order"][cols] = first_order_shift(chosen[mine][:, cols], rejected[mine][:, cols],
                                                         chosen_logp[mine], rejected_logp[mine],
                                                         m0_acts[responses][:, cols].mean(axis=0))
        out["n_prompts"][cols] = prompts.size
    return out


def agreement(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """R² of the least-squares line measured ≈ slope·predicted + intercept, Pearson r, Spearman ρ."""
    x, y = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"r2": math.nan, "pearson": math.nan, "spearman": math.nan, "slope": math.nan,
                "intercept": math.nan, "n": int(x.size)}
    fit = stats.linregress(x, y)
    return {"r2": float(fit.rvalue ** 2), "pearson": float(fit.rvalue), "spearman": float(stats.spearmanr(x, y)[0]),
            "slope": float(fit.slope), "intercept": float(fit.intercept), "n": int(x.size)}


def agreement_figure(names: Sequence[str], predicted: Sequence[float], shifts: dict[str, np.ndarray],
                     summary: dict[str, float], xlabel: str = "predicted shift",
                     extra: tuple[Sequence[str], Sequence[float], dict[str, np.ndarray]] | None = None) -> bytes:
    """A PNG: measured shift (with its interval) against predicted shift, one point per concept;
    ``extra`` (names, predicted, shifts) adds concepts checked within their prompt topic, drawn
    apart and left out of the fitted line and the title's R²."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(predicted)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    y = shifts["shift"]
    ax.errorbar(x, y, yerr=[y - shifts["low"], shifts["high"] - y], fmt="o", ms=4, alpha=0.8, capsize=2,
                label="concepts over all prompts")
    if extra is not None and len(extra[0]):
        ex, ey = np.asarray(extra[1]), extra[2]["shift"]
        ax.errorbar(ex, ey, yerr=[ey - extra[2]["low"], extra[2]["high"] - ey], fmt="^", ms=4, alpha=0.6, capsize=2,
                    color="tab:orange", label="topic and response concepts (their topic's prompts)")
        for name, xi, yi in zip(extra[0], ex, ey):
            ax.annotate(name, (xi, yi), fontsize=5, alpha=0.6)
        ax.legend(fontsize=6)
    if math.isfinite(summary["slope"]):
        grid = np.linspace(x.min(), x.max(), 2)
        ax.plot(grid, summary["slope"] * grid + summary["intercept"], "k--", lw=1)
    for name, xi, yi in zip(names, x, y):
        ax.annotate(name, (xi, yi), fontsize=6, alpha=0.7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("measured shift (M1 − M0 generations)")
    ax.set_title(f"R² = {summary['r2']:.2f} over {summary['n']} concepts (ρ = {summary['spearman']:.2f})")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


__all__ = ["agreement", "agreement_figure", "concept_activations", "first_order_shift", "local_first_order_shift",
           "measured_shifts", "nearest_pairs", "pair_token_likelihoods", "per_prompt_means", "png_data_uri",
           "prompt_representations", "response_columns", "scoped_shifts", "shift_from_neighbours",
           "topics_from_neighbours"]
