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
