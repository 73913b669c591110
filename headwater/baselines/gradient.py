"""The gradient baseline: LESS (Xia et al. 2024) adapted to DPO (method.md §5).

1. **Warm-up.** LoRA adapters (peft) on M0, trained with DPO on a seeded random subset (default
   5%) for a few epochs; after each epoch the adapter weights, Adam's moments and the epoch's
   mean learning rate η_c are saved as a checkpoint (``warmup/checkpoint-<c>.safetensors``).
2. **Training-pair features.** At every checkpoint, the gradient of each pair's DPO loss on the
   LoRA weights, for a whole batch in one backward pass
   (:mod:`headwater.baselines.per_pair_gradients`), turned into Adam's update direction with the
   checkpoint's moments, Γ = m' / √(v' + ε) with m' = β₁m + (1 − β₁)g and v' = β₂v + (1 − β₂)g²
   (LESS's formula), and projected to ``projection_dim`` dimensions by a seeded sparse random
   projection (:class:`headwater.baselines.projection.SparseProjection`) one layer at a time: the
   full per-pair gradient matrix never exists. The features go into the resumable
   :class:`headwater.engine.store.VectorStore` format, one store per checkpoint.
3. **Query features.** Behaviour pairs: a response of M1 that exhibits the behaviour ≻ a response
   of M0 to the same prompt that does not (:func:`behavior_query_pairs`); their plain projected
   gradients at each checkpoint (no Adam, as in LESS).
4. **Score** of pair i: Σ_c η_c · mean_q cos(Γ_i,c, ∇_q,c), through the cosine kernels.

The loss is the trainer's: β and summed or length-normalised log-probabilities come from
``GradientConfig.dpo`` (an explicit setting, recorded with every store). The reference model is
the base model (adapters disabled).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from headwater.data import PreferencePair
from headwater.data.pairs import make_pair
from headwater.engine import atomic
from headwater.engine.store import (
    ShardRecord,
    StoreError,
    VectorStore,
    dataset_fingerprint,
    finish_run,
    model_fingerprint,
    resumable_shards,
    start_run,
    store_lock,
    write_shard,
)
from headwater.engine.tokenization import encode_pairs, pad_batch, settings_as_used
from headwater.kernels import cosine_similarity_blocks
from headwater.methods.attribution import Ranking
from headwater.methods.vectors import pair_by_prompt, prompt_key
from headwater.baselines.per_pair_gradients import LinearGradientCapture, pair_weight_gradients
from headwater.baselines.projection import SparseProjection
from headwater.training.common import response_logps, seed_everything
from headwater.training.dpo import DPOConfig, dpo_loss, train_dpo

LOG = logging.getLogger(__name__)

WARMUP_RECORD = "warmup.json"
# The settings a warm-up depends on (the projection and the normalisation do not change it).
WARMUP_FIELDS = ("dpo", "lora_rank", "lora_alpha", "target_modules", "warmup_fraction", "warmup_epochs", "seed")


@dataclass
class GradientConfig:
    """Settings of the gradient baseline.

    Attributes:
        dpo: the DPO loss (``beta``, ``length_normalize``) and the warm-up's optimiser (``lr``,
            ``batch_size``, ``warmup_ratio``, ``max_grad_norm``, ``seed``) and tokenisation
            (``settings``); ``epochs`` is ignored (``warmup_epochs`` rules).
        lora_rank, lora_alpha: the adapters' rank r and scale α (α / r multiplies B·A).
        target_modules: peft's ``target_modules`` (default every linear layer but the LM head).
        warmup_fraction: the share of pairs the warm-up trains on (LESS: 5%).
        warmup_epochs: warm-up epochs; one checkpoint after each (LESS: 4).
        projection_dim: k, the dimension of the projected gradients (LESS: 8,192).
        projection_blocks: non-zeros per coordinate of the sparse projection.
        batch_size: pairs per gradient pass (2 × batch_size sequences).
        adam_eps: ε of the Adam normalisation, inside the square root as in LESS.
        normalisation: ``"adam"`` (LESS: training-pair gradients turned into Adam's update direction
            with the checkpoint's moments) or ``"none"`` (plain gradients on both sides, LESS's
            SGD variant).
        shard_pairs: pairs per shard of the feature stores.
        seed: the subset, the adapters' initialisation and the projection.
    """

    dpo: DPOConfig = field(default_factory=DPOConfig)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    target_modules: str | list[str] = "all-linear"
    warmup_fraction: float = 0.05
    warmup_epochs: int = 4
    projection_dim: int = 8192
    projection_blocks: int = 4
    batch_size: int = 8
    adam_eps: float = 1e-8
    normalisation: str = "adam"
    shard_pairs: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.normalisation not in ("adam", "none"):
            raise ValueError(f"`normalisation` must be 'adam' or 'none', got {self.normalisation!r}")
        if not 0 < self.warmup_fraction <= 1:
            raise ValueError(f"`warmup_fraction` must be in (0, 1], got {self.warmup_fraction}")
        for name in ("lora_rank", "warmup_epochs", "batch_size", "shard_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (the DPO settings included), recorded with every output."""
        out = dataclasses.asdict(self)
        out["dpo"] = {k: v for k, v in out["dpo"].items() if k != "settings"}
        out["dpo"]["settings"] = self.dpo.settings.to_dict()
        return out


