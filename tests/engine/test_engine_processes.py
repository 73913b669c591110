"""Real processes: a run killed with SIGKILL and resumed, and a run split across two torchrun ranks,
both end with the store of one uninterrupted single-process run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headwater.data import load_preferences
from headwater.engine.engine import Engine
from headwater.engine.models import load_model
from headwater.engine.store import VectorStore

from test_engine import make_pairs, one_thread  # noqa: F401 (autouse fixture)

N_PAIRS, SHARD_PAIRS, LAYER = 40, 5, 2

# The run in a child process. After each durable shard it prints the shard's index; with
# HEADWATER_TEST_SLOW_SHARDS set it then waits a little, so that the test can kill it mid-run.
WORKER = """
import os, sys, time
from headwater.data import load_preferences
from headwater.engine.models import load_model
from headwater.engine.engine import Engine

model_dir, data, out, resume = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "resume"

def report(record):
    print(f"shard {record.index}", flush=True)
    if os.environ.get("HEADWATER_TEST_SLOW_SHARDS"):
        time.sleep(0.3)

engine = Engine(*load_model(model_dir), layer=%d, max_tokens_per_batch=96, model_name=model_dir)
store = engine.encode_pairs(load_preferences(data), out, shard_pairs=%d, resume=resume, progress=False, on_shard=report)
print("done", store.summary["shards_resumed"], flush=True)
""" % (LAYER, SHARD_PAIRS)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    from tiny_models import build_tiny_llama

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the child processes (OMP_NUM_THREADS=1)

    root = tmp_path_factory.mktemp("processes")
    model_dir = root / "m0"
    build_tiny_llama(tiny_tokenizer).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data = root / "prefs.jsonl"
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in make_pairs(N_PAIRS, seed=21)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "worker.py").write_text(WORKER)
    # The uninterrupted single-process run every other run must reproduce.
    engine = Engine(*load_model(model_dir), layer=LAYER, max_tokens_per_batch=96, model_name=str(model_dir))
    reference = engine.encode_pairs(load_preferences(data), root / "reference", shard_pairs=SHARD_PAIRS, progress=False)
    torch.set_num_threads(threads)
    return root, model_dir, data, reference


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _files(store_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store_dir.iterdir())}


def test_sigkill_mid_run_then_resume_is_bit_identical(setup):
    root, model_dir, data, reference = setup
    out = root / "killed"
    worker = [sys.executable, str(root / "worker.py"), str(model_dir), str(data), str(out)]
    child = subprocess.Popen(
        worker + ["fresh"], stdout=subprocess.PIPE, text=True, env={**_env(), "HEADWATER_TEST_SLOW_SHARDS": "1"}
    )
    lines = []
    for line in child.stdout:  # wait until three shards are durable, then kill without warning
        lines.append(line.strip())
        if len(lines) == 3:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL and lines == ["shard 0", "shard 1", "shard 2"]
    n_shards = N_PAIRS // SHARD_PAIRS
    records = sorted(out.glob("shard-*.json"))
    assert (out / "run.json").exists() and not (out / "manifest.json").exists()
    assert 3 <= len(records) < n_shards  # really killed mid-run

    finished = subprocess.run(worker + ["resume"], capture_output=True, text=True, env=_env(), timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    done = finished.stdout.strip().splitlines()[-1].split()
    assert done[0] == "done" and int(done[1]) == len(records)
    assert _files(out) == _files(reference.root)  # manifest, ids and every shard byte for byte


def _torchrun_encode(model_dir: Path, data: Path, out: Path, shard_pairs: int) -> tuple[subprocess.CompletedProcess, dict]:
    """``headwater encode`` under torchrun with two CPU ranks; (the finished process, rank 0's summary)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None, "torchrun (installed with torch) is needed"
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "headwater", "encode", "--model", str(model_dir),
         "--data", str(data), "--layer", str(LAYER), "--out", str(out), "--shard-pairs", str(shard_pairs),
         "--max-tokens-per-batch", "96", "--no-progress"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads(result.stdout[result.stdout.index("{"):])


def test_two_torchrun_ranks_give_the_vectors_of_one_process(setup):
    root, model_dir, data, reference = setup
    out = root / "two_ranks"
    _, summary = _torchrun_encode(model_dir, data, out, SHARD_PAIRS)
    assert summary["world_size"] == 2 and summary["n_encoded"] == N_PAIRS
    # Rank 0 reports the run's throughput: the pairs of both ranks, not only its own.
    assert summary["pairs_computed"] == N_PAIRS
    store = VectorStore.open(out)
    assert store.manifest["world_size"] == 2 and store.pair_ids == reference.pair_ids
    assert not list(out.glob("shard-*.json")) and not (out / "run.json").exists()  # one manifest, no leftovers
    assert torch.equal(store.vectors(), reference.vectors())  # the same batches, bit for bit
    same_keys = {k: v for k, v in store.manifest.items() if k not in ("shards", "world_size")}
    assert same_keys == {k: v for k, v in reference.manifest.items() if k not in ("shards", "world_size")}


def test_a_rank_without_a_shard_is_named(setup):
    root, model_dir, data, _ = setup
    result, summary = _torchrun_encode(model_dir, data, root / "one_shard_two_ranks", N_PAIRS)
    assert f"rank 1 of 2 has no shard to encode ({N_PAIRS} pairs in 1 shard(s) of {N_PAIRS})" in result.stderr
    assert f"--shard-pairs) to at most {N_PAIRS // 2}" in result.stderr
    assert summary["n_encoded"] == summary["pairs_computed"] == N_PAIRS
