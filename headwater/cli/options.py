"""Options shared by several commands, each declared once, and the helpers that read them.

A command module calls the ``add_*`` groups it needs; the matching readers (:func:`settings_from`,
:func:`judge_from`, :func:`open_organism`) turn the parsed values into the API's objects, so the
same option means the same thing in every command.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from headwater.engine.tokenization import TokenizationSettings
from headwater.methods.judge_registry import resolve_judge
from headwater.methods.judges import Judge

DTYPES = ["auto", "float32", "bfloat16", "float16"]
JUDGE_HELP = (
    "the judge: organism:<behaviour> (the organism's rule-based judges), regex:<pattern> (exhibits when the "
    "pattern matches the response), or module.path:ClassName (your own headwater Judge subclass)"
)


def add_model_options(p: argparse.ArgumentParser, *, flag: str = "--model", required: bool = True,
                      what: str = "the model (M0)", dtype: bool = True) -> None:
    """``--model`` (or ``flag``), ``--dtype``, ``--device``."""
    p.add_argument(flag, required=required, type=Path if flag != "--model" else str,
                   help=f"{what}: a local transformers model directory or a .gguf file")
    if dtype:
        p.add_argument("--dtype", default="auto", choices=DTYPES, help="weights' dtype (auto: as saved)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")


def add_layer_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", type=int, default=None,
                   help="decoder block ℓ to read (1-based, negative counts from the end; default: 5/8 of the depth)")


def add_batch_tokens_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens-per-batch", type=int, default=16384,
                   help="padded tokens in one forward pass when reading activations")


def add_tokenization_options(p: argparse.ArgumentParser, *, fmt: str = "auto", lengths: bool = True) -> None:
    """``--format`` (how text becomes tokens), and with ``lengths`` ``--max-length``, ``--overlong``."""
    p.add_argument("--format", choices=["auto", "raw", "chat"], default=fmt,
                   help="how prompts and responses become tokens. raw: prompt text + response text (the paper); "
                        "chat: the model's chat template (what TRL trains on); auto: chat for message lists, "
                        f"raw for strings (default: {fmt})")
    if lengths:
        p.add_argument("--max-length", type=int, default=None,
                       help="most tokens of prompt + response (default: no limit)")
        p.add_argument("--overlong", choices=["truncate", "skip", "error"], default="truncate",
                       help="what to do with sequences over --max-length")


def settings_from(args: argparse.Namespace) -> TokenizationSettings:
    """The tokenisation settings of :func:`add_tokenization_options`."""
    return TokenizationSettings(format=args.format, max_length=getattr(args, "max_length", None),
                                overlong=getattr(args, "overlong", "truncate"))


def add_sampling_options(p: argparse.ArgumentParser, *, samples: int, samples_help: str,
                         batch_size: bool = True) -> None:
    """``--samples``, ``--temperature``, ``--max-new-tokens``, ``--seed`` (and ``--batch-size``)."""
    p.add_argument("--samples", type=int, default=samples, help=f"{samples_help} (default {samples})")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy; default 0.7)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="the longest sampled response (default 64)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    if batch_size:
        p.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (default 64)")


def add_judge_option(p: argparse.ArgumentParser, *, required: bool) -> None:
    """``--judge`` and the options of the LLM judges (``openai:<model>``, ``hf:<path>``)."""
    p.add_argument("--judge", required=required, default=None, help=JUDGE_HELP)
    p.add_argument("--judge-url", default=None,
                   help="openai: judges: the server's base URL, e.g. http://127.0.0.1:8000/v1 (the key comes from "
                        "$HEADWATER_JUDGE_API_KEY or $OPENAI_API_KEY)")
    p.add_argument("--judge-rubric", default="yesno",
                   help="LLM judges: harmfulness (0-100, exhibited at 50), yesno (with --judge-behavior), or a file "
                        "holding {prompt} and {response} answered YES or NO (default yesno)")
    p.add_argument("--judge-behavior", default=None,
                   help="LLM judges with the yesno rubric: the behaviour in one line, e.g. \"agrees with a wrong claim\"")
    p.add_argument("--judge-concurrency", type=int, default=8, help="openai: judges: requests in flight (default 8)")


def judge_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"url": getattr(args, "judge_url", None), "rubric": getattr(args, "judge_rubric", None),
            "behavior": getattr(args, "judge_behavior", None), "concurrency": getattr(args, "judge_concurrency", None),
            "device": getattr(args, "device", None)}


def judge_from(spec: str, args: argparse.Namespace | None = None) -> Judge:
    """The judge of a ``--judge`` spec with the command's judge options; the organism is imported
    first, which registers its judges."""
    import headwater.organism  # noqa: F401  (registers organism:<behaviour>)

    return resolve_judge(spec, judge_options(args) if args is not None else None)


def add_organism_options(p: argparse.ArgumentParser) -> None:
    """``--preset``, ``--seed`` and ``--cache-dir`` of the commands that build the organism."""
    p.add_argument("--preset", choices=["default", "miniature", "small", "audit", "hard", "hard-miniature"], default="default",
                   help="organism size (miniature: seconds, for smoke tests; too small to learn the behaviours; "
                        "small: about a minute, learns them; audit: the default plus a planted sign-off concept "
                        "for the concept audit; hard: the benchmark organism, where planted pairs generalise, decoys "
                        "imitate them and no keyword finds them; hard-miniature: its world at the miniature's size, for tests)")
    p.add_argument("--seed", type=int, default=0, help="the organism seed (also seeds sampling and rankings)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the organism is built and cached (default $HEADWATER_CACHE or ~/.cache/headwater)")


def open_organism(spec: str) -> Any:
    """An organism from a directory, or a preset name (built or reused from the cache)."""
    from headwater.organism import PRESETS, OrganismConfig, build_organism, load_organism

    if spec in PRESETS and not Path(spec).exists():
        return build_organism(OrganismConfig.preset(spec))
    return load_organism(spec)


def add_overwrite_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} already in --out")


def add_on_error_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="malformed rows of the preference data: stop with an error naming the row, or skip "
                        "them and record each with its reason")
