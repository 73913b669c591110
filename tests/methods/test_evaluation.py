"""Bootstrap intervals against known binomial cases; evaluation from real generations; the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from headwater.engine.tokenization import TokenizationSettings
import headwater.organism  # noqa: F401  (registers the organism:<behaviour> judges)
from headwater.data import load_prompts
from headwater.methods.evaluation import bootstrap_ci, evaluate_model, rate_with_ci
from headwater.methods.judge_registry import resolve_judge
from headwater.methods.judges import Judge
from headwater.cli import build_parser


def _normal_half_width(p: float, n: int) -> float:
    return 1.959964 * math.sqrt(p * (1 - p) / n)


def test_bootstrap_matches_the_binomial_interval():
    # 600 of 2000 responses: the normal approximation is excellent at this size.
    flags = np.zeros(2000, bool)
    flags[:600] = True
    low, high = bootstrap_ci(flags, n_boot=4000, seed=1)
    half = _normal_half_width(0.3, 2000)
    assert low == pytest.approx(0.3 - half, abs=0.15 * half)
    assert high == pytest.approx(0.3 + half, abs=0.15 * half)


def test_grouped_bootstrap_counts_prompts_not_samples():
    # 100 prompts x 20 samples; 30 prompts always exhibit, 70 never: only 100 independent units.
    groups = np.repeat(np.arange(100), 20)
    flags = groups < 30
    low, high = bootstrap_ci(flags, groups=list(groups), n_boot=4000, seed=2)
    half = _normal_half_width(0.3, 100)
    assert low == pytest.approx(0.3 - half, abs=0.15 * half)
    assert high == pytest.approx(0.3 + half, abs=0.15 * half)
    # Resampling responses instead would claim an interval sqrt(20) times narrower.
    naive_low, naive_high = bootstrap_ci(flags, n_boot=4000, seed=2)
    assert (high - low) > 3 * (naive_high - naive_low)


def test_grouped_bootstrap_with_independent_samples_is_like_ungrouped():
    rng = np.random.default_rng(0)
    flags = rng.random(3000) < 0.2
    groups = [f"prompt {i // 10}" for i in range(3000)]
    grouped = bootstrap_ci(flags, groups=groups, seed=3)
    plain = bootstrap_ci(flags, seed=3)
    assert grouped[1] - grouped[0] == pytest.approx(plain[1] - plain[0], rel=0.2)


def test_bootstrap_degenerate_and_bad_inputs():
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least one outcome"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="3 flags but 2 group labels"):
        bootstrap_ci([1, 0, 1], groups=[0, 1])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1, 0], alpha=1.5)
    with pytest.raises(ValueError, match="0/1 outcomes"):
        bootstrap_ci([2, 0])


def test_rate_with_ci_counts():
    result = rate_with_ci([[True, False], [False, False], [True, True]], judge="j")
    assert (result.rate, result.n_exhibited, result.n_responses, result.n_prompts) == (0.5, 3, 6, 3)
    assert result.per_prompt == [0.5, 0.0, 1.0]
    assert result.ci_low <= 0.5 <= result.ci_high
    with pytest.raises(ValueError, match="at least one judged response"):
        rate_with_ci([[True], []])


class LetterJudge(Judge):
    """Exhibited when the response contains the letter ``e`` (enough text to judge random output)."""

    name = "letter_e"

    def score(self, prompt, response):
        return float("e" in response)


def test_evaluate_model_from_real_generations(tiny_llama, tiny_tokenizer):
    prompts = ["How do I bake bread?", "Tell me about the sea.", "What is the capital of France?"]
    judge = LetterJudge()
    result = evaluate_model(tiny_llama, tiny_tokenizer, prompts, judge, n=3, temperature=1.0, max_new_tokens=6,
                            settings=TokenizationSettings(format="raw"), seed=0)
    assert result.n_prompts == 3 and result.n_responses == 9
    flags = [[judge.exhibits(p, r) for r in rs] for p, rs in zip(prompts, result.responses)]
    assert result.exhibited == flags
    assert result.rate == pytest.approx(sum(map(sum, flags)) / 9)
    assert result.ci_low <= result.rate <= result.ci_high
    again = evaluate_model(tiny_llama, tiny_tokenizer, prompts, judge, n=3, temperature=1.0, max_new_tokens=6,
                           settings=TokenizationSettings(format="raw"), seed=0)
    assert again.responses == result.responses and again.ci_low == result.ci_low


def test_load_prompts(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert load_prompts(tmp_path / "p.txt") == ["first", "second"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": [{"role": "user", "content": "b"}]}\n')
    assert load_prompts(tmp_path / "p.jsonl") == ["a", [{"role": "user", "content": "b"}]]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a non-empty 'prompt'"):
        load_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.txt")


def test_resolve_judge():
    assert resolve_judge("organism:sycophancy").name == "sycophancy"
    with pytest.raises(ValueError, match="no organism judge 'toxicity'"):
        resolve_judge("organism:toxicity")
    with pytest.raises(ValueError, match="unknown judge 'llm:gpt'"):
        resolve_judge("llm:gpt")


def test_cli_evaluate_writes_json(tmp_path, tiny_llama, tiny_tokenizer, capsys):
    tiny_llama.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    (tmp_path / "prompts.txt").write_text("How do I bake bread? Answer without commas.\nTell me about the sea.\n")
    parser = build_parser()
    args = parser.parse_args([
        "evaluate", "--model", str(tmp_path / "m"), "--prompts", str(tmp_path / "prompts.txt"),
        "--judge", "organism:distractor_compliance", "--samples", "2", "--temperature", "0.7",
        "--max-new-tokens", "4", "--json", str(tmp_path / "out" / "eval.json"),
    ])
    assert args.func(args) == 0
    assert "distractor_compliance:" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["n_responses"] == 4 and saved["n_prompts"] == 2 and len(saved["responses"]) == 2
    assert saved["ci_low"] <= saved["rate"] <= saved["ci_high"]
