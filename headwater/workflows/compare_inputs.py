"""What ``headwater compare`` ranks with: inputs from the model organism or from your own files.

The organism gives everything, ground truth included: its preference pairs, M0 and M1 answers to
the behaviour's triggered test prompts judged by its judge (or ``--judge``), the behaviour change
vectors of those answers for ``bank``, and the planted pair ids. From files: M0, the pairs, a
JSONL of labelled responses ``{prompt, response, exhibits[, model]}`` (``model`` is ``"m0"`` or
``"m1"``; the gradient baseline's queries then pair M1's exhibiting answers with M0's
non-exhibiting ones), and optionally a vector bank, planted ids and a judge.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from headwater.baselines.gradient import GradientConfig
from headwater.data.readers import iter_jsonl
from headwater.engine.models import load_model, resolve_layer
from headwater.engine.tokenization import TokenizationSettings
from headwater.methods.behaviors import sample_behavior_vectors
from headwater.methods.judges import Judge
from headwater.methods.vectors import VectorBank
from headwater.workflows.compare import CompareInputs, Labelled
from headwater.workflows.organism_attribution import SAMPLES_PER_PROMPT, TEMPERATURE, measure_behavior

BANK_SAMPLES = 2  # samples per prompt and model for the bank's behaviour change vectors
LORA_LR = 1e-3  # the warm-up's learning rate for LoRA adapters on the organism


def organism_gradient_config(organism: Any, **changes: Any) -> GradientConfig:
    """The gradient baseline on the organism: its own DPO loss (β, summed log-probs) and batch
    size, at a LoRA learning rate, LESS's 5% subset and 4 epochs."""
    dpo = dataclasses.replace(organism.config.dpo_config(), lr=LORA_LR)
    return GradientConfig(dpo=dpo, seed=organism.config.seed, **changes)


def organism_inputs(organism: Any, behavior: str, *, judge: Judge | None = None, with_bank: bool = True,
                    samples: int = SAMPLES_PER_PROMPT, seed: int | None = None, max_new_tokens: int = 48,
                    ranking_judge: Judge | None = None) -> CompareInputs:
    """Everything the methods need for one planted ``behavior`` of ``organism``.

    Args:
        organism: a built organism.
        behavior: one of ``organism.behaviors``.
        judge: labels the probe's answers (default the organism's judge of the behaviour).
        with_bank: sample the behaviour change vectors for ``bank``.
        samples: answers per triggered test prompt and model for the probe.
        seed: sampling seed (default the organism's).
        max_new_tokens: answer length.
        ranking_judge: the judge of the ``judge`` method (default: the labelling judge).
    """
    if behavior not in organism.behaviors:
        raise ValueError(f"the organism has no behaviour {behavior!r}; choose from {list(organism.behaviors)}")
    seed = organism.config.seed if seed is None else seed
    judge = judge if judge is not None else organism.judges[behavior]
    models = {"m0": load_model(organism.m0_path), "m1": load_model(organism.m1_path)}
    (m0, tokenizer), (m1, _) = models["m0"], models["m1"]
    layer = resolve_layer(m0, None)
    shared: dict[str, Any] = {}
    start = time.perf_counter()
    measured = measure_behavior(organism, behavior, models, samples, seed, max_new_tokens, judge=judge)
    prompts, responses, labels, sources = [], [], [], []
    for name in ("m0", "m1"):
        p, r, lab = measured["labelled"][(name, "trigger")]
        prompts, responses, labels, sources = prompts + p, responses + r, labels + lab, sources + [name] * len(p)
    shared["labelled_seconds"] = round(time.perf_counter() - start, 2)
    shared["labelled_responses"] = len(responses)
    bank = None
    if with_bank:
        start = time.perf_counter()
        trigger = organism.test_prompts[behavior]["trigger"]
        bank = sample_behavior_vectors(m0, m1, tokenizer, trigger, layer=layer, settings=organism.settings,
                                       samples=BANK_SAMPLES, temperature=TEMPERATURE, max_new_tokens=max_new_tokens,
                                       seed=seed).vectors
        shared["bank_seconds"] = round(time.perf_counter() - start, 2)
    return CompareInputs(
        model=m0, tokenizer=tokenizer, layer=layer, settings=organism.settings,
        pairs=list(organism.load_preferences()), labelled=Labelled(prompts, responses, labels, sources),
        behavior=behavior, bank=bank, judge=ranking_judge if ranking_judge is not None else judge,
        planted=set(organism.planted_ids(behavior)), shared_cost=shared,
    )


def read_labelled(path: str | Path) -> Labelled:
    """Labelled responses ``{prompt, response, exhibits[, model]}`` from JSONL, each row checked."""
    from headwater.data.prompts import read_labelled_responses

    prompts, responses, labels = read_labelled_responses(path)
    models = [row.get("model") if isinstance(row, dict) else None for _, row in iter_jsonl(path)]
    if any(m is not None for m in models):
        bad = [i for i, m in enumerate(models) if m not in ("m0", "m1")]
        if bad:
            raise ValueError(f"{path}: row {bad[0] + 1} has model {models[bad[0]]!r}; every row must say 'm0' or 'm1' "
                             "when any does")
        return Labelled(prompts, responses, labels, models)
    return Labelled(prompts, responses, labels)


def file_inputs(*, model_path: str | Path, data: str | Path, labelled: str | Path, behavior: str,
                layer: int | None = None, settings: TokenizationSettings = TokenizationSettings(),
                bank: str | Path | None = None, planted: str | Path | None = None, judge: Judge | None = None,
                dtype: str = "auto", on_error: str = "raise") -> CompareInputs:
    """The inputs from files (see the module docstring); the bank must come from the same model and layer."""
    from headwater.data import load_preferences
    from headwater.engine.store import model_fingerprint

    model, tokenizer = load_model(model_path, dtype=dtype)
    layer = resolve_layer(model, layer)
    pairs = list(load_preferences(data, on_error=on_error))
    if not pairs:
        raise ValueError(f"{data} holds no preference pair")
    vectors = None
    if bank is not None:
        loaded = VectorBank.load(bank)
        fingerprint, bank_layer = loaded.metadata.get("model_fingerprint"), loaded.metadata.get("layer")
        if fingerprint is not None and fingerprint != model_fingerprint(model):
            raise ValueError(f"{bank} was made with another model than {model_path}")
        if bank_layer is not None and str(bank_layer) != str(layer):
            raise ValueError(f"{bank} holds vectors of layer {bank_layer}, not layer {layer}")
        vectors = loaded.vectors.to(torch.float32)
    ids = None
    if planted is not None:
        ids = {line.strip() for line in Path(planted).read_text(encoding="utf-8").splitlines() if line.strip()}
        if not ids:
            raise ValueError(f"{planted} lists no pair id")
    return CompareInputs(model=model, tokenizer=tokenizer, layer=layer, settings=settings, pairs=pairs,
                         labelled=read_labelled(labelled), behavior=behavior, bank=vectors, judge=judge, planted=ids)


__all__ = ["file_inputs", "organism_gradient_config", "organism_inputs", "read_labelled"]
