"""The concept audit as runs on files: train an SAE on a dataset, audit a dataset with an SAE.

- :func:`train_sae_on_dataset`: response-token activations of M0 at ℓ → a BatchTopK/TopK SAE,
  saved in SAELens's format with headwater's provenance and quality in ``cfg.json``'s metadata;
  checkpoints in the output directory make an interrupted run resume.
- :func:`audit_dataset`: per-response features (resumable parts), the statistics, concept cards,
  ``audit.json``, ``audit.html`` and a feedback file to edit.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from headwater.audit.audit import AuditConfig, run_audit
from headwater.audit.clusters import RESPONSE_CENTROIDS, save_centroids
from headwater.audit.cards import concept_cards, format_cards, render_cards_html, write_feedback_template
from headwater.audit.features import encode_features
from headwater.audit.labels import ConceptLabeler
from headwater.audit.sae import SparseAutoencoder
from headwater.audit.sae_io import load_sae, load_sparsify, sae_metadata, save_sae
from headwater.audit.sae_training import SAETrainingConfig, train_sae
from headwater.audit.token_stream import ResponseTokenStream
from headwater.data import load_preferences
from headwater.engine import atomic
from headwater.engine.models import load_model, resolve_layer
from headwater.engine.store import model_fingerprint
from headwater.engine.tokenization import TokenizationSettings, settings_as_used
from headwater.workflows.tables import html_table, text_table

LOG = logging.getLogger(__name__)
CHECKPOINT = ".training-checkpoint"


def hook_name(layer: int) -> str:
    """TransformerLens's name of block ℓ's output (what SAELens users call the hook)."""
    return f"blocks.{layer - 1}.hook_resid_post"


def layer_from_hook(name: str) -> int | None:
    """Block ℓ (1-based) whose output a hook or hookpoint name reads, or None if unknown.

    ``blocks.i.hook_resid_post`` → i + 1; ``blocks.i.hook_resid_pre`` → i; sparsify's
    ``layers.i`` (the output of decoder layer i) → i + 1.
    """
    if m := re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", name):
        return int(m.group(1)) + 1
    if m := re.fullmatch(r"blocks\.(\d+)\.hook_resid_pre", name):
        return int(m.group(1)) or None
    if m := re.fullmatch(r"(?:model\.)?layers\.(\d+)", name):
        return int(m.group(1)) + 1
    return None


def train_sae_on_dataset(
    *, model_path: str, data: str, out_dir: str | Path, config: SAETrainingConfig = SAETrainingConfig(),
    layer: int | None = None, settings: TokenizationSettings = TokenizationSettings(), split: str | None = None,
    on_error: str = "raise", dtype: str = "auto", device: str = "cpu", max_tokens_per_batch: int = 16384,
    chunk_pairs: int = 64, progress: bool = True,
) -> dict[str, Any]:
    """Train an SAE on the response tokens of ``data`` at block ℓ of ``model_path``; save it.

    Returns a summary: path, layer, quality (FVU, L0, dead latents over the last steps), tokens
    and tokens/s. A finished SAE for the same model, layer, data and config is not trained again.
    """
    out = Path(out_dir)
    model, tokenizer = load_model(model_path, dtype=dtype, device=device)  # type: ignore[arg-type]
    dataset = load_preferences(data, split=split, on_error=on_error)  # type: ignore[arg-type]
    pairs = list(dataset)
    layer = resolve_layer(model, layer)
    used = settings_as_used(settings, pairs)
    identity = {"model_fingerprint": model_fingerprint(model), "layer": layer,
                "dataset_fingerprint": dataset.fingerprint, "tokenization": used.to_dict()}
    if (out / "cfg.json").exists():
        finished = sae_metadata(out).get("headwater", {})
        if finished.get("identity") == atomic.json_safe(identity) and finished.get("config") == config.to_dict():
            LOG.info("%s already holds this SAE; not training again", out)
            return {"path": str(out), "layer": layer, **finished.get("quality", {}), "reused": True}
    stream = ResponseTokenStream(model, tokenizer, pairs, layer, used, chunk_pairs=chunk_pairs, seed=config.seed,
                                 max_tokens_per_batch=max_tokens_per_batch)
    total = config.total_tokens or math.ceil(config.epochs * stream.n_tokens)
    bar = _bar(total, progress)
    result = train_sae(stream.chunks, int(model.config.hidden_size), config, total_tokens=total,
                       checkpoint_dir=out / CHECKPOINT, fingerprint=identity,
                       progress=(lambda m: bar.update(m["tokens"] - bar.n) or bar.set_postfix(
                           fvu=f"{m['fvu']:.3f}", l0=f"{m['l0']:.1f}", dead=m["dead"])) if bar else None)
    if bar:
        bar.close()
    assert result is not None  # only stop_after_steps returns None
    quality = {k: result.quality[k] for k in ("fvu", "l0", "dead", "dead_fraction", "tokens", "tokens_per_second",
                                              "seconds")}
    metadata = {"model_name": str(model_path), "hook_name": hook_name(layer),
                "headwater": {"identity": identity, "config": config.to_dict(), "quality": quality,
                              "skipped_pairs": len(stream.skipped), "layer": layer}}
    save_sae(result.sae, out, metadata=metadata)  # replaces the directory, checkpoint included
    return {"path": str(out), "layer": layer, **quality, "d_sae": result.sae.d_sae, "k": config.k,
            "architecture": config.architecture, "skipped_pairs": len(stream.skipped)}


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training SAE", unit="tok", unit_scale=True, smoothing=0.1)


def open_sae(path: str | Path, *, sparsify: bool = False, hookpoint: str | None = None) -> tuple[SparseAutoencoder, int | None]:
    """An SAE (SAELens layout, or sparsify's) and the block ℓ its files say it reads, if any."""
    if sparsify:
        sae = load_sparsify(path, hookpoint=hookpoint)
        return sae, layer_from_hook(hookpoint or Path(path).name)
    meta = sae_metadata(path)
    layer = (meta.get("headwater") or {}).get("layer") or layer_from_hook(str(meta.get("hook_name") or ""))
    return load_sae(path), layer


def audit_dataset(
    *, model_path: str, data: str, sae_path: str | Path, out_dir: str | Path, config: AuditConfig = AuditConfig(),
    layer: int | None = None, sparsify: bool = False, hookpoint: str | None = None,
    settings: TokenizationSettings = TokenizationSettings(), split: str | None = None, on_error: str = "raise",
    dtype: str = "auto", device: str = "cpu", max_tokens_per_batch: int = 16384, part_pairs: int = 256,
    top: int = 20, cards: int = 10, progress: bool = True, label_model: str | None = None,
    label_url: str | None = None,
) -> dict[str, Any]:
    """Audit ``data`` through an SAE on M0 (``model_path``); write the results into ``out_dir``.

    ``label_model`` (``openai:<model>``, with ``label_url``) names each carded concept with an LLM
    beside its span label (:mod:`headwater.audit.labels`).

    Writes ``features/`` (resumable), ``audit.json`` (every statistic), ``audit.html`` (cards with
    highlighted tokens), and ``feedback.tsv`` (left alone if it exists: it may hold decisions).
    Returns the summary printed by the CLI (table and cards as text included).
    """
    out = Path(out_dir)
    sae, sae_layer = open_sae(sae_path, sparsify=sparsify, hookpoint=hookpoint)
    if layer is None and sae_layer is None:
        raise ValueError(f"{sae_path} does not say which block it reads: give --layer")
    model, tokenizer = load_model(model_path, dtype=dtype, device=device)  # type: ignore[arg-type]
    if sae.d_in != int(model.config.hidden_size):
        raise ValueError(f"the SAE reads {sae.d_in}-dimensional activations, the model's are {model.config.hidden_size}")
    layer = resolve_layer(model, layer if layer is not None else sae_layer)
    if sae_layer is not None and layer != sae_layer:
        LOG.warning("--layer %d differs from the block the SAE's files name (%d); using --layer", layer, sae_layer)
    dataset = load_preferences(data, split=split, on_error=on_error)  # type: ignore[arg-type]
    pairs = list(dataset)
    bar = _pairs_bar(len(pairs), progress)
    store = encode_features(model, tokenizer, pairs, layer, sae, out / "features", settings,
                            identity={"model_fingerprint": model_fingerprint(model)}, part_pairs=part_pairs,
                            max_tokens_per_batch=max_tokens_per_batch, progress=bar.update if bar else None)
    if bar:
        bar.close()
    result = run_audit(store, config, prompts=[p.prompt for p in pairs],
                       progress=(lambda stage: LOG.info("audit: %s", stage)))
    concepts = result.concepts(top)
    conditional = result.conditional_concepts(top)
    topical = result.topic_concepts(top)
    responding = result.response_concepts(top)
    used = settings_as_used(settings, pairs)
    made = concept_cards(model, tokenizer, sae, layer, pairs,
                         concepts[:cards] + conditional[:cards] + topical[:cards] + responding[:cards], used)
    labelling = None
    if label_model is not None:
        kind, _, name = label_model.partition(":")
        if kind != "openai" or not name:
            raise ValueError(f"--label-model must be openai:<model>, got {label_model!r}")
        labeler = ConceptLabeler(name, base_url=label_url)
        for card, named in zip(made, labeler.label_cards(made)):
            card["llm_label"] = named
        labelling = {"model": label_model, "url": label_url, **labeler.stats.to_dict()}
    labels = {c["concept"]: c.get("llm_label") or c["label"] for c in made}
    doc = result.to_json(top=max(top, 50))
    if result.response_centroids is not None:
        written = save_centroids(out / RESPONSE_CENTROIDS, result.response_centroids)
        doc["response_clusters"].update(file=RESPONSE_CENTROIDS, sha256=atomic.sha256_file(written))
    doc["cards"] = made
    doc["labelling"] = labelling
    doc["sae"] = {"path": str(Path(sae_path).resolve()), "format": "sparsify" if sparsify else "saelens",
                  "hookpoint": hookpoint, "d_sae": sae.d_sae, "architecture": sae.architecture, "k": sae.k,
                  "layer": layer}
    atomic.write_json(out / "audit.json", doc)
    atomic.write_text(out / "audit.html", render_audit_html(doc))
    feedback = out / "feedback.tsv"
    if not feedback.exists():
        write_feedback_template(concepts + conditional + topical + responding, feedback, labels=labels)
    table = concept_table(concepts, labels)
    if conditional:
        table += "\n\nConditional concepts (a latent within the prompts that have a word; tested on the other split half):\n"
        table += concept_table(conditional, labels)
    if topical:
        table += "\n\nTopic concepts (a cluster within one prompt topic, over that topic's pairs):\n"
        table += concept_table(topical, labels)
    if responding:
        table += ("\n\nResponse concepts (a cluster of whole responses within one prompt topic, over that topic's "
                  "pairs; latents: those that set it apart from the topic's other clusters):\n")
        table += concept_table(responding, labels)
    return {"out": str(out), "n_pairs": doc["n_pairs"], "n_latents_tested": doc["n_latents_tested"],
            "n_latents_significant": doc["n_latents_significant"], "n_clusters": len(result.cluster_latents),
            "n_conditional_significant": len(result.conditional_concepts(10**9)),
            "topics": doc["topics"], "table": table, "cards": format_cards(made), "feedback": str(feedback),
            "labelling": labelling}


def _pairs_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="SAE features", unit="pair", smoothing=0.1)


