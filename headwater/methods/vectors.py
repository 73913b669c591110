"""The vectors of method.md §2, all read on M0 (the model before preference training).

- datapoint vector  v_d = ā(p, r⁺) − ā(p, r⁻)                       (:func:`datapoint_vectors`)
- behaviour change  v_b = ā(p, r1) − ā(p, r0), r0 from M0, r1 from M1  (:func:`behavior_change_vectors`)
- probing vector    mean(ā exhibiting) − mean(ā non-exhibiting), over responses paired within
                    the same prompt                                     (:func:`probing_vector`)
- vector bank       one vector per scenario; a pair's score is its best cosine  (:class:`VectorBank`)
- the paper's scenario filter over M0/M1 × with/without the trigger     (:func:`four_condition_filter`)

ā is the mean residual stream at block ℓ over response tokens (``headwater.engine.capture``).
Everything here is plain torch: the reference every faster path is tested against.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

from headwater.data import PreferencePair, Text
from headwater.engine import atomic
from headwater.engine.capture import pair_activations, response_activations
from headwater.engine.tokenization import TokenizationSettings


@dataclass
class DatapointVectors:
    """Datapoint vectors of a preference dataset.

    Attributes:
        pair_ids: ids of the encoded pairs, aligned with ``vectors``.
        vectors: [N, d] float32, v_d = ā(p, r⁺) − ā(p, r⁻) on M0.
        skipped: (pair id, reason) of pairs that could not be encoded.
        n_truncated: encoded pairs that were truncated to the maximum length.
    """

    pair_ids: list[str]
    vectors: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_truncated: int = 0


def datapoint_vectors(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    *,
    layer: int,
    settings: TokenizationSettings = TokenizationSettings(),
    max_tokens_per_batch: int = 16384,
    progress: Any = None,
) -> DatapointVectors:
    """v_d for every pair (M0 = ``model``, block ``layer``); unencodable pairs are recorded."""
    acts = pair_activations(
        model, tokenizer, pairs, layer, settings, max_tokens_per_batch=max_tokens_per_batch, progress=progress
    )
    return DatapointVectors(
        pair_ids=[pairs[i].pair_id for i in acts.kept],
        vectors=acts.differences,
        skipped=[(pairs[i].pair_id, reason) for i, reason in acts.skipped],
        n_truncated=acts.n_truncated,
    )


def behavior_change_vectors(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Text],
    m0_responses: Sequence[Text],
    m1_responses: Sequence[Text],
    *,
    layer: int,
    settings: TokenizationSettings = TokenizationSettings(),
) -> torch.Tensor:
    """[B, d] float32 v_b = ā(p, r1) − ā(p, r0) on M0, one per test prompt."""
    if not len(prompts) == len(m0_responses) == len(m1_responses):
        raise ValueError(
            f"prompts, m0_responses and m1_responses must align: {len(prompts)}, "
            f"{len(m0_responses)}, {len(m1_responses)}"
        )
    both = response_activations(
        model, tokenizer, list(prompts) * 2, list(m1_responses) + list(m0_responses), layer, settings
    )  # [2B, d]: M1 responses first, then M0 responses
    return both[: len(prompts)] - both[len(prompts) :]


def pair_by_prompt(prompt_keys: Sequence[Hashable], labels: Sequence[bool]) -> list[tuple[int, int]]:
    """(exhibiting, non-exhibiting) index pairs within each prompt.

    Every exhibiting response is paired with one non-exhibiting response to the same prompt,
    cycling through the non-exhibiting ones in order; prompts lacking either kind add nothing.
    """
    positives: dict[Hashable, list[int]] = defaultdict(list)
    negatives: dict[Hashable, list[int]] = defaultdict(list)
    for i, (key, label) in enumerate(zip(prompt_keys, labels)):
        (positives if label else negatives)[key].append(i)
    matched = []
    for key, pos in positives.items():
        neg = negatives.get(key, [])
        matched.extend((p, neg[j % len(neg)]) for j, p in enumerate(pos) if neg)
    return matched


@dataclass
class ProbingVector:
    """A difference-of-means probe and where it came from.

    Attributes:
        vector: [d] float32, mean(ā exhibiting) − mean(ā non-exhibiting) over matched responses.
        n_pairs: number of (exhibiting, non-exhibiting) response pairs it averages.
        n_prompts: number of prompts that contributed at least one pair.
    """

    vector: torch.Tensor
    n_pairs: int
    n_prompts: int


def probing_vector(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Text],
    responses: Sequence[Text],
    labels: Sequence[bool],
    *,
    layer: int,
    settings: TokenizationSettings = TokenizationSettings(),
) -> ProbingVector:
    """The paper's probing vector from labelled responses (any mix of M0 and M1 samples).

    Args:
        prompts, responses, labels: aligned; ``labels[i]`` says whether ``responses[i]`` exhibits
            the behaviour (from a judge).

    Raises:
        ValueError: when no prompt has both an exhibiting and a non-exhibiting response.
    """
    if not len(prompts) == len(responses) == len(labels):
        raise ValueError(f"prompts, responses, labels must align: {len(prompts)}, {len(responses)}, {len(labels)}")
    keys = [prompt_key(p) for p in prompts]
    matched = pair_by_prompt(keys, labels)
    if not matched:
        raise ValueError(
            f"no prompt has both an exhibiting and a non-exhibiting response "
            f"({sum(map(bool, labels))} of {len(labels)} responses exhibit the behaviour)"
        )
    used = sorted({i for pair in matched for i in pair})
    acts = response_activations(model, tokenizer, [prompts[i] for i in used], [responses[i] for i in used], layer, settings)
    row = {i: r for r, i in enumerate(used)}
    vector = matched_difference(acts, [(row[p], row[n]) for p, n in matched])
    n_prompts = len({keys[p] for p, _ in matched})
    return ProbingVector(vector, len(matched), n_prompts)


def matched_difference(acts: torch.Tensor, matched: Sequence[tuple[int, int]]) -> torch.Tensor:
    """[d] mean(acts[exhibiting]) − mean(acts[non-exhibiting]) over ``(exhibiting, non-exhibiting)``
    row pairs of ``acts`` [N, d]; a row used by several pairs counts once per pair."""
    if not matched:
        raise ValueError("no (exhibiting, non-exhibiting) pair to average")
    pos = acts[[p for p, _ in matched]]
    neg = acts[[n for _, n in matched]]
    return pos.mean(0) - neg.mean(0)


# The paper's scenario filter: (model, prompt variant) conditions, the one that must show the
# behaviour first. Keys are "<model>_<variant>".
FILTER_CONDITIONS: tuple[str, ...] = ("m1_trigger", "m0_trigger", "m1_no_trigger", "m0_no_trigger")
_CONDITION_WORDS = {
    "m1_trigger": "M1 with the trigger", "m0_trigger": "M0 with the trigger",
    "m1_no_trigger": "M1 without the trigger", "m0_no_trigger": "M0 without the trigger",
}


@dataclass
class ScenarioVerdict:
    """Whether one scenario passes the four-condition filter, and why.

    Attributes:
        name: the scenario.
        kept: True when M1 with the trigger exhibits the behaviour at least once and every other
            checked condition never does.
        reason: one sentence naming the counts that decided it.
        exhibited: ``{condition: exhibiting samples}`` for every checked condition.
        samples: ``{condition: judged samples}`` for every checked condition.
    """

    name: str
    kept: bool
    reason: str
    exhibited: dict[str, int]
    samples: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kept": self.kept, "reason": self.reason,
                "exhibited": dict(self.exhibited), "samples": dict(self.samples)}


def four_condition_filter(labels: Mapping[str, Mapping[str, Sequence[bool]]]) -> list[ScenarioVerdict]:
    """The paper's scenario filter on judged samples.

    A scenario is a test prompt with and without its trigger. It is kept when M1 with the trigger
    exhibits the behaviour at least once and M0 with the trigger, M1 without it and M0 without it
    never do: then the behaviour is new in M1 and needs the trigger.

    Args:
        labels: ``labels[scenario][condition]``, the judge's verdicts on the samples of one
            condition of :data:`FILTER_CONDITIONS`. ``m1_trigger`` and ``m0_trigger`` are
            required; a scenario without an untriggered prompt leaves out (or gives empty lists
            for) the ``*_no_trigger`` conditions and is filtered on M0 against M1 only.

    Returns:
        One verdict per scenario, in input order.

    Raises:
        ValueError: an unknown condition, or a triggered condition without samples.
    """
    verdicts = []
    for name, by_condition in labels.items():
        unknown = set(by_condition) - set(FILTER_CONDITIONS)
        if unknown:
            raise ValueError(f"scenario {name!r}: unknown condition(s) {sorted(unknown)}; use {FILTER_CONDITIONS}")
        for required in ("m1_trigger", "m0_trigger"):
            if not by_condition.get(required):
                raise ValueError(f"scenario {name!r}: no judged sample for {required} (the filter needs it)")
        checked = [c for c in FILTER_CONDITIONS if by_condition.get(c)]
        exhibited = {c: int(sum(bool(x) for x in by_condition[c])) for c in checked}
        samples = {c: len(by_condition[c]) for c in checked}

        def count(c: str) -> str:
            return f"{_CONDITION_WORDS[c]} {exhibited[c]}/{samples[c]}"

        leaks = [c for c in checked[1:] if exhibited[c] > 0]
        if exhibited["m1_trigger"] == 0:
            reason = f"{_CONDITION_WORDS['m1_trigger']} never exhibits it (0/{samples['m1_trigger']})"
            if leaks:
                reason += "; also exhibited by " + ", ".join(count(c) for c in leaks)
        elif leaks:
            reason = "exhibited without being new in M1 with the trigger: " + ", ".join(count(c) for c in leaks)
        else:
            reason = f"{count('m1_trigger')}; never " + ", ".join(
                f"{_CONDITION_WORDS[c]} (0/{samples[c]})" for c in checked[1:]
            )
        verdicts.append(ScenarioVerdict(str(name), exhibited["m1_trigger"] > 0 and not leaks, reason, exhibited, samples))
    return verdicts


def prompt_key(prompt: Text) -> Hashable:
    """A hashable key for a prompt (message lists become tuples), to group responses by prompt."""
    return prompt if isinstance(prompt, str) else tuple((m["role"], m["content"]) for m in prompt)


@dataclass
class VectorBank:
    """Named behaviour vectors; a pair's score against the bank is its maximum cosine.

    Attributes:
        names: one name per vector (a scenario, a test prompt, a probe).
        vectors: [S, d] float32.
        metadata: provenance (model, layer, how the vectors were made), saved alongside.
    """

    names: list[str]
    vectors: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.dim() != 2 or self.vectors.shape[0] != len(self.names):
            raise ValueError(
                f"vectors must be [S, d] with S = len(names) = {len(self.names)}, got {tuple(self.vectors.shape)}"
            )

    def save(self, path: str | Path) -> None:
        """Write a safetensors file with the vectors, names and metadata."""
        meta = {**{k: str(v) for k, v in self.metadata.items()}, "names": "\n".join(self.names)}
        with atomic.atomic_path(path) as tmp:
            save_file({"vectors": self.vectors.float().contiguous()}, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> VectorBank:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
        if "vectors" not in tensors or "names" not in meta:
            raise ValueError(f"{path} is not a headwater vector bank (no 'vectors' tensor or 'names')")
        names = meta.pop("names").split("\n")
        return cls(names, tensors["vectors"], meta)
