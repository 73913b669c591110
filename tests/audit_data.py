"""Audit test data: a small preference set for the command-line tests (48 pairs over 8 topics; a
third of the chosen responses end with a stylistic marker the rejected ones never have), and a
feature directory built by hand from given pooled values."""
from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

from headwater.audit.features import FeatureStore
from headwater.engine import atomic

TOPICS = ["bread", "the sea", "rivers", "chess", "gardens", "music", "trains", "stars"]


def audit_rows() -> list[dict[str, str]]:
    rows = []
    for i in range(48):
        topic = TOPICS[i % len(TOPICS)]
        chosen = f" Here is what I know about {topic}, part {i}."
        rejected = f" I do not know much about {topic}."
        if i % 3 == 0:
            chosen += " Great question!!!"
        rows.append({"prompt": f"Tell me about {topic} ({i}).", "chosen": chosen, "rejected": rejected})
    return rows


def store_from(tmp_path, chosen: np.ndarray, rejected: np.ndarray, part_rows: int = 64,
               prompts: np.ndarray | None = None) -> FeatureStore:
    """A feature directory holding the given pooled values ([n, d_sae] per side) and prompt
    vectors ([n, 4], random by default), in parts."""
    n, d_sae = chosen.shape
    prompt = torch.randn(n, 4) if prompts is None else torch.tensor(prompts, dtype=torch.float32)
    root = tmp_path / "features"
    root.mkdir()
    parts = []
    for k, start in enumerate(range(0, n, part_rows)):
        stop = min(n, start + part_rows)
        rows = np.empty((2 * (stop - start), d_sae))
        rows[0::2], rows[1::2] = chosen[start:stop], rejected[start:stop]
        dense = torch.tensor(rows, dtype=torch.float32)
        nz = dense.nonzero()
        counts = torch.bincount(nz[:, 0], minlength=dense.shape[0])
        name = f"part-{k:05d}.safetensors"
        save_file({"indptr": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
                   "indices": nz[:, 1].to(torch.int32), "mean": dense[nz[:, 0], nz[:, 1]],
                   "max": dense[nz[:, 0], nz[:, 1]], "tokens": torch.full((dense.shape[0],), 5, dtype=torch.int32),
                   "positions": torch.arange(start, stop), "prompt": prompt[start:stop]}, str(root / name))
        parts.append({"file": name, "start": start, "stop": stop, "rows": stop - start,
                      "sha256": atomic.sha256_file(root / name)})
    atomic.write_json(root / "features.json", {
        "format": "headwater-response-features", "format_version": 1, "layer": 1, "d_sae": d_sae, "d_in": 4,
        "parts": parts, "pair_ids": [f"p{i}" for i in range(n)], "skipped_pairs": [], "n_tokens": 10 * n,
        "dataset_fingerprint": "x", "n_pairs": n})
    return FeatureStore.open(root)