@dataclass
class Checkpoint:
    """One warm-up checkpoint: adapter weights and Adam's moments at the end of an epoch.

    Attributes:
        epoch: 1-based.
        lr: η_c, the mean learning rate over the epoch's optimiser steps (the score's weight).
        path: the safetensors file (``weight.<name>``, ``exp_avg.<name>``, ``exp_avg_sq.<name>``).
        sha256: its checksum, verified when it is read.
        betas: Adam's (β₁, β₂).
    """

    epoch: int
    lr: float
    path: Path
    sha256: str
    betas: tuple[float, float]

    def load(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        found = atomic.sha256_file(self.path)
        if found != self.sha256:
            raise ValueError(f"{self.path}: checksum {found[:12]}… does not match the warm-up record ({self.sha256[:12]}…)")
        return load_file(str(self.path))


@dataclass
class GradientRanking:
    """The ranking and what it took.

    Attributes:
        ranking: pairs by Σ_c η_c · mean_q cos, ``method="gradient"``.
        checkpoints: the warm-up checkpoints used.
        n_queries: behaviour pairs used as queries.
        stores: one feature store directory per checkpoint.
        n_tokens: tokens through the gradient passes (training pairs and queries, every checkpoint).
        warmup_pairs: pairs in the warm-up subset.
        seconds: {"warmup", "features", "scoring"} wall times of this call (0 for reused stages).
    """

    ranking: Ranking
    checkpoints: list[Checkpoint]
    n_queries: int
    stores: list[Path]
    n_tokens: int
    warmup_pairs: int
    seconds: dict[str, float]


# ---------------------------------------------------------------------------------------------
# LoRA


def with_lora(model: torch.nn.Module, config: GradientConfig) -> torch.nn.Module:
    """A copy of ``model`` with fresh LoRA adapters (seeded); ``model`` itself is left untouched."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("the gradient baseline needs peft: pip install 'headwater[baselines]'") from None

    seed_everything(config.seed)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=config.target_modules,
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(copy.deepcopy(model), lora)
    peft_model.eval()
    return peft_model


def adapter_layers(peft_model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Weight name → the trainable bias-free linear module that owns it (LoRA's A and B)."""
    layers = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
            layers[f"{name}.weight"] = module
    if not layers:
        raise ValueError("the model has no trainable linear layers: were LoRA adapters added?")
    return layers


# ---------------------------------------------------------------------------------------------
# Warm-up


def warm_up(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[PreferencePair], config: GradientConfig,
    out_dir: str | Path, *, progress: bool = False,
) -> list[Checkpoint]:
    """Train LoRA adapters with DPO on a random ``warmup_fraction`` of ``pairs``, saving a
    checkpoint after each epoch; a finished warm-up in ``out_dir`` with the same settings, model
    and pairs is reused.

    Returns:
        the checkpoints, one per epoch.
    """
    out = Path(out_dir)
    record_path = out / WARMUP_RECORD
    settings = {k: v for k, v in config.to_dict().items() if k in WARMUP_FIELDS}
    identity = {"config": settings, "model_fingerprint": model_fingerprint(model),
                "dataset_fingerprint": dataset_fingerprint(pairs)}
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if {k: record.get(k) for k in identity} == identity:
            return [Checkpoint(c["epoch"], c["lr"], out / c["file"], c["sha256"], tuple(c["betas"]))
                    for c in record["checkpoints"]]
        LOG.warning("%s was made with other settings, model or pairs: warming up again", record_path)
    out.mkdir(parents=True, exist_ok=True)
    n_subset = max(1, round(config.warmup_fraction * len(pairs)))
    subset = sorted(random.Random(config.seed).sample(range(len(pairs)), n_subset))
    peft_model = with_lora(model, config)
    names = {param: name for name, param in peft_model.named_parameters() if param.requires_grad}
    checkpoints: list[Checkpoint] = []

    def save(epoch: int, optimizer: torch.optim.Optimizer, lr: float) -> None:
        from safetensors.torch import save

        tensors = {}
        for param, name in names.items():
            state = optimizer.state.get(param, {})
            tensors[f"weight.{name}"] = param.detach().clone().contiguous()
            for moment in ("exp_avg", "exp_avg_sq"):
                tensors[f"{moment}.{name}"] = state.get(moment, torch.zeros_like(param)).detach().clone().contiguous()
        path = out / f"checkpoint-{epoch}.safetensors"
        data = save(tensors)
        atomic.write_bytes(path, data)
        betas = tuple(float(b) for b in optimizer.param_groups[0].get("betas", (0.9, 0.999)))
        checkpoints.append(Checkpoint(epoch, lr, path, atomic.sha256_file(path), betas))

    dpo = dataclasses.replace(config.dpo, epochs=config.warmup_epochs)
    train_dpo(peft_model, tokenizer, [pairs[i] for i in subset], dpo, progress=progress, on_epoch_end=save)
    atomic.write_json(record_path, {
        **identity, "subset": [pairs[i].pair_id for i in subset],
        "checkpoints": [{"epoch": c.epoch, "lr": c.lr, "file": c.path.name, "sha256": c.sha256, "betas": list(c.betas)}
                        for c in checkpoints],
    }, indent=2)
    return checkpoints


def load_checkpoint(peft_model: torch.nn.Module, checkpoint: Checkpoint) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Put the checkpoint's adapter weights into ``peft_model``; returns name → (exp_avg, exp_avg_sq)."""
    tensors = checkpoint.load()
    adam = {}
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                if f"weight.{name}" not in tensors:
                    raise ValueError(f"{checkpoint.path} has no weights for {name}: another adapter layout")
                param.copy_(tensors[f"weight.{name}"])
                adam[name] = (tensors[f"exp_avg.{name}"], tensors[f"exp_avg_sq.{name}"])
    return adam


# ---------------------------------------------------------------------------------------------
# Per-pair gradient features


@dataclass
class GradientFeatures:
    """Projected per-pair gradients of a list of pairs.

    Attributes:
        kept: positions (in the input) of the pairs that have a row.
        vectors: [len(kept), k] float32 (float64 for a float64 model).
        skipped: (position, reason) of pairs that could not be encoded (over-long, empty).
        n_tokens: tokens of both sides of the kept pairs.
    """

    kept: list[int]
    vectors: torch.Tensor
    skipped: list[tuple[int, str]]
    n_tokens: int


def gradient_features(
    peft_model: torch.nn.Module, tokenizer: Any, pairs: Sequence[Any], projection: SparseProjection,
    config: GradientConfig, *, adam: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    betas: tuple[float, float] = (0.9, 0.999), progress: Callable[[int], None] | None = None,
) -> GradientFeatures:
    """R · Γ(pair) for every pair: its DPO loss gradient on the adapter weights, Adam-normalised
    when ``adam`` (name → (exp_avg, exp_avg_sq)) is given, projected by ``projection``.

    Pairs are batched by length (``config.batch_size`` per backward pass); ``progress`` is called
    with the number of pairs done after each batch.
    """
    layers = adapter_layers(peft_model)
    params = [layer.weight for layer in layers.values()]
    dtype = torch.promote_types(params[0].dtype, torch.float32)
    encoded = encode_pairs(tokenizer, pairs, config.dpo.settings)
    sides = encoded.encoded
    order = sorted(range(len(sides)), key=lambda i: max(len(sides[i][0].input_ids), len(sides[i][1].input_ids)))
    vectors = torch.zeros(len(sides), projection.dim, dtype=dtype)
    beta1, beta2 = betas
    average = config.dpo.length_normalize
    n_tokens = sum(len(c.input_ids) + len(r.input_ids) for c, r in sides)
    with LinearGradientCapture(layers) as capture:
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            n = len(rows)
            batch = pad_batch([sides[i][0] for i in rows] + [sides[i][1] for i in rows], tokenizer.pad_token_id)
            with torch.no_grad(), peft_model.disable_adapter():
                reference = response_logps(peft_model, batch, average=average)
            capture.clear()
            policy = response_logps(peft_model, batch, average=average)
            losses, _, _ = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], config.dpo.beta)
            # The weight gradients themselves are not needed (the hooks see what is), but asking
            # for them drives the backward pass through every adapter layer and nothing else.
            torch.autograd.grad(losses.sum(), params)
            out = torch.zeros(n, projection.dim, dtype=dtype)
            for name, grads in pair_weight_gradients(capture, n):
                flat = grads.reshape(n, -1)
                if adam is not None:
                    exp_avg, exp_avg_sq = (t.reshape(1, -1).to(dtype) for t in adam[name])
                    flat = (beta1 * exp_avg + (1 - beta1) * flat) / torch.sqrt(
                        beta2 * exp_avg_sq + (1 - beta2) * flat.square() + config.adam_eps
                    )
                projection.add(out, name, flat)
            vectors[rows] = out
            capture.clear()
            if progress is not None:
                progress(n)
    return GradientFeatures(list(encoded.kept), vectors, list(encoded.skipped), n_tokens)


