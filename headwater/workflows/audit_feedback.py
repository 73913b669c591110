"""After the audit: act on a person's feedback, and check the audit's predictions after training.

- :func:`apply_feedback`: a data intervention (filter, switch or reweight the pairs that carry the
  concepts marked suppress or amplify), written like ``headwater intervene``'s output;
- :func:`retrain_with_feedback`: DPO from M0 with a feature intervention: the marked concepts'
  decoder directions projected out of (suppress) or added to (amplify) the residual stream at ℓ,
  or the reward-shaping margin offsets;
- :func:`check_predictions`: each concept's predicted shift (its Δ in the data, and two first-order
  DPO predictions) against its measured shift (M1's generations against M0's, read through M0 and
  the SAE), with R²; topic and response concepts over their topic's held-out prompts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from headwater.audit.cards import Decision, read_feedback
from headwater.audit.clusters import load_centroids, topic_memberships
from headwater.audit.editing import edit_carriers
from headwater.audit.features import FeatureStore
from headwater.audit.interventions import (
    ACTING,
    concept_directions,
    data_intervention,
    latent_deltas,
    margin_offsets,
    membership_sides,
    principal_directions,
    response_cluster,
)
from headwater.audit.prediction import (
    agreement,
    agreement_figure,
    first_order_shift,
    measured_shifts,
    nearest_pairs,
    pair_token_likelihoods,
    per_prompt_means,
    prompt_representations,
    response_columns,
    scoped_shifts,
    shift_from_neighbours,
    topics_from_neighbours,
)
from headwater.data import load_preferences
from headwater.engine import atomic
from headwater.engine.models import load_model
from headwater.engine.tokenization import TokenizationSettings
from headwater.methods.generation import sample_responses
from headwater.methods.interventions import MODES, write_intervention
from headwater.training.residual_edit import ResidualEdit
from headwater.training.retrain import retrain
from headwater.workflows.audit import open_sae, render_audit_html

FEATURE_MODES = ("project", "offset")
DIRECTIONS = ("rows", "principal")  # what mode="project" takes out: every decoder row, or their weighted principal directions
APPLY_MODES = (*MODES, "edit")  # the data interventions of `headwater audit apply`


def _audit(audit_dir: Path) -> dict[str, Any]:
    path = audit_dir / "audit.json"
    if not path.exists():
        raise ValueError(f"{audit_dir} holds no audit.json; run `headwater audit run` first")
    return json.loads(path.read_text())


def _audited_sae(doc: dict[str, Any]) -> Any:
    """The SAE an audit read, from the path and format its audit.json records."""
    record = doc["sae"]
    return open_sae(record["path"], sparsify=record["format"] == "sparsify", hookpoint=record.get("hookpoint"))[0]


def _pair_topics(doc: dict[str, Any], store: FeatureStore) -> dict[str, int] | None:
    """Each encoded pair's prompt topic (topic concepts act within it), or None for an audit made
    before topics were recorded."""
    topics = doc.get("pair_topics")
    if topics is None:
        return None
    if len(topics) != len(store):
        raise ValueError(f"audit.json records {len(topics)} pair topics for {len(store)} encoded pairs")
    return dict(zip(store.pair_ids, (int(t) for t in topics)))


def _centroids(audit_dir: Path, doc: dict[str, Any], store: FeatureStore) -> np.ndarray | None:
    """The audit's response centroids, verified against the checksum audit.json records, or None
    for an audit without response clusters."""
    record = doc.get("response_clusters") or {}
    if not record.get("file"):
        return None
    path = audit_dir / record["file"]
    if not path.is_file() or atomic.sha256_file(path) != record.get("sha256"):
        raise ValueError(f"{path} is missing or does not match the checksum in audit.json")
    return load_centroids(path, store.d_sae)


def _response_centroids(audit_dir: Path, doc: dict[str, Any], store: FeatureStore,
                        decisions: Sequence[Decision]) -> np.ndarray | None:
    """The centroids, when an acted-on decision is a response concept (else None, unread). Each such
    decision's latents must be the ones this audit records for its cluster: a feedback file written
    for an earlier run of the audit (another seed, topic count or k) names other clusters."""
    acting = [d for d in decisions if d.decision in ACTING and response_cluster(d.concept) is not None]
    if not acting:
        return None
    centroids = _centroids(audit_dir, doc, store)
    if centroids is None:
        raise ValueError(f"the feedback acts on response concept {acting[0].concept}, but {audit_dir} has no response "
                         "clusters (run `headwater audit run` again)")
    recorded = (doc.get("response_clusters") or {}).get("latents") or []
    for d in acting:
        topic, cluster = response_cluster(d.concept)  # type: ignore[misc]
        known = recorded[topic][cluster] if topic < len(recorded) and cluster < len(recorded[topic]) else None
        if known is None or tuple(known) != tuple(d.latents):
            raise ValueError(f"the feedback line for {d.concept} names latents {list(d.latents)}, but this audit's "
                             f"{d.concept} is set apart by {known}: the audit was run again after the feedback file "
                             "was written, so its response clusters differ; mark the concepts of this run again")
    return centroids


def _decisions(audit_dir: Path, feedback: str | Path | None) -> list[Decision]:
    decisions = read_feedback(Path(feedback) if feedback is not None else audit_dir / "feedback.tsv")
    if not any(d.decision in ("suppress", "amplify") for d in decisions):
        raise ValueError("the feedback file marks no concept suppress or amplify: nothing to do")
    return decisions


def apply_feedback(*, data: str, audit_dir: str | Path, out_dir: str | Path, feedback: str | Path | None = None,
                   mode: str = "filter", weight: float = 0.0, margin: float = 1.0, split: str | None = None,
                   on_error: str = "raise", overwrite: bool = False, formats: Sequence[str] = ("jsonl",),
                   model_path: str | None = None, fraction: float = 0.5,
                   settings: TokenizationSettings | None = None, device: str = "cpu") -> dict[str, Any]:
    """The data intervention of a feedback file, written to ``out_dir`` (pairs + manifest).

    ``mode`` is one of :data:`APPLY_MODES`. ``"edit"`` cuts each concept's words out of its
    carriers' responses (:mod:`headwater.audit.editing`); it reads them through M0
    (``model_path``, the model the audit read) and the audit's SAE, tokenised as the audit
    recorded (``settings`` overrides that).
    """
    if mode not in APPLY_MODES:
        raise ValueError(f"mode must be one of {APPLY_MODES}, got {mode!r}")
    if mode == "edit" and model_path is None:
        raise ValueError("mode edit reads the responses through M0: give the model the audit read (--model)")
    audit = Path(audit_dir)
    doc = _audit(audit)
    dataset = load_preferences(data, split=split, on_error=on_error)  # type: ignore[arg-type]
    store = FeatureStore.open(audit / "features")
    if store.manifest["dataset_fingerprint"] != dataset.fingerprint:
        raise ValueError(f"{audit} audited other data (dataset fingerprint differs from {data}'s)")
    decisions = _decisions(audit, feedback)
    options = dict(margin=margin, pooling=doc["config"]["pooling"], topics=_pair_topics(doc, store),
                   centroids=_response_centroids(audit, doc, store, decisions))
    if mode == "edit":
        if settings is None:
            settings = TokenizationSettings(**store.manifest.get("tokenization", {}))
        model, tokenizer = load_model(model_path, device=device)  # type: ignore[arg-type]
        result, manifest = edit_carriers(dataset, decisions, store, model, tokenizer, _audited_sae(doc),
                                         int(doc["sae"]["layer"]), settings=settings, fraction=fraction, **options)
        counts = {name: c["carriers"] for name, c in manifest["per_concept"].items()}
    else:
        result, manifest = data_intervention(dataset, decisions, store, mode=mode,  # type: ignore[arg-type]
                                             weight=weight, **options)
        counts = manifest["carriers_per_concept"]
    written = write_intervention(out_dir, result, manifest, formats=formats, overwrite=overwrite)
    out = {"out": str(out_dir), "mode": mode, "n_input": manifest["n_input"], "n_changed": manifest["n_changed"],
           "n_output": manifest["n_output"], "carriers_per_concept": counts,
           "files": {k: str(v) for k, v in written.items()}}
    if mode == "edit":
        out.update(n_edited=manifest["n_edited"], n_dropped=manifest["n_dropped"],
                   unedited={name: c["unedited"] for name, c in manifest["per_concept"].items()})
    return out


def retrain_with_feedback(*, model_path: str, data: str, audit_dir: str | Path, out_dir: str | Path,
                          feedback: str | Path | None = None, mode: str = "project", strength: float = 1.0,
                          directions: str = "rows", energy: float = 0.9, config: Any = None, split: str | None = None,
                          on_error: str = "raise", overwrite: bool = False, device: str = "cpu",
                          progress: bool = False) -> dict[str, Any]:
    """Retrain M0 on ``data`` with the feature intervention of a feedback file.

    ``mode="project"``: suppressed concepts' directions are projected out at ℓ (amplified ones
    added with scale ``strength``). ``directions="rows"`` takes every latent's decoder row;
    ``"principal"`` (suppress only) the fewest weighted principal directions of those rows that
    hold ``energy`` of their mass, each row weighted by its latent's |Δ| in the data
    (:func:`~headwater.audit.interventions.principal_directions`); ``mode="offset"``: reward
    shaping with margin offsets of ``strength`` per typical activation. A conditional concept's offsets apply only to the pairs
    whose prompt has its word, a topic concept's only to its topic's pairs, but their directions
    are projected out on every prompt (a residual edit does not see the prompt).
    """
    if mode not in FEATURE_MODES:
        raise ValueError(f"mode must be one of {FEATURE_MODES}, got {mode!r}")
    if directions not in DIRECTIONS:
        raise ValueError(f"directions must be one of {DIRECTIONS}, got {directions!r}")
    if directions != "rows" and mode != "project":
        raise ValueError(f"directions={directions!r} applies to mode='project' only, not {mode!r}")
    if not 0 < energy <= 1:  # checked before any data is read
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    audit = Path(audit_dir)
    doc = _audit(audit)
    decisions = _decisions(audit, feedback)
    dataset = load_preferences(data, split=split, on_error=on_error)  # type: ignore[arg-type]
    sae = _audited_sae(doc)
    layer = int(doc["sae"]["layer"])
    record: dict[str, Any] = {"mode": mode, "strength": strength, "layer": layer, "audit": str(audit),
                              "decisions": [{"concept": d.concept, "decision": d.decision, "latents": list(d.latents)}
                                            for d in decisions]}
    edit, offsets = None, None
    store = FeatureStore.open(audit / "features")
    centroids = _response_centroids(audit, doc, store, decisions)  # a stale feedback line is refused in either mode
    if mode == "project":
        suppress = [lat for d in decisions if d.decision == "suppress" for lat in d.latents]
        amplify = [lat for d in decisions if d.decision == "amplify" for lat in d.latents]
        if suppress and amplify:
            raise ValueError("mode project edits one way at a time: mark concepts either suppress or amplify")
        latents = list(dict.fromkeys(suppress or amplify))  # a latent in two marked concepts counts once
        if directions == "principal":
            if not suppress:
                raise ValueError("directions='principal' is for suppressed concepts (its directions have no sign "
                                 "to add); amplify with directions='rows'")
            weights = np.abs(latent_deltas(store, latents, pooling=doc["config"]["pooling"]))
            basis = principal_directions(sae, latents, weights, energy=energy)
        else:
            basis = concept_directions(sae, latents)
        edit = ResidualEdit(layer, basis, "project" if suppress else "add", strength)
        record.update(directions=directions, n_latents=len(latents), n_directions=int(basis.shape[0]),
                      **({"energy": energy} if directions == "principal" else {}))
    else:
        offsets = margin_offsets(decisions, store, dataset, strength=strength, pooling=doc["config"]["pooling"],
                                 topics=_pair_topics(doc, store), centroids=centroids)
        record["offsets"] = {"n_nonzero": int(sum(o != 0 for o in offsets)), "min": min(offsets), "max": max(offsets)}
    retrain(model_path, dataset, out_dir, config=config, overwrite=overwrite, device=device, progress=progress,
            margin_offsets=offsets, residual_edit=edit, feature_intervention=record)
    return {"out": str(out_dir), **{k: v for k, v in record.items() if k != "decisions"}}


NEIGHBOUR_SWEEP = (5, 10, 20, 50, 100, 300)  # neighbour counts the check also reports, beside the one asked for


def _scoped_concepts(doc: dict[str, Any], top: int) -> list[dict[str, Any]]:
    """The audit's top ``top`` topic concepts and top ``top`` response concepts (each acts within one
    prompt topic)."""
    rows = doc.get("topic_concepts", [])[:top] + doc.get("response_concepts", [])[:top]
    return [row for row in rows if "topic" in row]


def check_predictions(*, model_path: str, trained_path: str, audit_dir: str | Path, data: str, prompts: Sequence[Any],
                      samples: int = 4, max_new_tokens: int = 64, temperature: float = 0.7, seed: int = 0,
                      n_latents: int = 50, n_scoped: int = 20, max_pairs: int = 20_000, neighbours: int = 20,
                      split: str | None = None, on_error: str = "raise",
                      settings: TokenizationSettings = TokenizationSettings(), device: str = "cpu",
                      progress: bool = True) -> dict[str, Any]:
    """Predicted against measured (M1 − M0 generations) concept shifts; writes ``prediction.json``
    and ``prediction.png`` into the audit directory and adds the check to its ``audit.html``.

    The three predictions of :mod:`headwater.audit.prediction` are made and scored: ``delta`` (the
    data's Δ), ``first_order`` (M0-likelihood-weighted and centred on M0's generations) and
    ``local_first_order`` (the same prompt by prompt: each held-out prompt's ``neighbours``
    nearest pairs, centred on M0's generations to that prompt; the figure plots this one). M0's
    token likelihoods are read on at most ``max_pairs`` pairs, a seeded sample of the audited data,
    and the local prediction draws its neighbours from those. Concepts: the audit's reported
    concepts and its top ``n_latents`` significant latents. ``local_first_order_by_neighbours``
    repeats the local prediction's agreement at the counts of ``NEIGHBOUR_SWEEP``, so a reader
    sees how much that one setting matters.

    ``scoped`` checks the top ``n_scoped`` topic concepts and response concepts the same way, each
    over the held-out prompts of its topic only (a held-out prompt's topic: the most common one
    among its neighbour pairs); a concept whose topic gets no held-out prompt is listed and left
    out of the agreement.
    """
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise ValueError(f"neighbours must be a positive int, got {neighbours!r}")  # before any sampling
    if n_scoped < 0:
        raise ValueError(f"n_scoped must be ≥ 0, got {n_scoped}")
    audit = Path(audit_dir)
    doc = _audit(audit)
    sae = _audited_sae(doc)
    layer, pooling = int(doc["sae"]["layer"]), doc["config"]["pooling"]
    concepts: dict[str, tuple[list[int], float]] = {}
    for row in doc["concepts"]:
        concepts[row["concept"]] = (list(row["latents"]), row["delta"])
    for row in doc["latents"][:n_latents]:
        concepts.setdefault(row["concept"], ([int(row["concept"][1:])], row["delta"]))
    if len(concepts) < 3:
        raise ValueError(f"the audit in {audit} reports {len(concepts)} concepts; the check needs at least 3")
    names = list(concepts)
    dataset = load_preferences(data, split=split, on_error=on_error)  # type: ignore[arg-type]
    store = FeatureStore.open(audit / "features")
    if store.manifest["dataset_fingerprint"] != dataset.fingerprint:
        raise ValueError(f"{audit} audited other data (dataset fingerprint differs from {data}'s)")
    scoped = _scoped_concepts(doc, n_scoped)
    pair_topics = np.asarray(doc.get("pair_topics", []), dtype=np.int64)
    if scoped and pair_topics.size != len(store):
        raise ValueError(f"audit.json records {pair_topics.size} pair topics for {len(store)} encoded pairs")
    summed = [concepts[n][0] for n in names] + [row["latents"] for row in scoped if row["kind"] != "response"]
    members = [(row["topic"], row["response_cluster"]) for row in scoped if row["kind"] == "response"]
    centroids = _centroids(audit, doc, store) if members else None
    if members and centroids is None:  # before the models are loaded and sampled
        raise ValueError(f"{audit}/audit.json lists response concepts but no response cluster file: run "
                         "`headwater audit run` again, or check with --scoped 0")
    order = ([row["concept"] for row in scoped if row["kind"] != "response"]
             + [row["concept"] for row in scoped if row["kind"] == "response"])  # the scoped columns' order

    def read(pooled: Any) -> np.ndarray:
        columns = [pooled.concept_columns(summed, sae.d_sae, pooling).numpy()]
        if members:
            columns.append(topic_memberships(pooled, centroids, members, sae.d_sae, pooling))
        return np.concatenate(columns, axis=1)

    m0, tokenizer = load_model(model_path, device=device)
    m1, _ = load_model(trained_path, device=device)
    options = dict(n=samples, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, settings=settings)
    owners = [i for i in range(len(prompts)) for _ in range(samples)]
    acts = {}
    for name, model in (("m0", m0), ("m1", m1)):
        responses = sample_responses(model, tokenizer, prompts, progress=f"{name} generations" if progress else None,
                                     **options)
        flat = [r for rs in responses for r in rs]
        acts[name] = response_columns(m0, tokenizer, sae, layer, [prompts[i] for i in owners], flat, read,
                                      len(summed) + len(members), settings)
    c = len(names)
    shifts = measured_shifts(acts["m0"][:, :c], acts["m1"][:, :c], owners, owners, seed=seed)

    pairs = list(dataset)
    if len(pairs) > max_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False))
        pairs = [pairs[i] for i in keep]
    likelihood = pair_token_likelihoods(m0, tokenizer, pairs, settings)
    ids, chosen, rejected = store.concept_sides(summed, pooling)
    if members:
        _, member_chosen, member_rejected = membership_sides(store, members, centroids, pooling=pooling)
        chosen, rejected = np.concatenate([chosen, member_chosen], 1), np.concatenate([rejected, member_rejected], 1)
    row_of = {pid: k for k, pid in enumerate(ids)}
    rows = [row_of.get(pid) for pid in likelihood["pair_ids"]]
    usable = np.array([r is not None for r in rows])
    index = np.array([r for r in rows if r is not None], dtype=np.int64)
    pair_prompts = store.prompt_rows(index)
    eval_prompts = prompt_representations(m0, tokenizer, prompts, layer, settings)
    by_prompt = per_prompt_means(acts["m0"][:, :c], owners, range(len(prompts)))
    logps = (likelihood["chosen"][usable], likelihood["rejected"][usable])
    sides = (chosen[index, :c], rejected[index, :c], *logps)
    # one neighbour search serves the default and the sweep's other counts (the first k columns)
    counts = sorted({min(k, int(usable.sum())) for k in (*NEIGHBOUR_SWEEP, neighbours)})
    near = nearest_pairs(eval_prompts, pair_prompts, max(counts))
    k_used = min(neighbours, int(usable.sum()))

    def local(k: int) -> np.ndarray:
        return shift_from_neighbours(*sides, near[:, :k], by_prompt)

    predictions = {
        "delta": np.array([concepts[n][1] for n in names]),
        "first_order": first_order_shift(*sides, acts["m0"][:, :c].mean(axis=0)),
        "local_first_order": local(k_used),
    }
    scores = {kind: agreement(values, shifts["shift"]) for kind, values in predictions.items()}
    # how much the one setting matters: the same check at other neighbour counts (cheap: no sampling)
    sweep = [{"neighbours": k, **agreement(local(k), shifts["shift"])} for k in counts]
    table = [{"concept": n, "latents": concepts[n][0], "predicted_delta": float(predictions["delta"][k]),
              "predicted_first_order": float(predictions["first_order"][k]),
              "predicted_local_first_order": float(predictions["local_first_order"][k]),
              "measured": float(shifts["shift"][k]),
              "measured_ci95": [float(shifts["low"][k]), float(shifts["high"][k])],
              "m0_mean": float(acts["m0"][:, k].mean()), "m1_mean": float(acts["m1"][:, k].mean())}
             for k, n in enumerate(names)]
    result = {"agreement": scores, "concepts": table, "n_prompts": len(prompts), "samples": samples,
              "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
              "n_pairs_weighted": int(usable.sum()), "neighbours": k_used,
              "local_first_order_by_neighbours": sweep,
              "trained": str(trained_path)}
    extra = None
    if scoped:
        by_name = {row["concept"]: row for row in scoped}
        topic_of = np.array([by_name[n]["topic"] for n in order], dtype=np.int64)
        eval_topics = topics_from_neighbours(near[:, :k_used], pair_topics[index])
        found = scoped_shifts(chosen[index, c:], rejected[index, c:], *logps, pair_topics[index], near[:, :k_used],
                              eval_topics, acts["m0"][:, c:], acts["m1"][:, c:], owners, topic_of, seed=seed)
        found["delta"] = np.array([by_name[n]["delta"] for n in order])
        checked = np.flatnonzero(found["n_prompts"] > 0)
        rows_out = [{"concept": n, "kind": by_name[n]["kind"], "topic": int(topic_of[j]),
                     "n_prompts": int(found["n_prompts"][j]), "predicted_delta": float(found["delta"][j]),
                     "predicted_first_order": float(found["first_order"][j]),
                     "predicted_local_first_order": float(found["local_first_order"][j]),
                     "measured": float(found["shift"][j]), "measured_ci95": [float(found["low"][j]),
                                                                             float(found["high"][j])]}
                    for j, n in enumerate(order)]
        both = {kind: agreement(np.r_[predictions[kind], found[kind][checked]],
                                np.r_[shifts["shift"], found["shift"][checked]]) for kind in predictions}
        result["scoped"] = {"concepts": rows_out, "n_unchecked": int(len(order) - checked.size),
                            "agreement": {kind: agreement(found[kind][checked], found["shift"][checked])
                                          for kind in predictions},
                            "agreement_all": both}
        extra = ([order[j] for j in checked], found["local_first_order"][checked],
                 {key: found[key][checked] for key in ("shift", "low", "high")})
    figure = agreement_figure(names, predictions["local_first_order"], shifts, scores["local_first_order"],
                              xlabel=f"predicted shift (local first order, {result['neighbours']} pairs per prompt)",
                              extra=extra)
    atomic.write_json(audit / "prediction.json", result)
    atomic.write_bytes(audit / "prediction.png", figure)
    atomic.write_text(audit / "audit.html", render_audit_html(doc, result, figure))
    return result


__all__ = ["APPLY_MODES", "FEATURE_MODES", "apply_feedback", "check_predictions", "retrain_with_feedback"]
