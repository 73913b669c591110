"""`headwater sae train` and `headwater audit` end to end on a saved tiny model and a real file."""
from __future__ import annotations

import json
import math

import pytest

from headwater.audit.cards import DECISIONS, read_feedback, write_feedback_template
from headwater.audit.sae_io import load_sae, sae_metadata, save_sparsify
from headwater.cli import main
from headwater.workflows.audit import hook_name, layer_from_hook

from audit_data import audit_rows

def _rows():
    return audit_rows()


def test_sae_train_then_audit(tmp_path, saved_model, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()) + '{"prompt": "Q:", "chosen": "", "rejected": ""}\n')
    sae_dir = tmp_path / "sae"
    train = ["sae", "train", "--model", str(saved_model), "--data", str(data), "--layer", "2", "--out", str(sae_dir),
             "--format", "raw", "--on-error", "skip", "--d-sae", "64", "--k", "4", "--tokens", "6000",
             "--batch-tokens", "128", "--buffer-tokens", "512", "--lr", "0.01", "--no-progress"]
    assert main(train) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layer"] == 2 and summary["tokens"] == 6000 and summary["d_sae"] == 64
    assert 0 <= summary["fvu"] < 1 and summary["architecture"] == "batchtopk"
    meta = sae_metadata(sae_dir)
    assert meta["hook_name"] == "blocks.1.hook_resid_post" and meta["headwater"]["layer"] == 2
    assert load_sae(sae_dir).architecture == "jumprelu"  # BatchTopK's inference form, as SAELens saves it
    assert not (sae_dir / ".training-checkpoint").exists()
    assert main(train) == 0  # the same SAE again: reused, not retrained
    assert json.loads(capsys.readouterr().out)["reused"] is True

    out = tmp_path / "audit"
    audit = ["audit", "run", "--model", str(saved_model), "--data", str(data), "--sae", str(sae_dir), "--out", str(out),
             "--format", "raw", "--topics", "3", "--cards", "2", "--no-progress", "--on-error", "skip"]
    assert main(audit) == 0
    printed = capsys.readouterr().out
    assert "48 pairs" in printed and "concept" in printed
    doc = json.loads((out / "audit.json").read_text())
    assert doc["n_pairs"] == 48 and doc["sae"]["layer"] == 2 and len(doc["topics"]) == 3
    page = (out / "audit.html").read_text()
    assert "<html" in page and len(doc["cards"]) <= 4 * 2  # --cards per list
    for card in doc["cards"]:
        assert card["examples"] and card["label"]
    # topic concepts: a cluster within one prompt topic, with its topic and its cluster's latents
    assert len(doc["pair_topics"]) == 48 and set(doc["pair_topics"]) <= {0, 1, 2}
    assert doc["topic_concepts"], "the organism-like rows give significant topic concepts"
    clusters = {c["concept"]: c["latents"] for c in doc["clusters"]}
    for row in doc["topic_concepts"]:
        topic, cluster = row["concept"].split("/")
        assert row["kind"] == "topic" and row["topic"] == int(topic[1:]) and row["latents"] == clusters[cluster]
        assert row["n_pairs"] == doc["pair_topics"].count(row["topic"])
    assert "Topic concepts" in page and "within prompt topic" in page
    # response concepts: a response cluster of one topic, its centroids saved beside audit.json
    record = doc["response_clusters"]
    assert record["k"] == 4 and (out / record["file"]).is_file() and len(record["latents"]) == 3
    for row in doc["response_concepts"]:
        topic, cluster = (int(part[1:]) for part in row["concept"].split("/"))
        assert row["kind"] == "response" and row["topic"] == topic and row["latents"] == record["latents"][topic][cluster]
        assert row["n_pairs"] == doc["pair_topics"].count(topic)
    decisions = read_feedback(out / "feedback.tsv")
    listed = (doc["concepts"][:20] + doc["conditional_concepts"][:20] + doc["topic_concepts"][:20]
              + doc["response_concepts"][:20])
    assert {d.decision for d in decisions} <= {"keep"} and [d.concept for d in decisions] == [c["concept"] for c in listed]
    # an edited feedback file is left alone by a second run, which reuses the features
    (out / "feedback.tsv").write_text((out / "feedback.tsv").read_text().replace("\tkeep\t", "\tsuppress\t", 1))
    assert main(audit) == 0
    capsys.readouterr()
    assert read_feedback(out / "feedback.tsv")[0].decision == "suppress"


