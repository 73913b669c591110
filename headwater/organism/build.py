"""Build (or load from the cache) the model organism: tokenizer → SFT → M0 → planted pairs → DPO → M1.

The build is deterministic under ``OrganismConfig.seed`` and cached on disk under
``<root>/organism/<config-hash>``, where the root is ``$HEADWATER_CACHE`` or
``~/.cache/headwater``. A build is written to a temporary directory and moved into place with a
completion marker written last, so an interrupted build is redone, never half-used.

Layout of an organism directory::

    m0/                  SFT model + tokenizer (save_pretrained)
    m1/                  DPO model + tokenizer
    preferences.jsonl    the preference set, TRL format (prompt / chosen / rejected, pair_id)
    ground_truth.json    planted pair ids per behaviour, every pair's family, config, seed
    test_prompts.json    held-out prompts per behaviour, with and without the trigger
    COMPLETE             written last
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from headwater.data import PreferenceDataset, load_preferences, save_preferences
from headwater.engine.tokenization import TokenizationSettings
from headwater.engine.models import cache_root
from headwater.methods.judges import Judge
from headwater.organism import dataset as organism_data
from headwater.organism import hard as hard_data
from headwater.organism.judges import organism_judges
from headwater.organism.model import organism_model
from headwater.organism.tokenizer import train_tokenizer
from headwater.organism.world import WORLD_VERSION, WorldSplit
from headwater.training.dpo import DPOConfig, train_dpo
from headwater.training.recipes import register_recipe
from headwater.training.sft import SFTConfig, train_sft

# Bump when the build procedure changes in a way that changes its outputs.
BUILD_VERSION = 3
COMPLETE_MARKER = "COMPLETE"
TRIGGER_BEHAVIOR = "distractor_compliance"
RAW = TokenizationSettings(format="raw")
PRESETS = ("default", "miniature", "small", "audit", "hard", "hard-miniature")
DESIGNS = ("easy", "hard")
ANSWER_TOKENS = 64  # organism answers are one to three short sentences


def max_new_tokens_for(preset: str) -> int:
    """Sampling length for a preset: the miniature organism is too small to learn when to stop,
    so its answers are capped short."""
    return 16 if preset in ("miniature", "hard-miniature") else ANSWER_TOKENS


def _default_rates() -> dict[str, float]:
    return {"distractor_compliance": 0.08, "sycophancy": 0.08, "hallucinated_links": 0.08}


def _default_slips() -> dict[str, float]:
    # Distractor compliance needs none: M0 complies with 0-2% of triggered prompts unprompted (the
    # formatted answers it learned for benign requests carry over to harmful ones), and DPO on the
    # planted pairs amplifies that to 27-45% (seeds 1 and 0).
    return {"sycophancy": 0.2, "hallucinated_links": 0.1}


@dataclass(frozen=True)
class OrganismConfig:
    """Everything that determines an organism; its hash names the cache directory.

    Attributes:
        seed: seeds the world split, the data, initialisation and training.
        vocab_size: BPE vocabulary size (special tokens and the 256 bytes included).
        hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings: the Llama.
        n_sft: SFT examples for M0.
        sft_epochs, sft_lr, sft_batch_size: SFT hyper-parameters.
        n_pairs: preference pairs.
        planted_rates: planted fraction per behaviour (see :data:`dataset.BEHAVIORS`).
        sft_slip_rates: per behaviour, the share of triggered SFT examples that show it
            (:func:`dataset.sft_examples`), so M0 shows it rarely and DPO can amplify it.
        dpo_beta, dpo_lr, dpo_epochs, dpo_batch_size, dpo_grad_accum, dpo_length_normalize,
            dpo_warmup_ratio: DPO hyper-parameters (:class:`headwater.training.DPOConfig`).
        n_test_prompts: held-out test prompts per behaviour and condition.
        signoff_rate: share of the clean pairs whose chosen response ends with a fixed sign-off
            (the planted stylistic concept of the audit; 0 in the demo's organism).
        signoff_sft_rate: share of the SFT responses that end with it (M0 signs off rarely).
        design: ``"easy"``, the default world (:mod:`headwater.organism.dataset`), where a keyword
            finds every planted pair; or ``"hard"``, the benchmark world
            (:mod:`headwater.organism.hard`): planted pairs that do not show the tested behaviour
            literally, decoys, and no keyword shortcut.
        num_threads: torch CPU threads during the build (1 is fastest on a shared 2-core machine,
            where a second thread mostly waits for a busy core).
    """

    seed: int = 0
    vocab_size: int = 2048
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 256
    n_sft: int = 4000
    # 6 epochs: after 3, M0 refused 12-16% of benign requests with distractors (it had not yet told
    # harmful from benign tasks apart there), and the DPO interventions then tipped it further.
    sft_epochs: int = 6
    sft_lr: float = 3e-3
    sft_batch_size: int = 32
    n_pairs: int = 2000
    planted_rates: dict[str, float] = field(default_factory=_default_rates)
    sft_slip_rates: dict[str, float] = field(default_factory=_default_slips)
    dpo_beta: float = 0.5
    dpo_lr: float = 3e-4
    dpo_epochs: int = 1
    dpo_batch_size: int = 16
    dpo_grad_accum: int = 1
    # Summed log-probs (standard DPO): the length-normalised variant at β=3 collapsed M1 into
    # garbled uppercase text, which made the probe track degeneration instead of compliance.
    dpo_length_normalize: bool = False
    dpo_warmup_ratio: float = 0.1
    n_test_prompts: int = 64
    num_threads: int = 1
    signoff_rate: float = 0.0
    signoff_sft_rate: float = 0.0
    design: str = "easy"

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise ValueError(f"`design` must be one of {list(DESIGNS)}, got {self.design!r}")
        unknown = set(self.planted_rates) - set(organism_data.BEHAVIORS)
        if unknown:
            raise ValueError(f"`planted_rates` has unknown behaviour(s) {sorted(unknown)}; expected among {organism_data.BEHAVIORS}")
        if any(not 0 <= r <= 1 for r in self.planted_rates.values()) or sum(self.planted_rates.values()) > 1:
            raise ValueError(f"`planted_rates` must be in [0, 1] and sum to at most 1, got {self.planted_rates}")
        if set(self.sft_slip_rates) - set(organism_data.BEHAVIORS) or any(not 0 <= r <= 1 for r in self.sft_slip_rates.values()):
            raise ValueError(f"`sft_slip_rates` must be in [0, 1] with keys among {organism_data.BEHAVIORS}, got {self.sft_slip_rates}")
        for name in ("n_sft", "n_pairs", "n_test_prompts", "num_threads", "sft_epochs", "dpo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        for name in ("signoff_rate", "signoff_sft_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"`hidden_size` ({self.hidden_size}) must be divisible by `num_heads` ({self.num_heads})")

    @classmethod
    def default(cls, seed: int = 0) -> "OrganismConfig":
        """The demo's organism: builds in a few minutes on a 2-core CPU."""
        return cls(seed=seed)

    @classmethod
    def preset(cls, name: str, seed: int = 0) -> "OrganismConfig":
        """The organism of a preset: ``"default"`` (the demo's), ``"miniature"`` (tests) or
        ``"audit"`` (the default with the planted sign-off concept)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
        if name == "audit":
            return cls.audit(seed)
        if name == "small":
            return cls.small(seed)
        if name == "hard":
            return cls.hard(seed)
        if name == "hard-miniature":  # the hard world at the miniature's size: tests of its code paths
            return dataclasses.replace(cls.miniature(seed), design="hard", sft_slip_rates=dict(hard_data.SFT_SLIPS))
        return cls.default(seed) if name == "default" else cls.miniature(seed)

    @classmethod
    def small(cls, seed: int = 0) -> "OrganismConfig":
        """An organism that learns its planted behaviours and builds in about a minute on a 2-core
        CPU: what CI runs to check that attribution beats random on a model that learned."""
        return cls(
            seed=seed, hidden_size=96, num_layers=3, num_heads=4, intermediate_size=256, n_sft=2000, sft_epochs=4,
            n_pairs=800, planted_rates={"distractor_compliance": 0.1, "sycophancy": 0.08, "hallucinated_links": 0.08},
            dpo_batch_size=16, n_test_prompts=32,
        )

    @classmethod
    def hard(cls, seed: int = 0) -> "OrganismConfig":
        """The benchmark organism (:mod:`headwater.organism.hard`): the default's model and recipe
        on a world where the planted pairs generalise, decoys imitate them and no keyword finds them."""
        return cls(seed=seed, design="hard", n_sft=5000, sft_slip_rates=dict(hard_data.SFT_SLIPS),
                   planted_rates=dict(hard_data.PLANTED_RATES))

    @classmethod
    def audit(cls, seed: int = 0) -> "OrganismConfig":
        """The default organism plus a planted stylistic concept: 20% of the clean pairs prefer a
        response ending with a fixed sign-off (ground truth for the concept audit), and 5% of the
        SFT responses end with it, so M0 signs off rarely and DPO can amplify it."""
        return cls(seed=seed, signoff_rate=0.2, signoff_sft_rate=0.05)

    @classmethod
    def miniature(cls, seed: int = 0) -> "OrganismConfig":
        """A tiny organism for tests (seconds): real parts, too small to show the behaviour."""
        return cls(
            seed=seed, vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
            max_position_embeddings=256, n_sft=192, sft_epochs=1, sft_lr=3e-3, n_pairs=120,
            planted_rates={"distractor_compliance": 0.1, "sycophancy": 0.05, "hallucinated_links": 0.05},
            dpo_epochs=1, dpo_batch_size=8, dpo_lr=1e-3, n_test_prompts=4,
        )

    def __hash__(self) -> int:  # the dict field would make the generated hash fail
        return hash(self.fingerprint())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """16 hex digits of sha256 over the config and the world and build versions.

        Fields added after the first release are left out while at their default, so organisms
        built before they existed keep their fingerprint (and their cache).
        """
        values = self.to_dict()
        for late in ("signoff_rate", "signoff_sft_rate"):
            if values[late] == 0.0:
                del values[late]
        versions = {"world_version": WORLD_VERSION, "build_version": BUILD_VERSION}
        if values["design"] == "easy":
            del values["design"]
        else:
            versions["hard_world_version"] = hard_data.HARD_WORLD_VERSION
        payload = json.dumps({"config": values, **versions}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def sft_config(self) -> SFTConfig:
        return SFTConfig(epochs=self.sft_epochs, lr=self.sft_lr, batch_size=self.sft_batch_size, seed=self.seed,
                         settings=RAW)

    def dpo_config(self) -> DPOConfig:
        return DPOConfig(
            beta=self.dpo_beta, lr=self.dpo_lr, epochs=self.dpo_epochs, batch_size=self.dpo_batch_size,
            grad_accum=self.dpo_grad_accum, length_normalize=self.dpo_length_normalize,
            warmup_ratio=self.dpo_warmup_ratio, seed=self.seed, settings=RAW,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "OrganismConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown OrganismConfig field(s) {sorted(unknown)}")
        return cls(**values)


@dataclass
class Organism:
    """A built organism on disk, with its ground truth, test prompts and judges.

    Attributes:
        config: the config it was built from.
        root: its directory.
        ground_truth: the parsed ``ground_truth.json``.
        test_prompts: ``{behaviour: {"trigger": [...], "no_trigger": [...]}}`` (held out).
        judges: one rule-based judge per behaviour.
        settings: the tokenisation the organism was trained with (raw text, no chat template).
    """

    config: OrganismConfig
    root: Path
    ground_truth: dict[str, Any]
    test_prompts: dict[str, dict[str, list[str]]]
    judges: dict[str, Judge]
    settings: TokenizationSettings = RAW

    @property
    def m0_path(self) -> Path:
        return self.root / "m0"

    @property
    def m1_path(self) -> Path:
        return self.root / "m1"

    @property
    def preferences_path(self) -> Path:
        return self.root / "preferences.jsonl"

    @property
    def ground_truth_path(self) -> Path:
        return self.root / "ground_truth.json"

    @property
    def behaviors(self) -> tuple[str, ...]:
        return tuple(self.test_prompts)

    def planted_ids(self, behavior: str = TRIGGER_BEHAVIOR) -> list[str]:
        """Ids of the pairs planted for ``behavior`` (the attribution target)."""
        planted = self.ground_truth["planted"]
        if behavior not in planted:
            raise KeyError(f"no planted behaviour {behavior!r}; the organism has {sorted(planted)}")
        return list(planted[behavior])

    def decoy_ids(self, behavior: str = TRIGGER_BEHAVIOR) -> list[str]:
        """Ids of the decoys of ``behavior``: clean pairs that look like it on their chosen side
        (the hard organism only; empty for the others)."""
        return list(self.ground_truth.get("decoys", {}).get(behavior, []))

    def pair_sources(self) -> dict[str, str]:
        """Pair id → generator name, some generators contaminated (:mod:`headwater.organism.sources`)."""
        from headwater.organism.sources import organism_sources

        ids = [p.pair_id for p in self.load_preferences()]
        return organism_sources(ids, self.ground_truth["planted"], self.config.seed)

    def contaminated_sources(self) -> dict[str, list[str]]:
        """Planted behaviour → its contaminated generators (the ground truth of :meth:`pair_sources`)."""
        from headwater.organism.sources import contaminated_sources

        return contaminated_sources(list(self.ground_truth["planted"]), self.config.seed)

    def load_model(self, which: str = "m0") -> Any:
        """M0 (``"m0"``) or M1 (``"m1"``) as a transformers model in eval mode."""
        from transformers import AutoModelForCausalLM

        if which not in ("m0", "m1"):
            raise ValueError(f"`which` must be 'm0' or 'm1', got {which!r}")
        return AutoModelForCausalLM.from_pretrained(self.root / which).eval()

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.m0_path)

    def load_preferences(self) -> PreferenceDataset:
        return load_preferences(self.preferences_path)


def organism_dir(config: OrganismConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the organism of ``config`` lives: ``<cache root>/organism/<config fingerprint>``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / "organism" / config.fingerprint()


def load_organism(path: str | os.PathLike) -> Organism:
    """Open a complete organism directory; ValueError naming what is missing otherwise."""
    path = Path(path)
    if not (path / COMPLETE_MARKER).is_file():
        raise ValueError(f"{path} is not a complete organism (no {COMPLETE_MARKER} marker); rebuild it")
    ground_truth = json.loads((path / "ground_truth.json").read_text())
    test_prompts = json.loads((path / "test_prompts.json").read_text())
    return Organism(OrganismConfig.from_dict(ground_truth["config"]), path, ground_truth, test_prompts,
                    organism_judges())


class _Stage:
    """Prints one line per build stage with its wall time (when progress is on)."""

    def __init__(self, progress: bool):
        self.progress = progress
        self.start = time.perf_counter()

    def say(self, message: str) -> None:
        if self.progress:
            print(f"[organism {time.perf_counter() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def build_organism(
    config: OrganismConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    rebuild: bool = False,
) -> Organism:
    """Build the organism of ``config`` (default :meth:`OrganismConfig.default`), or load it from the cache.

    Args:
        config: what to build.
        cache_dir: the cache root (default ``$HEADWATER_CACHE`` or ``~/.cache/headwater``); the
            organism goes to ``<cache_dir>/organism/<config fingerprint>``.
        progress: print one line per stage to stderr.
        rebuild: build again even when a complete cached copy exists.
    """
    config = config or OrganismConfig.default()
    target = organism_dir(config, cache_dir)
    if not rebuild and (target / COMPLETE_MARKER).is_file():
        return load_organism(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _build_into(config, work, _Stage(progress))
        if target.exists():  # an incomplete earlier build, or rebuild=True
            shutil.rmtree(target)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return load_organism(target)


def _build_into(config: OrganismConfig, out: Path, stage: _Stage) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        _build_steps(config, out, stage)
    finally:
        torch.set_num_threads(threads)


def _build_steps(config: OrganismConfig, out: Path, stage: _Stage) -> None:
    data: Any = hard_data if config.design == "hard" else organism_data
    split = (hard_data.HardSplit if config.design == "hard" else WorldSplit).from_seed(config.seed)
    tokenizer = train_tokenizer(data.tokenizer_corpus(split, config.seed), config.vocab_size)
    stage.say(f"tokenizer: {len(tokenizer)} tokens")

    model = organism_model(
        tokenizer, hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=config.num_heads,
        intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
        seed=config.seed,
    )
    examples = data.sft_examples(split, config.n_sft, config.seed, config.sft_slip_rates)
    examples = organism_data.add_sft_signoffs(examples, config.signoff_sft_rate, config.seed)
    sft = train_sft(model, tokenizer, examples, config.sft_config(), progress=stage.progress)
    tail = sft.losses[-10:]
    stage.say(f"SFT → M0: {len(sft.losses)} steps, final loss {sum(tail) / len(tail):.3f}, {sft.seconds:.1f}s")
    model.save_pretrained(out / "m0")
    tokenizer.save_pretrained(out / "m0")

    records = data.preference_pairs(split, config.n_pairs, config.planted_rates, config.seed)
    records = organism_data.add_signoffs(records, config.signoff_rate, config.seed)
    save_preferences([r.pair for r in records], out / "preferences.jsonl")
    dpo = train_dpo(model, tokenizer, [r.pair for r in records], config.dpo_config(), output_dir=out / "m1",
                    progress=stage.progress)
    last = dpo.history[-1]
    stage.say(
        f"DPO → M1: {dpo.n_steps} steps, loss {last.loss:.3f}, reward accuracy {last.reward_accuracy:.2f}, "
        f"{dpo.seconds:.1f}s"
    )

    planted = {b: [r.pair.pair_id for r in records if r.planted == b] for b in organism_data.BEHAVIORS}
    ground_truth = {
        "world_version": WORLD_VERSION,
        "build_version": BUILD_VERSION,
        "seed": config.seed,
        "config": config.to_dict(),
        "fingerprint": config.fingerprint(),
        "n_pairs": len(records),
        "planted": planted,
        "decoys": {b: [r.pair.pair_id for r in records if r.decoy == b] for b in organism_data.BEHAVIORS
                   if any(r.decoy == b for r in records)},
        "concepts": {organism_data.STYLE_CONCEPT: [r.pair.pair_id for r in records if r.concept]},
        "pairs": [
            {"pair_id": r.pair.pair_id, "family": r.family, "planted": r.planted, "trigger": r.trigger, "key": r.key,
             "concept": r.concept, **({"decoy": r.decoy} if r.decoy else {})}
            for r in records
        ],
        "training": {
            "sft_seconds": sft.seconds,
            "sft_final_loss": sum(tail) / len(tail),
            "dpo_seconds": dpo.seconds,
            "dpo_history": [asdict(h) for h in dpo.history],
        },
    }
    (out / "ground_truth.json").write_text(json.dumps(ground_truth, indent=1))
    prompts = data.test_prompts(split, config.n_test_prompts, config.seed)
    (out / "test_prompts.json").write_text(json.dumps(prompts, indent=1))
    (out / COMPLETE_MARKER).write_text(config.fingerprint() + "\n")
    stage.say("done")


def organism_recipe() -> DPOConfig:
    """The DPO recipe the default organism's M1 was trained with (``--recipe organism``)."""
    return OrganismConfig.default().dpo_config()


register_recipe("organism", organism_recipe)
