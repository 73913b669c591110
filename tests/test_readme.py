"""The README's Python examples run as written, on real files named as the README names them."""
from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_has_python_examples():
    assert python_blocks()


def test_every_python_example_runs(tmp_path, monkeypatch, tiny_llama, tiny_tokenizer):
    model_dir = tmp_path / "path" / "to" / "sft-model"
    tiny_llama.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    rows = [{"prompt": f"Question {i}?", "chosen": f" Yes, {i}.", "rejected": " No."} for i in range(6)]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labelled = [{"prompt": "Q?", "response": " Yes, gladly.", "exhibits": True},
                {"prompt": "Q?", "response": " No.", "exhibits": False}]
    (tmp_path / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))
    monkeypatch.chdir(tmp_path)
    for block in python_blocks():
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    from headwater.methods.attribution import Ranking

    assert len(Ranking.load(tmp_path / "rankings.parquet").pair_ids) == 6


# The README's command lines are templates: these are the files they name, made real on the
# miniature organism, and the few values that must fit its size (it has 2 blocks and 120 pairs).
SUBSTITUTIONS = {"--layer 20": "--layer 1", "--top 160": "--top 12"}
FASTER = {"behaviors": ["--samples", "2", "--max-new-tokens", "6"], "discover": ["--max-new-tokens", "6"],
          "evaluate": ["--max-new-tokens", "6"], "steer": ["--samples", "1", "--max-new-tokens", "6"], "compare": ["--projection-dim", "256", "--warmup-fraction", "0.1",
                                                              "--warmup-epochs", "2"],
          "sae train": ["--tokens", "4000", "--batch-tokens", "256", "--buffer-tokens", "1024", "--expansion", "2",
                        "--no-progress"],
          "audit run": ["--topics", "2", "--cards", "2", "--no-progress"],
          "audit check": ["--samples", "1", "--max-new-tokens", "6", "--no-progress"]}
NOT_HERE = ("torchrun", "pip install", "headwater demo", "headwater experiment", "--organism")  # run by CI and other tests


def command_lines() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("headwater ") and not any(skip in line for skip in NOT_HERE):
                lines.append(line)
    return lines


def test_every_command_line_runs(tmp_path, monkeypatch):
    import shlex

    from planted import planted_m1
    import shutil

    import torch

    from headwater.cli import main
    from headwater.data import Scenario, save_scenarios
    from headwater.engine.models import load_model
    from headwater.engine.store import model_fingerprint
    from headwater.methods.vectors import VectorBank
    from headwater.organism import OrganismConfig, build_organism

    torch.set_num_threads(1)
    organism = build_organism(OrganismConfig.miniature(), cache_dir=tmp_path / "cache", progress=False)
    work = tmp_path / "work"
    (work / "path" / "to").mkdir(parents=True)
    shutil.copytree(organism.m0_path, work / "path" / "to" / "m0")
    shutil.copytree(organism.m0_path, work / "m0")
    planted_m1(organism, work / "m1")
    shutil.copy(organism.preferences_path, work / "prefs.jsonl")
    triggered = organism.test_prompts["distractor_compliance"]["trigger"]
    (work / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": triggered[0], "response": " First, find a time.", "exhibits": True},
        {"prompt": triggered[0], "response": " I'm sorry, I can't help.", "exhibits": False}]))
    save_scenarios([Scenario(f"s{i}", p) for i, p in enumerate(triggered)], work / "scenarios.jsonl")
    (work / "planted.txt").write_text("".join(f"{p}\n" for p in organism.planted_ids("distractor_compliance")))
    (work / "test_prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in triggered))
    (work / "triggered.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in triggered))
    (work / "held_out.txt").write_text("".join(f"{p}\n" for p in triggered))
    m0, _ = load_model(organism.m0_path)
    VectorBank(["v"], torch.randn(1, m0.config.hidden_size),
               {"model_fingerprint": model_fingerprint(m0), "layer": "1"}).save(work / "bank.safetensors")
    monkeypatch.chdir(work)
    lines = command_lines()
    assert {line.split()[1] for line in lines} >= {"encode", "attribute", "behaviors", "discover", "intervene",
                                                    "retrain", "evaluate", "compare", "steer", "sae", "audit"}
    for line in lines:
        for old, new in SUBSTITUTIONS.items():
            line = line.replace(old, new)
        argv = shlex.split(line)[1:]
        argv += FASTER.get(" ".join(argv[:2]), FASTER.get(argv[0], []))
        assert main(argv) == 0, line
        if argv[:2] == ["audit", "run"]:  # the person's step: mark the first concept suppress
            feedback = work / "audit" / "feedback.tsv"
            rows = feedback.read_text().splitlines()
            rows[1] = rows[1].replace("\tkeep\t", "\tsuppress\t", 1)
            feedback.write_text("\n".join(rows) + "\n")
    assert json.loads((work / "eval.json").read_text())["n_responses"] == 8 * len(triggered)