def test_audit_with_a_sparsify_sae_and_clear_errors(tmp_path, saved_model, capsys):
    from headwater.audit.sae import SparseAutoencoder

    import torch

    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()[:12]))
    sae = SparseAutoencoder(32, 48, architecture="topk", k=3)
    with torch.no_grad():
        sae.W_enc.normal_(generator=torch.Generator().manual_seed(0))
        sae.W_dec.copy_(sae.W_enc.T)
    save_sparsify(sae, tmp_path / "run" / "layers.1")
    out = tmp_path / "audit"
    base = ["audit", "run", "--model", str(saved_model), "--data", str(data), "--format", "raw", "--no-progress",
            "--topics", "2", "--out", str(out)]
    assert main(base + ["--sae", str(tmp_path / "run"), "--sparsify", "--hookpoint", "layers.1"]) == 0
    assert json.loads((out / "audit.json").read_text())["sae"]["layer"] == 2  # layers.1's output is block 2
    capsys.readouterr()
    assert main(base + ["--sae", str(tmp_path / "run"), "--sparsify"]) == 2
    assert "choose one of ['layers.1']" in capsys.readouterr().err
    wrong = SparseAutoencoder(16, 48, architecture="topk", k=3)
    save_sparsify(wrong, tmp_path / "narrow")
    assert main(base + ["--sae", str(tmp_path / "narrow"), "--sparsify", "--layer", "1", "--out",
                        str(tmp_path / "a2")]) == 2
    assert "16-dimensional" in capsys.readouterr().err


def test_hook_names_and_layers():
    assert layer_from_hook(hook_name(5)) == 5
    assert layer_from_hook("blocks.3.hook_resid_pre") == 3 and layer_from_hook("blocks.0.hook_resid_pre") is None
    assert layer_from_hook("layers.6") == 7 and layer_from_hook("model.layers.0") == 1
    assert layer_from_hook("embed_tokens") is None


def test_feedback_file_errors_name_the_line(tmp_path):
    path = tmp_path / "feedback.tsv"
    write_feedback_template([{"concept": "c1", "latents": [3, 4], "d": 0.5}], path, labels={"c1": "'!', 'great'"})
    assert [d.latents for d in read_feedback(path)] == [(3, 4)]
    text = path.read_text()
    for bad, message in [(text.replace("\tkeep\t", "\tdelete\t"), "line 2: decision 'delete'"),
                         (text.replace("3,4", "3,x"), "line 2: latents"),
                         (text + text.splitlines()[1] + "\n", "line 3: concept 'c1' appears twice"),
                         ("concept\tverdict\n", "header")]:
        path.write_text(bad)
        with pytest.raises(ValueError, match=message):
            read_feedback(path)
    assert set(DECISIONS) == {"keep", "suppress", "amplify", "ignore"}


def _sae_and_audit(tmp_path, saved_model, *, topics: int, alpha: float = 0.5):
    """The rows as a file, an SAE trained on them at block 2 and their audit (by default at a lenient
    FDR, so the small data gives response concepts): (data, SAE directory, audit directory)."""
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    sae_dir, out = tmp_path / "sae", tmp_path / "audit"
    assert main(["sae", "train", "--model", str(saved_model), "--data", str(data), "--layer", "2", "--out",
                 str(sae_dir), "--format", "raw", "--d-sae", "64", "--k", "4", "--tokens", "6000", "--batch-tokens",
                 "128", "--buffer-tokens", "512", "--lr", "0.01", "--no-progress"]) == 0
    assert main(["audit", "run", "--model", str(saved_model), "--data", str(data), "--sae", str(sae_dir), "--out",
                 str(out), "--format", "raw", "--topics", str(topics), "--cards", "1", "--alpha", str(alpha),
                 "--no-progress"]) == 0
    return data, sae_dir, out