CONCEPT_COLUMNS = ["concept", "kind", "latents", "pairs", "Δ", "95% CI", "d", "q", "fires on", "active c/r", "label"]


def _concept_rows(concepts: list[dict[str, Any]], labels: dict[str, str]) -> list[list[str]]:
    return [[c["concept"], c["kind"], str(len(c["latents"])), str(c["n_pairs"]), f"{c['delta']:+.4g}",
             f"[{c['ci95'][0]:+.3g}, {c['ci95'][1]:+.3g}]", f"{c['d']:+.3f}", f"{c['q']:.2g}", c["side"],
             f"{c['chosen_rate']:.0%}/{c['rejected_rate']:.0%}", labels.get(c["concept"], "")[:40]]
            for c in concepts]


def concept_table(concepts: list[dict[str, Any]], labels: dict[str, str]) -> str:
    """The audit's concepts as a text table (|d| order)."""
    return text_table(CONCEPT_COLUMNS, _concept_rows(concepts, labels))


def render_audit_html(doc: dict[str, Any], prediction: dict[str, Any] | None = None,
                      figure: bytes | None = None) -> str:
    """``audit.html``: the summary, the concept tables, the prompt topics, the cards and, once
    ``headwater audit check`` has run, the prediction check with its figure. Self-contained."""
    import html

    labels = {c["concept"]: c.get("llm_label") or c["label"] for c in doc.get("cards", [])}
    topics = "".join(f"<li>t{t['topic']}: {html.escape(t['label'])} ({t['pairs']} pairs)</li>" for t in doc["topics"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>headwater audit</title>"
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}.card{border:1px solid #ccc;"
        "padding:.5em 1em;margin:1em 0}span{white-space:pre-wrap}table{border-collapse:collapse;font-size:90%}"
        "td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}</style></head><body>",
        f"<h1>Concept audit</h1><p>{doc['n_pairs']} pairs; {doc['n_latents_tested']} latents tested, "
        f"{doc['n_latents_significant']} significant (BH q &lt; {doc['config']['alpha']}, split halves agreeing); "
        f"pooling: {html.escape(doc['config']['pooling'])}.</p>",
        "<h2>Concepts over all pairs</h2>", html_table(CONCEPT_COLUMNS, _concept_rows(doc["concepts"], labels)),
    ]
    if doc.get("conditional_concepts"):
        parts += ["<h2>Conditional concepts</h2><p>A latent within the prompts that have a word, the word chosen "
                  "on one split half and the statistics computed on the other.</p>",
                  html_table(CONCEPT_COLUMNS, _concept_rows(doc["conditional_concepts"], labels))]
    if doc.get("topic_concepts"):
        parts += ["<h2>Topic concepts</h2><p>A feature cluster within one prompt topic, its statistics over "
                  "that topic's pairs (topics listed below).</p>",
                  html_table(CONCEPT_COLUMNS, _concept_rows(doc["topic_concepts"], labels))]
    if doc.get("response_concepts"):
        parts += ["<h2>Response concepts</h2><p>A cluster of whole responses (spherical k-means on their pooled "
                  "features) within one prompt topic (t&lt;t&gt;/r&lt;k&gt;), over that topic's pairs: the pair's value is 1 "
                  "when its chosen response is in the cluster, −1 when its rejected one is.</p>",
                  html_table(CONCEPT_COLUMNS, _concept_rows(doc["response_concepts"], labels))]
    parts.append(f"<h2>Prompt topics</h2><ul>{topics}</ul>")
    if prediction is not None:
        from headwater.audit.prediction import png_data_uri

        def agreement_rows(table: dict[str, Any], scope: str) -> list[list[Any]]:
            return [[kind, scope, a["n"], f"{a['r2']:.3f}", f"{a['pearson']:.3f}", f"{a['spearman']:.3f}",
                     f"{a['slope']:.3g}"] for kind, a in table.items()]

        rows = agreement_rows(prediction["agreement"], "over all held-out prompts")
        if "scoped" in prediction:
            rows += agreement_rows(prediction["scoped"]["agreement"], "topic and response (their topic's prompts)")
            rows += agreement_rows(prediction["scoped"]["agreement_all"], "all together")
        parts += [f"<h2>Prediction check</h2><p>{prediction['n_prompts']} held-out prompts × {prediction['samples']} "
                  f"samples of M0 and of {html.escape(prediction['trained'])}; measured shift = M1 − M0, read "
                  "through M0 and the SAE.</p>",
                  html_table(["prediction", "concepts read", "n", "R²", "Pearson r", "Spearman ρ", "slope"], rows)]
        sweep = prediction.get("local_first_order_by_neighbours", [])
        if sweep:
            parts.append("<p>The local prediction at other neighbour counts (pairs per prompt; the table uses "
                         f"{prediction.get('neighbours')}): "
                         + ", ".join(f"{row['neighbours']}: R² {row['r2']:.3f}" for row in sweep) + ".</p>")
        if figure is not None:
            parts.append(f"<img alt='predicted against measured shifts' src='{png_data_uri(figure)}'>")
    parts += [render_cards_html(doc.get("cards", [])), "</body></html>\n"]
    return "".join(parts)


__all__ = ["audit_dataset", "concept_table", "render_audit_html", "hook_name", "layer_from_hook", "open_sae",
           "train_sae_on_dataset"]