def _store_header(peft_model: torch.nn.Module, pairs: Sequence[Any], config: GradientConfig,
                  checkpoint: Checkpoint, projection: SparseProjection) -> dict[str, Any]:
    settings = settings_as_used(config.dpo.settings, pairs)
    # What the features depend on besides the pairs: the checkpoint, the loss, the normalisation
    # and the projection. A store made with anything else is not resumed.
    features = {"checkpoint": checkpoint.sha256, "beta": config.dpo.beta, "length_normalize": config.dpo.length_normalize,
                "normalisation": config.normalisation, "adam_eps": config.adam_eps, "projection_dim": projection.dim,
                "projection_blocks": projection.blocks, "projection_seed": projection.seed}
    return {
        "model": "lora-gradient",
        "model_fingerprint": hashlib.sha256(json.dumps(features, sort_keys=True).encode()).hexdigest(),
        "layer": "lora",
        "model_dtype": str(next(peft_model.parameters()).dtype).removeprefix("torch."),
        "tokenization": settings.to_dict(),
        "dataset": str(getattr(pairs, "source", "")),
        "dataset_fingerprint": dataset_fingerprint(pairs),
        "n_pairs_in_dataset": len(pairs),
        "dtype": "float32",
        "shard_pairs": config.shard_pairs,
        "dim": projection.dim,
        "prompt_sharing": False,
        "max_tokens_per_batch": None,
        "pad_multiple": None,
        "gradient": {"config": config.to_dict(), "checkpoint_epoch": checkpoint.epoch, "checkpoint_lr": checkpoint.lr,
                     "normalisation": config.normalisation, "projection": {"kind": "sparse-sign", "dim": projection.dim,
                                                             "blocks": projection.blocks, "seed": projection.seed}},
    }


