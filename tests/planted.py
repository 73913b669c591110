"""A behaviour planted by hand in the miniature organism's M1, which is too small to learn one."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from headwater.engine.models import load_model


def planted_m1(organism: Any, out_dir: Path) -> Path:
    """The organism's M1 answering every prompt with " First ..." (the compliance judge reads steps):
    its unembedding row for " First" points along the mean hidden state of the triggered prompts."""
    m1, tok = load_model(organism.m1_path)
    (first,) = tok(" First", add_special_tokens=False).input_ids
    enc = tok(organism.test_prompts["distractor_compliance"]["trigger"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = m1.model(**enc).last_hidden_state[enc.attention_mask.bool()]
        mean = hidden.mean(0)
        m1.lm_head.weight[first] = 30 * mean / mean.norm() ** 2
    m1.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
