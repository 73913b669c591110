"""Kill a writer at random instants: every reader then sees the complete old output, the complete
new one, or a clear error; never a truncated file read as if it were whole.

A child process rewrites a dataset, two rankings, an intervention and a saved model over and
over, alternating between two versions; the test kills it with SIGKILL at a random moment and
reads everything back.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

WRITER = r"""
import sys, torch
from pathlib import Path
from tiny_models import build_tiny_llama, build_tiny_tokenizer
from headwater.data import make_pair, save_preferences, PreferenceDataset
from headwater.engine import atomic
from headwater.methods.attribution import Ranking
from headwater.methods.interventions import write_intervention

root = Path(sys.argv[1])
tok = build_tiny_tokenizer()
model = build_tiny_llama(tok)
versions = []
for v in range(2):
    pairs = PreferenceDataset([make_pair(f"Q{v}-{i}?", f" yes {i}" * (50 + v), " no") for i in range(300 + 200 * v)])
    versions.append((pairs, Ranking.from_scores(pairs.ids, torch.rand(len(pairs)), f"v{v}")))
first = True
while True:
    for v, (pairs, ranking) in enumerate(versions):
        save_preferences(pairs, root / "prefs.jsonl")
        save_preferences(pairs, root / "prefs.parquet")
        ranking.save(root / "rank.parquet")
        ranking.save(root / "rank.jsonl")
        write_intervention(root / "iv", pairs, {"mode": "none", "version": v}, formats=("jsonl", "parquet"),
                           overwrite=True)
        with torch.no_grad():
            model.model.norm.weight.fill_(float(v + 1))
        with atomic.atomic_directory(root / "model") as staging:
            model.save_pretrained(staging)
            atomic.write_json(staging / "version.json", {"version": v})
        if first:
            print("ready", flush=True)
            first = False
"""


def _expected(version: int) -> tuple[list[str], str]:
    from headwater.data import PreferenceDataset, make_pair

    pairs = PreferenceDataset([make_pair(f"Q{version}-{i}?", f" yes {i}" * (50 + version), " no")
                               for i in range(300 + 200 * version)])
    return pairs.ids, f"v{version}"


def _check(root: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from headwater.data import load_preferences
    from headwater.methods.attribution import Ranking
    from headwater.methods.interventions import read_intervention

    versions = [_expected(0), _expected(1)]
    for name in ("prefs.jsonl", "prefs.parquet"):
        assert load_preferences(root / name).ids in [ids for ids, _ in versions], name
    for name in ("rank.jsonl", "rank.parquet"):
        ranking = Ranking.load(root / name)
        ids = versions[int(ranking.method[1])][0]
        assert sorted(ranking.pair_ids) == sorted(ids), name
    try:
        dataset, manifest = read_intervention(root / "iv")
    except ValueError as err:  # killed between removing the old manifest and writing the new one
        assert "interrupted" in str(err)
    else:
        assert dataset.ids == versions[manifest["version"]][0]
    model_dir = root / "model"
    if model_dir.exists():  # absent only for the instant between two renames
        version = json.loads((model_dir / "version.json").read_text())["version"]
        weights = load_file(str(model_dir / "model.safetensors"))  # the bytes on disk, as written
        assert float(weights["model.norm.weight"][0]) == version + 1, (
            version, float(weights["model.norm.weight"][0]), sorted(p.name for p in model_dir.iterdir()))
        AutoModelForCausalLM.from_pretrained(model_dir)  # and a complete model directory


@pytest.mark.slow
def test_killing_a_writer_never_leaves_a_half_output(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    rng = random.Random(0)
    kills = 0
    for attempt in range(4):
        root = tmp_path / f"run{attempt}"
        root.mkdir()
        log = (root.parent / f"writer{attempt}.log").open("w")
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], env=env, stdout=subprocess.PIPE,
                                 stderr=log, text=True)
        try:
            lines = iter(child.stdout.readline, "")  # the tokenizer's trainer prints blank lines first
            assert any(line.strip() == "ready" for line in lines), (root.parent / f"writer{attempt}.log").read_text()
            time.sleep(rng.uniform(0.0, 0.8))
            child.send_signal(signal.SIGKILL)
            kills += 1
        finally:
            child.kill()
            child.wait(timeout=30)
            log.close()
        _check(root)
        outputs = [p for p in root.rglob("*") if p.is_file() and p.name != ".lock"
                   and not any(part.startswith(".") and part.endswith(".tmp") for part in p.relative_to(root).parts)]
        assert not [p for p in outputs if p.stat().st_size == 0], "no empty output file (temporary names aside)"
    assert kills == 4