def encode_gradient_store(
    peft_model: torch.nn.Module, tokenizer: Any, pairs: Sequence[Any], projection: SparseProjection,
    config: GradientConfig, checkpoint: Checkpoint, adam: dict[str, tuple[torch.Tensor, torch.Tensor]] | None,
    out_dir: str | Path, *, progress: bool = False,
) -> tuple[VectorStore, int]:
    """Projected gradients of ``pairs`` at ``checkpoint`` (Adam-normalised with ``adam``, the
    checkpoint's moments, else plain) into a vector store.

    Shards are written as they finish; an interrupted run continues from its complete shards
    (same checkpoint, settings and pairs), and a finished store is reused.

    Returns:
        (the verified store, tokens computed by this call).
    """
    from tqdm.auto import tqdm

    root = Path(out_dir)
    header = _store_header(peft_model, pairs, config, checkpoint, projection)
    n, shard_pairs = len(pairs), config.shard_pairs
    with store_lock(root):
        try:
            finished = start_run(root, header, resume=True)
        except StoreError as err:
            LOG.warning("%s holds features made otherwise (%s): computing them again", root, err)
            finished = start_run(root, header, resume=False, overwrite=True)
        if finished is not None:
            return VectorStore.open(root), 0
        n_shards = max(1, -(-n // shard_pairs))
        pending, kept = resumable_shards(root, range(n_shards), n, shard_pairs)
        records: list[ShardRecord] = list(kept)
        tokens = 0
        done = sum(r.stop - r.start for r in kept)
        with tqdm(total=n, initial=done, desc=f"gradients at checkpoint {checkpoint.epoch}", unit="pair",
                  disable=not progress, leave=False) as bar:
            for index in pending:
                start, stop = index * shard_pairs, min(n, (index + 1) * shard_pairs)
                chunk = [pairs[i] for i in range(start, stop)]
                features = gradient_features(peft_model, tokenizer, chunk, projection, config, adam=adam,
                                             betas=checkpoint.betas, progress=bar.update)
                bar.update(len(features.skipped))
                tokens += features.n_tokens
                record = ShardRecord(
                    index, start, stop, 0, "", pair_ids=[chunk[i].pair_id for i in features.kept],
                    skipped=[{"position": start + p, "pair_id": chunk[p].pair_id, "reason": reason}
                             for p, reason in features.skipped],
                    n_tokens=features.n_tokens,
                )
                records.append(write_shard(root, record, features.vectors.float(), "float32"))
        finish_run(root, header, records, {"skipped_rows": []})
    return VectorStore.open(root), tokens


# ---------------------------------------------------------------------------------------------
# Queries and the ranking


def behavior_query_pairs(
    exhibiting: tuple[Sequence[Any], Sequence[str]], non_exhibiting: tuple[Sequence[Any], Sequence[str]],
) -> list[PreferencePair]:
    """Behaviour pairs for the queries: each response that exhibits the behaviour (M1's) ≻ a response
    to the same prompt that does not (M0's), cycling through the latter.

    Args:
        exhibiting: (prompts, responses) judged to show the behaviour.
        non_exhibiting: (prompts, responses) judged not to show it.

    A prompt given as chat messages gets its text answers as assistant messages.
    """
    prompts = list(exhibiting[0]) + list(non_exhibiting[0])
    responses = list(exhibiting[1]) + list(non_exhibiting[1])
    labels = [True] * len(exhibiting[0]) + [False] * len(non_exhibiting[0])
    out, seen = [], set()
    for pos, neg in pair_by_prompt([prompt_key(p) for p in prompts], labels):
        if responses[pos] == responses[neg]:
            continue  # no preference to learn from identical responses
        chosen, rejected = responses[pos], responses[neg]
        if not isinstance(prompts[pos], str):  # a chat prompt: the answers become assistant turns
            chosen, rejected = (r if not isinstance(r, str) else [{"role": "assistant", "content": r}]
                                for r in (chosen, rejected))
        pair = make_pair(prompts[pos], chosen, rejected, source="behavior-queries")
        if pair.pair_id not in seen:
            seen.add(pair.pair_id)
            out.append(pair)
    return out


def gradient_ranking(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[PreferencePair], queries: Sequence[PreferencePair],
    config: GradientConfig, work_dir: str | Path, *, progress: bool = False,
) -> GradientRanking:
    """Rank ``pairs`` by their LESS score against the behaviour ``queries`` (module docstring).

    Args:
        model: M0, a transformers causal LM (not modified: adapters go on a copy).
        tokenizer: its tokenizer (pad token set).
        pairs: the training pairs to rank.
        queries: behaviour pairs (:func:`behavior_query_pairs`).
        config: the baseline's settings.
        work_dir: warm-up checkpoints and one feature store per checkpoint (reused when complete).
        progress: progress bars on stderr.

    Raises:
        ValueError: no query pair, or none that could be encoded.
    """
    if not queries:
        raise ValueError("the gradient baseline needs at least one behaviour pair (an exhibiting and a "
                         "non-exhibiting response to the same prompt)")
    work = Path(work_dir)
    seconds = {"warmup": 0.0, "features": 0.0, "scoring": 0.0}
    start = time.perf_counter()
    checkpoints = warm_up(model, tokenizer, pairs, config, work / "warmup", progress=progress)
    seconds["warmup"] = time.perf_counter() - start
    warmup_record = json.loads((work / "warmup" / WARMUP_RECORD).read_text())
    projection = SparseProjection(config.projection_dim, seed=config.seed, blocks=config.projection_blocks)
    peft_model = with_lora(model, config)
    scores: torch.Tensor | None = None
    pair_ids: list[str] = []
    stores, n_tokens, n_queries = [], 0, 0
    for checkpoint in checkpoints:
        adam = load_checkpoint(peft_model, checkpoint)
        start = time.perf_counter()
        store, tokens = encode_gradient_store(peft_model, tokenizer, pairs, projection, config, checkpoint,
                                              adam if config.normalisation == "adam" else None,
                                              work / f"checkpoint-{checkpoint.epoch}", progress=progress)
        query = gradient_features(peft_model, tokenizer, queries, projection, config)
        seconds["features"] += time.perf_counter() - start
        n_tokens += tokens + query.n_tokens
        if not query.kept:
            raise ValueError(f"none of the {len(queries)} behaviour pairs could be encoded: {query.skipped[:3]}")
        n_queries = len(query.kept)
        start = time.perf_counter()
        # mean over queries of the cosine = one [Q, block] similarity block, averaged over Q.
        checkpoint_scores = torch.cat([block.double().mean(0) for block, _ in cosine_similarity_blocks(query.vectors.float(), store.blocks())])
        scores = checkpoint.lr * checkpoint_scores if scores is None else scores + checkpoint.lr * checkpoint_scores
        if pair_ids and pair_ids != store.pair_ids:
            raise ValueError(f"{store.root}: its pairs differ from the previous checkpoint's")
        pair_ids = store.pair_ids
        stores.append(Path(store.root))
        seconds["scoring"] += time.perf_counter() - start
    assert scores is not None
    ranking = Ranking.from_scores(pair_ids, scores.float().numpy(), "gradient")
    return GradientRanking(ranking, checkpoints, n_queries, stores, n_tokens, len(warmup_record["subset"]),
                           {k: round(v, 2) for k, v in seconds.items()})


__all__ = [
    "Checkpoint", "GradientConfig", "GradientFeatures", "GradientRanking", "adapter_layers", "behavior_query_pairs",
    "encode_gradient_store", "gradient_features", "gradient_ranking", "load_checkpoint", "warm_up", "with_lora",
]
