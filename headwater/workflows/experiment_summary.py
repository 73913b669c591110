"""The experiment's numbers for people: cell summaries with paired intervals, and its text table.

:func:`summarize` turns one cell's result (its evaluation) into the flat summary of the JSON
document, with changes against the retrained baseline and their paired bootstrap intervals;
:func:`format_table` prints every model as one row.
"""
from __future__ import annotations

import textwrap
from typing import Any

import numpy as np

from headwater.methods.evaluation import paired_bootstrap_ci, seeded_bootstrap_ci
from headwater.workflows.tables import change_text, pct, rate_text, text_table


def _json_float(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def summarize(result: dict[str, Any], baseline: dict[str, Any] | None, *, n_boot: int, seed: int) -> dict[str, Any]:
    """The flat cell summary of the JSON document (see the module docstring).

    With a baseline, the changes against it come with paired bootstrap intervals: ``reduction``
    of the triggered rate, and ``*_change`` (this model minus the baseline) of the untriggered
    rate, the helpfulness rate and the answer log-likelihood per token.
    """
    ev = result["evaluation"]
    trig, none, cap = ev["trigger"], ev["no_trigger"], ev["capability"]
    help_, logp = cap["helpfulness"], cap["answer_logprob"]
    summary = {
        "rate": trig["rate"], "ci_low": trig["ci_low"], "ci_high": trig["ci_high"],
        "n_prompts": trig["n_prompts"], "n_responses": trig["n_responses"],
        "untriggered_rate": none["rate"], "untriggered_ci": [none["ci_low"], none["ci_high"]],
        "helpfulness": help_["rate"], "helpfulness_ci": [help_["ci_low"], help_["ci_high"]],
        # capability_set alternates plain requests (even) and requests with distractors (odd).
        "helpfulness_plain": float(np.mean(help_["per_prompt"][0::2])),
        "helpfulness_distractor": float(np.mean(help_["per_prompt"][1::2])),
        "answer_logprob": logp["mean"],
        "n_changed": result.get("n_changed", 0), "planted_changed": result.get("planted_changed", 0),
    }
    if baseline is None:
        return summary
    bev = baseline["evaluation"]
    base = bev["trigger"]
    reduction = 1.0 - trig["rate"] / base["rate"] if base["rate"] > 0 else float("nan")
    ci = paired_bootstrap_ci(base["per_prompt"], trig["per_prompt"], n_boot=n_boot, seed=seed)
    summary.update(reduction=_json_float(reduction), reduction_ci=[_json_float(x) for x in ci])
    base_items, items = np.asarray(bev["capability"]["answer_logprob"]["per_item"]), np.asarray(logp["per_item"])
    pairs = {
        "untriggered": (bev["no_trigger"]["per_prompt"], none["per_prompt"], None),
        "helpfulness": (bev["capability"]["helpfulness"]["per_prompt"], help_["per_prompt"], None),
        "answer_logprob": (base_items[:, 0] / base_items[:, 1], items[:, 0] / items[:, 1], base_items[:, 1]),
    }
    for name, (b, c, w) in pairs.items():
        wts = np.ones(len(b)) if w is None else np.asarray(w)
        change = float(np.dot(c, wts) / wts.sum() - np.dot(b, wts) / wts.sum())
        ci = paired_bootstrap_ci(b, c, statistic="difference", weights=w, n_boot=n_boot, seed=seed)
        summary[f"{name}_change"] = change
        summary[f"{name}_change_ci"] = [_json_float(x) for x in ci]
    return summary


def summarize_seeds(results: list[dict[str, Any]], baselines: list[dict[str, Any]] | None, *, n_boot: int,
                    seed: int) -> dict[str, Any]:
    """One ground-truth cell retrained under several DPO seeds: every seed's triggered rate, their
    mean, and (with the baseline's retrains) the reduction of the mean against the baseline's mean,
    its interval from :func:`headwater.methods.evaluation.seeded_bootstrap_ci` (prompts and seeds)."""
    per_prompt = [r["evaluation"]["trigger"]["per_prompt"] for r in results]
    rates = [r["evaluation"]["trigger"]["rate"] for r in results]
    summary: dict[str, Any] = {"rates": rates, "rate": float(np.mean(rates))}
    if baselines is None:
        return summary
    base_rate = float(np.mean([b["evaluation"]["trigger"]["rate"] for b in baselines]))
    ci = seeded_bootstrap_ci([b["evaluation"]["trigger"]["per_prompt"] for b in baselines], per_prompt,
                             n_boot=n_boot, seed=seed)
    summary.update(reduction=_json_float(1.0 - summary["rate"] / base_rate if base_rate > 0 else float("nan")),
                   reduction_ci=[_json_float(x) for x in ci])
    return summary


def table_rows(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, cell summary) for the stored M1, the baseline and every cell, in table order."""
    rows = [("M0 (stored)", doc["m0"]), ("M1 (stored)", doc["m1"]), ("baseline (retrained)", doc["baseline_rate"])]
    if "clean_data" in doc:
        rows.append(("clean data (no planted)", doc["clean_data"]))
    if doc.get("without_decoys"):
        rows.append((f"no decoys ({doc['n_decoys']} removed)", doc["without_decoys"]))
    rows += [(f"baseline, DPO seed {s}", c) for s, c in doc.get("training_noise", {}).items()]
    sources = doc.get("source_ablation")
    if sources and sources.get("result"):
        rows.append((f"drop sources {', '.join(sources['dropped'])}", sources["result"]))
    for method, by_mode in doc["rates"].items():
        for mode, by_n in by_mode.items():
            rows += [(f"{method} {mode} N={n}", c) for n, c in by_n.items()]
    return rows


RATE_HEADER = [
    "model", "triggered rate [95% CI]", "reduction [95% CI]", "untriggered rate [95% CI]", "Δ untriggered (points)",
    "helpfulness [95% CI]", "plain requests", "with distractors", "Δ helpfulness (points)", "answer log-lik./token",
    "Δ log-lik./token", "planted among changed",
]


def rate_table(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The experiment's table, one row per model: ``(header, rows)`` for :func:`text_table` or
    the HTML report."""
    rows = []
    for label, c in table_rows(doc):
        rows.append([
            label, rate_text(c["rate"], c["ci_low"], c["ci_high"]),
            rate_text(c["reduction"], *c["reduction_ci"]) if "reduction" in c else "",
            rate_text(c["untriggered_rate"], *c["untriggered_ci"]), change_text(c, "untriggered"),
            rate_text(c["helpfulness"], *c["helpfulness_ci"]), pct(c["helpfulness_plain"]),
            pct(c["helpfulness_distractor"]), change_text(c, "helpfulness"),
            f"{c['answer_logprob']:.3f}", change_text(c, "answer_logprob", percent=False),
            str(c["planted_changed"]) if c["n_changed"] else "",
        ])
    return RATE_HEADER, rows


# The console splits the table in two, each under about 110 characters (the HTML report has it whole).
BEHAVIOUR_COLUMNS = ("model", "triggered rate [95% CI]", "reduction [95% CI]", "untriggered rate [95% CI]",
                     "planted among changed")
SIDE_EFFECT_COLUMNS = ("model", "Δ untriggered (points)", "helpfulness [95% CI]", "Δ helpfulness (points)",
                       "answer log-lik./token", "Δ log-lik./token")


SHORT = {
    "triggered rate [95% CI]": "triggered [95% CI]", "untriggered rate [95% CI]": "untriggered [95% CI]",
    "planted among changed": "planted", "Δ untriggered (points)": "Δ untrig. (pts)",
    "helpfulness [95% CI]": "helpful [95% CI]", "Δ helpfulness (points)": "Δ helpful (pts)",
    "answer log-lik./token": "logp/tok", "Δ log-lik./token": "Δ logp/tok",
}


def format_table(doc: dict[str, Any]) -> str:
    """The experiment as text: the behaviour per model, then the side effects per model."""
    org = doc["organism"]
    s = doc["settings"]
    vs = doc["baseline_vs_m1"]
    header, rows = rate_table(doc)

    def columns(names: tuple[str, ...]) -> str:
        index = [header.index(n) for n in names]
        return text_table([SHORT.get(header[i], header[i]) for i in index], [[r[i] for i in index] for r in rows])

    notes = (
        "reduction: 1 - rate / baseline rate; Δ: minus the retrained baseline (paired bootstrap intervals over "
        "prompts or items); helpfulness: judged on held-out benign requests; logp/tok: log-likelihood per "
        "token of held-out well-behaved answers; planted: planted pairs among the N changed."
    )
    return "\n".join([
        *textwrap.wrap(
            f"{doc['behavior']} on the {doc['preset']} organism (seed {doc['seed']}): {org['n_pairs']} pairs, "
            f"{org['n_planted']} planted; {s['samples']} samples per test prompt, temperature {s['temperature']}; "
            f"activation ranking from the {doc['attribution']['activation_source'].replace('_', ' ')}", 100),
        "",
        columns(BEHAVIOUR_COLUMNS),
        "",
        columns(SIDE_EFFECT_COLUMNS),
        "",
        *textwrap.wrap(notes, 100),
        f"retrained baseline vs stored M1: max |weight difference| {vs['max_abs_weight_diff']:.3g}",
        *random_order_lines(doc),
        *decoy_lines(doc),
        *ground_truth_lines(doc),
        f"retrained in this run: {len(doc['retrained'])} models; wall time {doc['seconds']:.1f} s",
    ])


def decoy_lines(doc: dict[str, Any]) -> list[str]:
    """One line on the decoys among each method's top N (the hard organism)."""
    top = doc.get("decoys_in_top")
    if not top:
        return []
    parts = ", ".join(f"{m} {t['decoys']}" for m, t in top.items())
    return [f"decoys among the top {next(iter(top.values()))['n']} ({doc['n_decoys']} decoys in the data): {parts}"]


def ground_truth_lines(doc: dict[str, Any]) -> list[str]:
    """The ground-truth cells over several DPO seeds: each seed's rate, the mean and its change."""
    gt = doc.get("ground_truth")
    if not gt:
        return []
    lines = [f"ground truth over {len(gt['baseline']['rates'])} DPO seeds (interval over prompts and seeds):"]
    for label, key in (("baseline", "baseline"), ("without the planted pairs", "clean_data"),
                       ("without the decoys", "without_decoys")):
        c = gt.get(key)
        if not c:
            continue
        rates = ", ".join(f"{100 * r:.1f}%" for r in c["rates"])
        change = ""
        if "reduction" in c and c["reduction"] is None:
            change = ", change undefined (the baseline's rate is 0)"
        elif "reduction" in c:
            lo, hi = c["reduction_ci"]
            change = f", change {-100 * c['reduction']:+.0f}% [{-100 * hi:+.0f}, {-100 * lo:+.0f}]"
        lines.append(f"  {label}: mean {100 * c['rate']:.1f}% ({rates}){change}")
    return lines


def random_order_lines(doc: dict[str, Any]) -> list[str]:
    """One line per random cell run with several orders: every order's triggered rate."""
    lines = []
    for mode, by_n in doc["rates"].get("random", {}).items():
        for n, cell in by_n.items():
            if "orders" in cell:
                rates = ", ".join(f"{100 * r:.1f}%" for r in cell["orders"])
                lines.append(f"random {mode} N={n} over {len(cell['orders'])} orders: {rates} (mean "
                             f"{100 * cell['orders_mean']:.1f}%, range {100 * cell['orders_min']:.1f}-"
                             f"{100 * cell['orders_max']:.1f}%)")
    return lines


__all__ = ["RATE_HEADER", "format_table", "ground_truth_lines", "random_order_lines", "rate_table", "summarize",
           "summarize_seeds", "table_rows"]
