"""Training TopK and BatchTopK sparse autoencoders on a stream of activations, resumably.

The recipe follows Gao et al. (2024, TopK) and Bussmann et al. (2024, BatchTopK):

- inputs are scaled by one factor s so that E‖s·x‖² = d_in (estimated on the first buffer), and
  the factor is folded into the weights at the end, so the saved SAE reads raw activations;
- b_dec starts at the mean of the first buffer, W_dec's rows at random unit vectors, W_enc at
  W_decᵀ, b_enc at 0;
- loss: mean squared error of the reconstruction plus an auxiliary loss (coefficient 1/32) in
  which the top ``aux_k`` dead latents (no activation in the last ``dead_after_tokens`` tokens)
  reconstruct the residual x − x̂, so dead latents get gradient again;
- Adam; after every step W_dec's rows are renormalised to unit norm, and the gradient part along
  each row is removed before the step;
- BatchTopK keeps an exponential average of the smallest activation it kept per batch: at
  inference the SAE becomes a JumpReLU with that threshold (:meth:`SparseAutoencoder.inference_form`).

Activations come from any iterator of (position, [n, d_in] chunk) such as
:class:`~headwater.audit.token_stream.ResponseTokenStream`, through a bounded
:class:`~headwater.audit.shuffle_buffer.ShuffleBuffer`. A checkpoint (parameters, Adam's state,
the buffer's rows and generator, counters, the stream's position) is written atomically every
``checkpoint_every`` steps at a buffer boundary; a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from headwater.audit.sae import SparseAutoencoder, fraction_of_variance_unexplained
from headwater.audit.shuffle_buffer import ShuffleBuffer
from headwater.audit.token_stream import StreamPosition
from headwater.engine.atomic import atomic_directory, sha256_file

TRAINED_ARCHITECTURES = ("topk", "batchtopk")
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class SAETrainingConfig:
    """How an SAE is trained.

    Attributes:
        architecture: ``"batchtopk"`` (the audit paper's choice) or ``"topk"``.
        d_sae: latents; None means ``expansion × d_in``.
        expansion: latents per input dimension when ``d_sae`` is None.
        k: active latents per token (BatchTopK: on average over a batch).
        total_tokens: tokens to train on (the stream cycles through epochs); None means
            ``epochs`` passes over the stream.
        epochs: passes over the stream when ``total_tokens`` is None.
        batch_tokens: tokens per step.
        buffer_tokens: the shuffle buffer's capacity, the bound on memory.
        lr: Adam's learning rate; None means Gao et al.'s 2e-4 / √(d_sae / 16384).
        aux_k: dead latents used by the auxiliary loss; None means min(d_in / 2, d_sae).
        aux_coefficient: weight of the auxiliary loss.
        dead_after_tokens: a latent that has not fired in this many tokens counts as dead.
        threshold_momentum: BatchTopK threshold's exponential average.
        seed: initialisation, buffer shuffles.
        checkpoint_every: steps between checkpoints (0: never).
    """

    architecture: str = "batchtopk"
    d_sae: int | None = None
    expansion: int = 8
    k: int = 16
    total_tokens: int | None = None
    epochs: float = 4.0
    batch_tokens: int = 1024
    buffer_tokens: int = 1 << 15
    lr: float | None = None
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 200_000
    threshold_momentum: float = 0.99
    seed: int = 0
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        if self.architecture not in TRAINED_ARCHITECTURES:
            raise ValueError(f"architecture must be one of {TRAINED_ARCHITECTURES}, got {self.architecture!r}")
        positive = {"expansion": self.expansion, "k": self.k, "batch_tokens": self.batch_tokens,
                    "dead_after_tokens": self.dead_after_tokens}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.buffer_tokens < 2 * self.batch_tokens:
            raise ValueError(f"buffer_tokens ({self.buffer_tokens}) must hold at least two batches "
                             f"of batch_tokens ({self.batch_tokens})")
        if self.total_tokens is None and not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")

    def latents(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion * d_in

    def learning_rate(self, d_in: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.latents(d_in) / 16384)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainingState:
    """Counters that a checkpoint carries besides tensors."""

    step: int = 0
    tokens: int = 0
    position: StreamPosition = StreamPosition()
    input_scale: float = 0.0  # s; 0 until the first buffer has been seen
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TrainedSAE:
    """The result of :func:`train_sae`: the SAE in raw activation units and how it was made.

    ``quality`` holds the last evaluation window's fraction of variance unexplained (``fvu``),
    mean active latents per token (``l0``), latents dead at the end (``dead``, ``dead_fraction``)
    and throughput (``tokens_per_second``).
    """

    sae: SparseAutoencoder
    config: SAETrainingConfig
    quality: dict[str, float]
    history: list[dict[str, float]]


def _initialise(sae: SparseAutoencoder, first: torch.Tensor, generator: torch.Generator) -> None:
    with torch.no_grad():
        directions = torch.randn(sae.d_sae, sae.d_in, generator=generator, dtype=sae.W_dec.dtype)
        sae.W_dec.copy_(directions / directions.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(first.mean(dim=0))


def _auxiliary_loss(sae: SparseAutoencoder, x: torch.Tensor, x_hat: torch.Tensor, h: torch.Tensor,
                    dead: torch.Tensor, aux_k: int) -> torch.Tensor:
    """Gao et al.'s AuxK: the top ``aux_k`` dead latents reconstruct the residual x − x̂."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return x.new_zeros(())
    residual = (x - x_hat).detach()
    dead_h = torch.where(dead, h, torch.full_like(h, -math.inf))
    values, indices = dead_h.topk(min(aux_k, n_dead), dim=1)
    f_aux = torch.zeros_like(h).scatter(1, indices, values.clamp_min(0))
    residual_hat = f_aux @ sae.W_dec
    # Normalised so the coefficient means the same at any scale; fewer dead latents, less weight.
    scale = min(n_dead / aux_k, 1.0)
    denominator = (residual - residual.mean(dim=0)).pow(2).sum(dim=1).mean().clamp_min(1e-12)
    return scale * (residual_hat - residual).pow(2).sum(dim=1).mean() / denominator


class _Run:
    """One training run's mutable parts, saved and restored as a checkpoint."""

    def __init__(self, d_in: int, config: SAETrainingConfig) -> None:
        self.config = config
        self.sae = SparseAutoencoder(d_in, config.latents(d_in), architecture=config.architecture, k=config.k)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=config.learning_rate(d_in),
                                          betas=(0.9, 0.999), eps=6.25e-10)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.buffer = ShuffleBuffer(config.buffer_tokens, d_in, torch.Generator().manual_seed(config.seed + 1))
        self.since_fired = torch.zeros(self.sae.d_sae, dtype=torch.long)
        self.leftover: torch.Tensor | None = None
        self.state = TrainingState()

    def step(self, x: torch.Tensor) -> dict[str, float]:
        config, sae = self.config, self.sae
        f, h = sae.encode_training(x)
        x_hat = sae.decode(f)
        mse = (x_hat - x).pow(2).sum(dim=1).mean()
        dead = self.since_fired >= config.dead_after_tokens
        aux = _auxiliary_loss(sae, x, x_hat, h, dead, config.aux_k or min(sae.d_in // 2, sae.d_sae))
        loss = mse + config.aux_coefficient * aux
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_gradient()
        self.optimizer.step()
        sae.normalise_decoder()
        with torch.no_grad():
            fired = (f > 0).any(dim=0)
            self.since_fired += x.shape[0]
            self.since_fired[fired] = 0
            if config.architecture == "batchtopk" and bool((f > 0).any()):
                smallest = f[f > 0].min()
                m = config.threshold_momentum if self.state.step > 0 else 0.0
                sae.threshold.mul_(m).add_((1 - m) * smallest)
            variance = (x - x.mean(dim=0)).pow(2).sum(dim=1).mean()
        self.state.step += 1
        self.state.tokens += x.shape[0]
        return {"step": self.state.step, "tokens": self.state.tokens, "mse": float(mse.detach()),
                "fvu": float(mse.detach() / variance) if variance > 0 else math.nan,
                "l0": float((f > 0).sum(dim=1).float().mean()), "aux": float(aux.detach()), "dead": int(dead.sum())}

    # -- checkpoints ----------------------------------------------------------------------------

    def save(self, directory: Path, fingerprint: dict[str, Any]) -> None:
        tensors = {f"sae.{name}": t.detach().contiguous() for name, t in self.sae.state_dict().items()}
        for i, param in enumerate(self.sae.parameters()):
            for key, value in self.optimizer.state.get(param, {}).items():
                tensors[f"adam.{i}.{key}"] = value.detach().reshape(value.shape).contiguous()
        buffer = self.buffer.state()
        tensors["buffer.rows"] = buffer["rows"].contiguous()
        tensors["buffer.generator"] = buffer["generator"]
        tensors["init.generator"] = self.generator.get_state()
        tensors["since_fired"] = self.since_fired
        if self.leftover is not None:
            tensors["leftover"] = self.leftover.contiguous()
        state = self.state
        with atomic_directory(directory) as tmp:
            save_file(tensors, str(tmp / "state.safetensors"))
            record = {"fingerprint": fingerprint, "step": state.step, "tokens": state.tokens,
                      "position": state.position.to_dict(), "input_scale": state.input_scale,
                      "seconds": state.seconds, "history": state.history,
                      "sha256": sha256_file(tmp / "state.safetensors")}
            (tmp / "state.json").write_text(json.dumps(record, indent=1) + "\n")

    def restore(self, directory: Path, fingerprint: dict[str, Any]) -> bool:
        """Load a checkpoint written for the same fingerprint; False (and untouched) otherwise."""
        try:
            record = json.loads((directory / "state.json").read_text())
        except (OSError, ValueError):
            return False
        if record.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            return False
        path = directory / "state.safetensors"
        if not path.exists() or sha256_file(path) != record.get("sha256"):
            raise ValueError(f"the SAE checkpoint {path} does not match its record: remove {directory} to start over")
        tensors = load_file(str(path))
        self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
        for i, param in enumerate(self.sae.parameters()):
            keys = [k for k in tensors if k.startswith(f"adam.{i}.")]
            if keys:
                self.optimizer.state[param] = {k.split(".", 2)[2]: tensors[k].clone() for k in keys}
        self.buffer.restore({"rows": tensors["buffer.rows"], "generator": tensors["buffer.generator"]})
        self.generator.set_state(tensors["init.generator"])
        self.since_fired = tensors["since_fired"].clone()
        self.leftover = tensors.get("leftover")
        self.state = TrainingState(record["step"], record["tokens"], StreamPosition(**record["position"]),
                                   record["input_scale"], record["seconds"], record["history"])
        return True


def _fold_input_scale(sae: SparseAutoencoder, s: float) -> SparseAutoencoder:
    """An SAE on raw x equal to ``sae`` on s·x: W_enc·s, b_dec/s, W_dec/s (thresholds unchanged)."""
    with torch.no_grad():
        sae.W_enc.mul_(s)
        sae.b_dec.div_(s)
        sae.W_dec.div_(s)
    return sae


def train_sae(
    chunks: Callable[[StreamPosition], Iterator[tuple[StreamPosition, torch.Tensor]]],
    d_in: int,
    config: SAETrainingConfig,
    *,
    total_tokens: int,
    checkpoint_dir: str | Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
    stop_after_steps: int | None = None,
) -> TrainedSAE | None:
    """Train an SAE on activation chunks until ``total_tokens`` tokens have been seen.

    Args:
        chunks: called with the stream position to start from; yields (position after the chunk,
            [n, d_in] float32) without end (e.g. ``ResponseTokenStream.chunks``).
        d_in: activation width.
        config: the recipe.
        total_tokens: tokens to train on.
        checkpoint_dir: where checkpoints go; an existing one with the same ``fingerprint`` (what
            the activations are: model, layer, data) and config is resumed.
        fingerprint: identifies the activations; recorded in checkpoints.
        progress: called with each step's metrics.
        stop_after_steps: stop (after a checkpoint) once this many steps exist; for tests of
            interruption. Returns None then.

    Returns:
        The trained SAE, in raw activation units (the input scale folded in).
    """
    key = {"data": fingerprint or {}, "config": config.to_dict(), "d_in": d_in, "total_tokens": total_tokens}
    run = _Run(d_in, config)
    where = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if where is not None:
        run.restore(where, key)
    stream = chunks(run.state.position)
    started = time.perf_counter() - run.state.seconds
    last_checkpoint = run.state.step
    exhausted_tokens = False
    recent: list[dict[str, float]] = []
    while not exhausted_tokens:
        while not run.buffer.full:
            if run.leftover is None:
                run.state.position, run.leftover = next(stream)
            run.leftover = run.buffer.add(run.leftover.float())
        if run.state.input_scale == 0.0:
            first = run.buffer.rows[:run.buffer.n]
            run.state.input_scale = math.sqrt(d_in / max(float(first.pow(2).sum(dim=1).mean()), 1e-30))
            _initialise(run.sae, first * run.state.input_scale, run.generator)
        for batch in run.buffer.drain(config.batch_tokens):
            remaining = total_tokens - run.state.tokens
            if remaining <= 0:
                exhausted_tokens = True
                break
            metrics = run.step(batch[:remaining] * run.state.input_scale)
            recent = (recent + [metrics])[-20:]
            if progress is not None:
                progress(metrics)
        run.state.seconds = time.perf_counter() - started
        if recent:
            run.state.history.append(recent[-1])
        due = config.checkpoint_every and run.state.step - last_checkpoint >= config.checkpoint_every
        if where is not None and (due or exhausted_tokens):
            run.save(where, key)
            last_checkpoint = run.state.step
        if stop_after_steps is not None and run.state.step >= stop_after_steps and not exhausted_tokens:
            if where is not None:
                run.save(where, key)
            return None
    seconds = time.perf_counter() - started
    window = recent or [{"fvu": math.nan, "l0": math.nan}]
    dead = int((run.since_fired >= config.dead_after_tokens).sum())
    quality = {
        "fvu": sum(m["fvu"] for m in window) / len(window),
        "l0": sum(m["l0"] for m in window) / len(window),
        "dead": dead, "dead_fraction": dead / run.sae.d_sae,
        "tokens": run.state.tokens, "steps": run.state.step, "seconds": seconds,
        "tokens_per_second": run.state.tokens / seconds if seconds > 0 else math.nan,
        "input_scale": run.state.input_scale,
    }
    sae = _fold_input_scale(run.sae, run.state.input_scale)
    return TrainedSAE(sae, config, quality, run.state.history)


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, activations: Iterator[torch.Tensor]) -> dict[str, float]:
    """Inference quality over [n, d_in] blocks: FVU (float64 sums), mean L0, latents never active."""
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    residual = total = 0.0
    sums, squares, count, active = None, None, 0, 0
    for x in activations:
        x = x.float()
        code = sae.encode_sparse(x)
        x_hat = sae.decode_sparse(code)
        fired[code.indices] = True
        active += int(code.values.numel())
        residual += float((x.double() - x_hat.double()).pow(2).sum())
        sums = x.double().sum(dim=0) if sums is None else sums + x.double().sum(dim=0)
        squares = x.double().pow(2).sum() if squares is None else squares + x.double().pow(2).sum()
        count += x.shape[0]
    if count < 2 or sums is None or squares is None:
        raise ValueError("evaluate_sae needs at least two activation rows")
    total = float(squares - sums.pow(2).sum() / count)
    return {"fvu": residual / total if total > 0 else math.nan, "l0": active / count,
            "dead": int((~fired).sum()), "dead_fraction": float((~fired).float().mean()), "tokens": count}


__all__ = ["SAETrainingConfig", "TRAINED_ARCHITECTURES", "TrainedSAE", "evaluate_sae", "fraction_of_variance_unexplained",
           "train_sae"]