def test_apply_retrain_and_check_from_a_feedback_file(tmp_path, saved_model, capsys):
    data, sae_dir, out = _sae_and_audit(tmp_path, saved_model, topics=2, alpha=0.05)
    capsys.readouterr()
    # nothing marked: apply refuses to do nothing silently
    assert main(["audit", "apply", "--data", str(data), "--audit", str(out), "--out", str(tmp_path / "i0")]) == 2
    assert "marks no concept" in capsys.readouterr().err
    lines = (out / "feedback.tsv").read_text().splitlines()
    lines[1] = lines[1].replace("\tkeep\t", "\tsuppress\t")
    (out / "feedback.tsv").write_text("\n".join(lines) + "\n")
    assert main(["audit", "apply", "--data", str(data), "--audit", str(out), "--out", str(tmp_path / "i1"),
                 "--margin", "0"]) == 0
    applied = json.loads(capsys.readouterr().out)
    assert applied["n_changed"] == sum(applied["carriers_per_concept"].values()) or applied["n_changed"] > 0
    assert applied["n_output"] == 48 - applied["n_changed"]
    for mode in ("project", "offset"):
        assert main(["audit", "retrain", "--model", str(saved_model), "--data", str(data), "--audit", str(out),
                     "--intervention", mode, "--out", str(tmp_path / f"m1-{mode}")]) == 0
        record = json.loads((tmp_path / f"m1-{mode}" / "retrain.json").read_text())
        assert record["feature_intervention"]["mode"] == mode
    assert main(["audit", "retrain", "--model", str(saved_model), "--data", str(data), "--audit", str(out),
                 "--directions", "principal", "--energy", "0.5", "--out", str(tmp_path / "m1-principal")]) == 0
    principal = json.loads((tmp_path / "m1-principal" / "retrain.json").read_text())["feature_intervention"]
    assert principal["directions"] == "principal" and principal["energy"] == 0.5
    assert 1 <= principal["n_directions"] <= principal["n_latents"]
    capsys.readouterr()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me about bread (99).\nTell me about chess (98).\nTell me about stars (97).\n")
    assert main(["audit", "check", "--model", str(saved_model), "--trained", str(tmp_path / "m1-project"), "--data", str(data), "--audit",
                 str(out), "--prompts", str(prompts), "--samples", "2", "--max-new-tokens", "8", "--format", "raw",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "prediction check (first_order) over" in printed and "prediction check (local_first_order) over" in printed
    check = json.loads((out / "prediction.json").read_text())
    assert check["agreement"]["first_order"]["n"] == len(check["concepts"]) >= 3 and check["n_pairs_weighted"] == 48
    assert check["neighbours"] == 20 and all(math.isfinite(c["predicted_local_first_order"]) for c in check["concepts"])
    # topic and response concepts, each over its topic's held-out prompts; all of them together
    scoped = check["scoped"]
    listed = json.loads((out / "audit.json").read_text())
    assert len(scoped["concepts"]) == len(listed["topic_concepts"][:20]) + len(listed["response_concepts"][:20]) > 0
    checked = [row for row in scoped["concepts"] if row["n_prompts"] > 0]
    assert scoped["n_unchecked"] == len(scoped["concepts"]) - len(checked)
    assert scoped["agreement_all"]["local_first_order"]["n"] == len(check["concepts"]) + len(checked)
    assert {row["kind"] for row in scoped["concepts"]} <= {"topic", "response"}
    per_topic = {r["topic"]: r["n_prompts"] for r in checked}  # each held-out prompt in one topic
    assert all(r["n_prompts"] == per_topic[r["topic"]] for r in checked) and sum(per_topic.values()) <= 3
    sweep = {row["neighbours"]: row for row in check["local_first_order_by_neighbours"]}
    assert sorted(sweep) == [5, 10, 20, 48] and sweep[20]["r2"] == check["agreement"]["local_first_order"]["r2"]
    page = (out / "audit.html").read_text()
    assert "Prediction check" in page and "other neighbour counts" in page and "data:image/png;base64," in page and "Concepts over all pairs" in page and (out / "prediction.png").stat().st_size > 1000


def test_active_spans_join_sub_word_tokens():
    from headwater.audit.cards import HighlightedResponse, active_spans

    response = HighlightedResponse([" Sure", ".", " H", "ope", " this", " helps", "!"], [0, 0, 1.0, 0.5, 0.2, 0.3, 0])
    assert active_spans(response) == [("Hope this helps", pytest.approx(2.0))]
    assert active_spans(HighlightedResponse(["a", "b"], [1.0, 2.0])) == [("ab", 3.0)]
    assert active_spans(HighlightedResponse([], [])) == []


def test_the_check_measures_response_concepts_as_membership_shares(tmp_path, saved_model, capsys):
    """One prompt topic, so every held-out prompt is in scope: a response concept's measured shift
    must equal the change in the share of generations in its cluster, recomputed here from the
    pooled features and the saved centroids."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from headwater.audit.clusters import load_centroids
    from headwater.audit.prediction import response_columns
    from headwater.engine.models import load_model
    from headwater.engine.tokenization import TokenizationSettings
    from headwater.methods.generation import sample_responses
    from headwater.workflows.audit import open_sae
    from headwater.workflows.audit_feedback import check_predictions

    data, sae_dir, out = _sae_and_audit(tmp_path, saved_model, topics=1)
    capsys.readouterr()
    doc = json.loads((out / "audit.json").read_text())
    assert doc["response_concepts"], "the rows give response concepts at a lenient FDR"
    # M1: M0 with its output layer perturbed, so the generations change
    m1 = AutoModelForCausalLM.from_pretrained(saved_model)
    with torch.no_grad():
        m1.lm_head.weight.add_(0.5 * torch.randn(m1.lm_head.weight.shape, generator=torch.Generator().manual_seed(0)))
    m1.save_pretrained(tmp_path / "m1")
    (tmp_path / "m1").joinpath("tokenizer_config.json").write_text((saved_model / "tokenizer_config.json").read_text())
    for name in ("tokenizer.json", "special_tokens_map.json"):
        if (saved_model / name).exists():
            (tmp_path / "m1" / name).write_bytes((saved_model / name).read_bytes())
    prompts = ["Tell me about bread (99).", "Tell me about chess (98).", "Tell me about stars (97)."]
    settings = TokenizationSettings(format="raw")
    result = check_predictions(model_path=str(saved_model), trained_path=str(tmp_path / "m1"), audit_dir=out,
                               data=str(data), prompts=prompts, samples=3, max_new_tokens=8, settings=settings,
                               progress=False)
    rows = [r for r in result["scoped"]["concepts"] if r["kind"] == "response"]
    assert rows and all(r["n_prompts"] == 3 for r in rows) and result["scoped"]["n_unchecked"] == 0

    sae = open_sae(sae_dir)[0]
    centroids = load_centroids(out / doc["response_clusters"]["file"], sae.d_sae)[0]  # the one topic's
    owners = np.repeat(np.arange(3), 3)
    share = {}
    for name, path in (("m0", saved_model), ("m1", tmp_path / "m1")):
        model, tokenizer = load_model(str(path))
        flat = [r for rs in sample_responses(model, tokenizer, prompts, n=3, temperature=0.7, max_new_tokens=8,
                                             settings=settings, seed=0) for r in rs]
        m0, m0_tokenizer = load_model(str(saved_model))  # generations are read through M0
        dense = response_columns(m0, m0_tokenizer, sae, 2, [prompts[i] for i in owners], flat,
                                 lambda pooled: pooled.dense(sae.d_sae, "mean").numpy(), sae.d_sae, settings)
        unit = dense / np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-30)
        scores = unit @ centroids.T
        scores[:, np.abs(centroids).sum(axis=1) == 0] = -np.inf
        nearest = np.where(np.abs(dense).sum(axis=1) > 0, scores.argmax(axis=1), -1)
        share[name] = np.stack([[np.mean(nearest[owners == x] == j) for j in range(centroids.shape[0])]
                                for x in range(3)])
    expected = (share["m1"] - share["m0"]).mean(axis=0)
    assert np.abs(expected).max() > 0, "the perturbed M1 writes other answers"
    for row in rows:
        assert row["measured"] == pytest.approx(expected[int(row["concept"].split("/r")[1])], abs=1e-12)


def test_feedback_on_a_response_concept_acts_on_its_carriers_and_a_stale_line_is_refused(tmp_path, saved_model,
                                                                                          capsys):
    import numpy as np

    from headwater.audit.clusters import load_centroids
    from headwater.audit.features import FeatureStore
    from headwater.audit.interventions import membership_differences

    data, sae_dir, out = _sae_and_audit(tmp_path, saved_model, topics=2)
    capsys.readouterr()
    doc = json.loads((out / "audit.json").read_text())
    row = doc["response_concepts"][0]
    topic, cluster = row["topic"], row["response_cluster"]
    verb = "suppress" if row["d"] > 0 else "amplify"
    line = f"{row['concept']}\t{verb}\t{','.join(map(str, row['latents']))}\t{row['d']:.4f}\tx\n"
    header = "concept\tdecision\tlatents\td\tlabel\n"
    (tmp_path / "fb.tsv").write_text(header + line)
    assert main(["audit", "apply", "--data", str(data), "--audit", str(out), "--feedback", str(tmp_path / "fb.tsv"),
                 "--out", str(tmp_path / "i1")]) == 0
    applied = json.loads(capsys.readouterr().out)
    store = FeatureStore.open(out / "features")
    centroids = load_centroids(out / doc["response_clusters"]["file"], store.d_sae)
    _, diffs = membership_differences(store, [(topic, cluster)], centroids)
    signed = diffs[:, 0] if verb == "suppress" else -diffs[:, 0]
    expected = int(((np.array(doc["pair_topics"]) == topic) & (signed > 0)).sum())
    assert applied["carriers_per_concept"] == {row["concept"]: expected} and expected > 0
    # the same line after the audit was run again with other response clusters: refused, named
    assert main(["audit", "run", "--model", str(saved_model), "--data", str(data), "--sae", str(sae_dir), "--out",
                 str(out), "--format", "raw", "--topics", "2", "--cards", "1", "--alpha", "0.5", "--seed", "3",
                 "--response-clusters", "3", "--no-progress"]) == 0
    capsys.readouterr()
    now = json.loads((out / "audit.json").read_text())["response_clusters"]["latents"]
    assert cluster >= len(now[topic]) or now[topic][cluster] != row["latents"]  # the rerun's clusters differ
    assert main(["audit", "apply", "--data", str(data), "--audit", str(out), "--feedback", str(tmp_path / "fb.tsv"),
                 "--out", str(tmp_path / "i2")]) == 2
    assert "run again after the feedback file was written" in capsys.readouterr().err
    assert main(["audit", "retrain", "--model", str(saved_model), "--data", str(data), "--audit", str(out),
                 "--feedback", str(tmp_path / "fb.tsv"), "--out", str(tmp_path / "m1")]) == 2
    assert "run again" in capsys.readouterr().err


def test_apply_edit_cuts_a_concepts_words_and_keeps_the_pairs(tmp_path, saved_model, capsys):
    data, _, out = _sae_and_audit(tmp_path, saved_model, topics=2)
    capsys.readouterr()
    # a narrow concept the chosen side carries (a wide one covers whole answers: those pairs are dropped)
    row = min((c for c in json.loads((out / "audit.json").read_text())["concepts"] if c["d"] > 0),
              key=lambda c: len(c["latents"]))
    (out / "feedback.tsv").write_text("concept\tdecision\tlatents\td\tlabel\n"
                                      f"{row['concept']}\tsuppress\t{','.join(map(str, row['latents']))}\t1\tx\n")
    base = ["audit", "edit", "--data", str(data), "--audit", str(out)]
    with pytest.raises(SystemExit):  # M0 is required: the responses are read through it
        main(base + ["--out", str(tmp_path / "e0")])
    assert "--model" in capsys.readouterr().err
    assert main(base + ["--model", str(saved_model), "--margin", "0", "--out", str(tmp_path / "e1")]) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((tmp_path / "e1" / "manifest.json").read_text())
    (concept, carried), = summary["carriers_per_concept"].items()
    assert summary["n_edited"] + summary["n_dropped"] + sum(summary["unedited"][concept].values()) == carried
    assert summary["n_edited"] > 0 and summary["n_output"] == 48 - summary["n_dropped"]
    for example in manifest["examples"]:
        assert example["concept"] == concept and example["side"] == "chosen"
        assert all(piece in example["before"] for piece in example["removed"])
        assert len(example["after"]) < len(example["before"])
    from headwater.data import load_preferences

    before = {p.pair_id: p for p in load_preferences(str(data))}
    after = list(load_preferences(str(tmp_path / "e1" / "pairs.jsonl")))
    edited = [p for p in after if p.metadata.get("edited_from")]
    assert len(edited) == summary["n_edited"]
    for pair in after:
        source = before[pair.metadata.get("edited_from") or pair.pair_id]
        assert pair.prompt == source.prompt and pair.rejected == source.rejected
        if pair.metadata.get("edited_from"):
            assert pair.pair_id != source.pair_id and pair.chosen != source.chosen
            rest = iter(source.chosen)  # the edit only removes characters: what is left is in order
            assert all(ch in rest for ch in pair.chosen)
        else:
            assert pair.chosen == source.chosen
