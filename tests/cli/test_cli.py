"""`headwater encode` and `headwater attribute` end to end on a saved tiny model and real files."""
from __future__ import annotations

import json

import pytest

from headwater.methods.attribution import Ranking
from headwater.cli import main
from headwater.engine.store import read_store


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {"prompt": "How do I bake bread?", "chosen": " Mix flour and water.", "rejected": " No."},
    {"prompt": "Reply in lowercase: tell me about the sea.", "chosen": " the sea is blue.", "rejected": " The Sea."},
    {"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " I cannot help."},
]


def test_encode_then_attribute(tmp_path, saved_model, capsys):
    data = _write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    store_dir = tmp_path / "store"
    assert main(["encode", "--model", str(saved_model), "--data", str(data), "--layer", "-1", "--out", str(store_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_encoded"] == 3 and summary["layer"] == 3
    store = read_store(store_dir)
    assert store.vectors.shape == (3, 32) and store.manifest["layer"] == 3

    probe = _write_jsonl(tmp_path / "probe.jsonl", [
        {"prompt": "Q:", "response": " Sure, here it is.", "exhibits": True},
        {"prompt": "Q:", "response": " I cannot help.", "exhibits": False},
    ])
    planted = tmp_path / "planted.txt"
    planted.write_text(store.pair_ids[0] + "\n")
    out = tmp_path / "rankings.parquet"
    assert main(["attribute", "--vectors", str(store_dir), "--probe-data", str(probe), "--out", str(out),
                 "--planted", str(planted)]) == 0
    ranking = Ranking.load(out)
    assert sorted(ranking.pair_ids) == sorted(store.pair_ids)
    assert "precision_at_n" in capsys.readouterr().out


def test_encode_reports_a_malformed_row_and_skips_with_policy(tmp_path, saved_model, capsys):
    data = _write_jsonl(tmp_path / "prefs.jsonl", ROWS[:2] + [{"prompt": "Q", "chosen": " a"}])
    args = ["encode", "--model", str(saved_model), "--data", str(data), "--out", str(tmp_path / "s")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "prefs.jsonl" in err and "3" in err and "rejected" in err
    assert main(args + ["--on-error", "skip"]) == 0
    manifest = read_store(tmp_path / "s").manifest
    assert len(manifest["skipped_rows"]) == 1 and "rejected" in manifest["skipped_rows"][0]["reason"]


def test_attribute_refuses_a_corrupt_store(tmp_path, saved_model, capsys):
    data = _write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    main(["encode", "--model", str(saved_model), "--data", str(data), "--out", str(tmp_path / "s")])
    (tmp_path / "s" / "pair_ids.txt").write_text("tampered\n")
    bank = tmp_path / "bank.safetensors"
    from headwater.methods.vectors import VectorBank
    import torch

    VectorBank(["b"], torch.randn(1, 32)).save(bank)
    assert main(["attribute", "--vectors", str(tmp_path / "s"), "--bank", str(bank), "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "checksum" in capsys.readouterr().err


def test_encode_refuses_an_existing_store_and_resumes_it(tmp_path, saved_model, capsys):
    data = _write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    args = ["encode", "--model", str(saved_model), "--data", str(data), "--layer", "2", "--out", str(tmp_path / "s"),
            "--shard-pairs", "2", "--max-tokens-per-batch", "64", "--store-dtype", "float16", "--no-progress"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["shards"] == 2 and first["n_encoded"] == 3 and first["prompt_sharing"] == "packed"
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["shards_resumed"] == 2
    other_layer = [("1" if a == "2" and args[i - 1] == "--layer" else a) for i, a in enumerate(args)]
    assert main(other_layer + ["--resume"]) == 2  # same directory, another layer
    assert "layer: store has 2, expected 1" in capsys.readouterr().err
    assert read_store(tmp_path / "s").vectors.dtype.itemsize == 2


@pytest.mark.parametrize("command", ["discover", "intervene", "retrain", "evaluate", "experiment"])
def test_every_method_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and f"headwater {command}" in capsys.readouterr().out


def test_intervene_through_main_names_the_missing_file(tmp_path, capsys):
    code = main(["intervene", "--data", str(tmp_path / "missing.jsonl"), "--rankings", str(tmp_path / "r.jsonl"),
                 "--top", "1", "--out", str(tmp_path / "out")])
    assert code == 2 and "missing.jsonl" in capsys.readouterr().err


def test_method_commands_are_wired_into_the_main_parser(tmp_path, capsys):
    # `discover` registers itself and is dispatched by main(); a missing input is a clear error.
    code = main(["discover", "--vectors", str(tmp_path / "none"), "--m1", str(tmp_path / "m1"),
                 "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "d.json")])
    assert code == 2 and "p.txt does not exist" in capsys.readouterr().err


def test_attribute_refuses_behaviour_vectors_of_another_model_or_layer(tmp_path, saved_model, capsys):
    import torch

    from headwater.methods.vectors import VectorBank

    data = _write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    assert main(["encode", "--model", str(saved_model), "--data", str(data), "--layer", "2", "--out", str(tmp_path / "s")]) == 0
    manifest = read_store(tmp_path / "s").manifest
    capsys.readouterr()
    out = str(tmp_path / "r.jsonl")
    for meta, ok in [
        ({"model_fingerprint": manifest["model_fingerprint"], "layer": "2"}, True),
        ({}, True),  # vectors without provenance are taken as they are
        ({"model_fingerprint": "0" * 16, "layer": "2"}, False),
        ({"model_fingerprint": manifest["model_fingerprint"], "layer": "3"}, False),
    ]:
        bank = tmp_path / "bank.safetensors"
        VectorBank(["b"], torch.randn(1, 32), meta).save(bank)
        code = main(["attribute", "--vectors", str(tmp_path / "s"), "--bank", str(bank), "--out", out])
        assert code == (0 if ok else 2), meta
        if not ok:
            assert "does not match" in capsys.readouterr().err


def test_planted_ids_are_checked_and_the_metrics_are_valid_json(tmp_path, saved_model, capsys):
    data = _write_jsonl(tmp_path / "prefs.jsonl", ROWS)
    store_dir = tmp_path / "store"
    assert main(["encode", "--model", str(saved_model), "--data", str(data), "--out", str(store_dir)]) == 0
    capsys.readouterr()
    probe = _write_jsonl(tmp_path / "probe.jsonl", [
        {"prompt": "Q:", "response": " Sure, here it is.", "exhibits": True},
        {"prompt": "Q:", "response": " I cannot help.", "exhibits": False},
    ])
    ids = read_store(store_dir).pair_ids
    planted = tmp_path / "planted.txt"
    args = ["attribute", "--vectors", str(store_dir), "--probe-data", str(probe), "--out", str(tmp_path / "r.parquet"),
            "--planted", str(planted), "--data", str(data)]
    planted.write_text("\n".join(ids + ["0000000000000000"]) + "\n")  # every pair planted, plus an unknown id
    assert main(args) == 0
    out, err = capsys.readouterr()
    metrics = json.loads(out[out.index("{"):], parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert metrics["auroc"] is None and metrics["n_planted_unknown"] == 1 and "1 of the 4 planted ids" in err
    assert "How do I bake bread?" in out or "capital of France" in out  # --data shows the pairs' prompts
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "r.parquet").column("method").to_pylist() == ["activation"] * 3
    planted.write_text("0000000000000000\n")
    assert main(args) == 2
    assert "none of the 1 planted ids is a ranked pair" in capsys.readouterr().err
