"""One self-contained HTML report of an experiment (:func:`headwater.workflows.experiment.run_experiment`).

The file has no external resource: the figures are PNG images inline as base64 ``data:`` URIs
(matplotlib, Agg backend), the styles are inline, and nothing is fetched when it is opened.
Three figures, each a ``<figure>`` with an id:

- ``fig-scores``: histograms of the activation scores (cosine with the probing or behaviour
  vector) of planted versus clean pairs;
- ``fig-rates``: the triggered behaviour rate with its 95% bootstrap interval for every method,
  mode and N, against the retrained baseline (line and shaded interval);
- ``fig-similarity``: the similarity matrix S (behaviour change vectors × the top pairs of each
  discovered cluster, cosine), rows and columns ordered by cluster, with the cluster boundaries
  drawn and the pairs of the planted behaviour marked under the columns.

Tables repeat the numbers: rates, intervals, relative reductions, untriggered rates, capability,
the attribution metrics and the discovered clusters.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from headwater.engine import atomic
from headwater.workflows.experiment_summary import ground_truth_lines, rate_table
from headwater.workflows.tables import change_text, ci_text, html_table, pct

REQUIRED = ("behavior", "preset", "seed", "organism", "settings", "attribution", "activation_scores", "n_values",
            "baseline_rate", "rates", "m0", "m1", "baseline_vs_m1", "discovery", "retrained", "seconds")
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5em 0; } figcaption { font-size: 0.9em; color: #555; }
img { max-width: 100%; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _png(fig: Any) -> str:
    """A matplotlib figure as a base64 PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede the pyplot import in a fresh process
    import matplotlib.pyplot as plt

    return plt


def scores_figure(doc: dict[str, Any]) -> str:
    """Histogram of activation scores, planted versus clean pairs (PNG data URI)."""
    plt = _pyplot()
    planted = np.asarray(doc["activation_scores"]["planted"], np.float64)
    clean = np.asarray(doc["activation_scores"]["clean"], np.float64)
    both = np.concatenate([planted, clean])
    bins = np.linspace(both.min(), both.max(), 41) if both.size and both.max() > both.min() else 10
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.hist(clean, bins=bins, density=True, alpha=0.6, label=f"clean pairs ({clean.size})", color="#7f8c8d")
    ax.hist(planted, bins=bins, density=True, alpha=0.7, label=f"planted pairs ({planted.size})", color="#c0392b")
    ax.set_xlabel(f"activation score (cosine with the {doc['attribution']['activation_source'].replace('_', ' ')})")
    ax.set_ylabel("density")
    ax.legend()
    return _png(fig)


def rates_figure(doc: dict[str, Any]) -> str:
    """Triggered behaviour rate with 95% intervals per method × mode over N (PNG data URI)."""
    plt = _pyplot()
    base = doc["baseline_rate"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ns = [int(n) for n in doc["n_values"]]
    ax.axhspan(100 * base["ci_low"], 100 * base["ci_high"], color="#95a5a6", alpha=0.3)
    ax.axhline(100 * base["rate"], color="#2c3e50", lw=1.5, label=f"retrained baseline {pct(base['rate'])}")
    for i, (dpo_seed, c) in enumerate(doc.get("training_noise", {}).items()):
        ax.axhline(100 * c["rate"], color="#2c3e50", lw=1.0, ls=":",
                   label="baseline, other DPO seeds" if i == 0 else None)
    if "clean_data" in doc:  # the ground-truth removal: the best any ranking can do
        ax.axhline(100 * doc["clean_data"]["rate"], color="#27ae60", lw=1.5, ls="-.",
                   label=f"clean data (planted removed) {pct(doc['clean_data']['rate'])}")
    styles = {("activation", "filter"): ("#2980b9", "o", "-"), ("activation", "switch"): ("#c0392b", "s", "-"),
              ("random", "filter"): ("#7fb3d5", "o", "--"), ("random", "switch"): ("#e6a19a", "s", "--")}
    offsets = np.linspace(-0.06, 0.06, max(1, sum(len(m) for m in doc["rates"].values())))
    k = 0
    for method, by_mode in doc["rates"].items():
        for mode, by_n in by_mode.items():
            x = np.array([int(n) for n in by_n], np.float64) * (1 + offsets[k])
            y = np.array([100 * c["rate"] for c in by_n.values()])
            err = np.array([[100 * (c["rate"] - c["ci_low"]) for c in by_n.values()],
                            [100 * (c["ci_high"] - c["rate"]) for c in by_n.values()]])
            color, marker, line = styles.get((method, mode), (None, "o", "-"))
            ax.errorbar(x, y, yerr=err, color=color, marker=marker, ls=line, capsize=3, label=f"{method} {mode}")
            k += 1
    ax.set_xscale("log")
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlabel(f"N (pairs changed; {doc['organism']['n_planted']} planted)")
    ax.set_ylabel("triggered behaviour rate (%)")
    tops = [base["ci_high"]] + [c["ci_high"] for m in doc["rates"].values() for n in m.values() for c in n.values()]
    ax.set_ylim(0, max(5.0, 110 * max(tops)))  # at least 0-5%: an all-zero plot still reads as percentages
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _png(fig)


def similarity_figure(similarity: dict[str, Any], behavior: str) -> str:
    """Heatmap of S ordered by cluster, with cluster boundaries and planted-pair marks (PNG data URI)."""
    plt = _pyplot()
    s = np.asarray(similarity["matrix"], np.float64)
    rows, cols = np.asarray(similarity["row_cluster"]), np.asarray(similarity["col_cluster"])
    families = [str(f) for f in similarity["col_family"]]
    fig, ax = plt.subplots(figsize=(8, 6))
    if s.size == 0:
        ax.text(0.5, 0.5, "no behaviour vectors to show", ha="center", va="center")
        ax.set_axis_off()
        return _png(fig)
    limit = float(np.abs(s).max()) or 1.0
    image = ax.imshow(s, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    for edges, draw in ((rows, ax.axhline), (cols, ax.axvline)):
        for i in np.nonzero(edges[1:] != edges[:-1])[0]:
            draw(i + 0.5, color="black", lw=0.8)
    marked = [j for j, f in enumerate(families) if f == behavior]
    ax.scatter(marked, [len(rows) + 1.5] * len(marked), marker="^", color="#c0392b", s=14, clip_on=False,
               label=f"planted {behavior} pair")
    ax.set_ylim(len(rows) + 2.5, -0.5)
    starts = [0] + (np.nonzero(rows[1:] != rows[:-1])[0] + 1).tolist()
    ax.set_yticks(starts)
    ax.set_yticklabels([f"cluster {rows[i]}" for i in starts], fontsize=7)
    ax.set_xlabel("top pairs of each cluster (ordered by cluster)")
    ax.set_ylabel("behaviour change vectors")
    ax.legend(loc="upper right", fontsize=7, bbox_to_anchor=(1.0, -0.08))
    fig.colorbar(image, ax=ax, label="cosine")
    return _png(fig)


def load_similarity(path: str | Path) -> dict[str, Any]:
    """The arrays of ``similarity.npz`` written by the experiment."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _summary(doc: dict[str, Any]) -> str:
    """One line per method and mode at N = the planted count (when that N was run)."""
    n = str(doc["organism"]["n_planted"])
    items = []
    for method, by_mode in doc["rates"].items():
        for mode, by_n in by_mode.items():
            if n in by_n:
                c = by_n[n]
                items.append(
                    f"<li>{html.escape(method)} {html.escape(mode)}, N = {n}: triggered rate "
                    f"{pct(c['rate'])} against {pct(doc['baseline_rate']['rate'])}, reduction {pct(c['reduction'])} "
                    f"{ci_text(*c['reduction_ci'])}; untriggered change {change_text(c, 'untriggered')} points, "
                    f"helpfulness change {change_text(c, 'helpfulness')} points, answer log-likelihood change "
                    f"{change_text(c, 'answer_logprob', percent=False)} per token.</li>"
                )
    if "clean_data" in doc:
        c = doc["clean_data"]
        items.append(
            f"<li>clean data (exactly the planted pairs removed; the best any ranking can do): triggered rate "
            f"{pct(c['rate'])}, reduction {pct(c['reduction'])}; helpfulness change {change_text(c, 'helpfulness')} "
            f"points, answer log-likelihood change {change_text(c, 'answer_logprob', percent=False)} per token.</li>"
        )
    return f"<h2>At N = the planted count</h2><ul>{''.join(items)}</ul>" if items else ""


def _ground_truth(doc: dict[str, Any]) -> str:
    """The ground-truth cells over several DPO seeds (``--ground-truth-seeds``), when measured."""
    lines = ground_truth_lines(doc)
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line.strip())}</li>" for line in lines[1:])
    heading = lines[0].rstrip(":")
    return f"<h2>{html.escape(heading[0].upper() + heading[1:])}</h2><ul>{items}</ul>"


def render_report(doc: dict[str, Any], similarity: dict[str, Any] | None = None) -> str:
    """The HTML text of the report.

    Args:
        doc: the experiment's JSON document.
        similarity: the arrays of ``similarity.npz`` (default: read from ``doc["similarity_file"]``).
    """
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ValueError(f"the experiment document lacks {missing}; render the output of run_experiment")
    if similarity is None:
        similarity = load_similarity(doc["similarity_file"])
    org, s, att = doc["organism"], doc["settings"], doc["attribution"]
    e = html.escape
    title = f"headwater experiment: {doc['behavior']} on the {doc['preset']} organism, seed {doc['seed']}"
    attribution_rows = [
        [m, f"{att[m]['precision_at_n']:.3f}", f"{att[m]['recall_at_n']:.3f}", f"{att[m]['auroc']:.3f}"]
        for m in [m for m in doc.get("methods", ["activation", "random"]) if m in att] or ["activation", "random"]
    ]
    cluster_rows = [
        [str(c["cluster"]), str(c["size"]), f"{c['coherence']:.3f}",
         ", ".join(f"{b}: {n}" for b, n in c["planted_in_top"].items())]
        for c in doc["discovery"]["clusters"]
    ]
    vs = doc["baseline_vs_m1"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
        f"<style>{_STYLE}</style></head><body>", f"<h1>{e(title)}</h1>",
        f"<p>{org['n_pairs']} preference pairs, {org['n_planted']} planted for <code>{e(doc['behavior'])}</code> "
        f"(organism {e(org['fingerprint'])}). Each model answers every held-out test prompt {s['samples']} times "
        f"at temperature {s['temperature']}, with and without the trigger; the organism's judge labels each answer; "
        f"intervals are 95% bootstrap intervals over prompts, reductions are relative to the retrained baseline "
        f"(paired bootstrap). The activation ranking comes from the {e(att['activation_source'].replace('_', ' '))}. "
        f"Retrained baseline versus stored M1: largest absolute weight difference {vs['max_abs_weight_diff']:.3g}.</p>",
        _summary(doc),
        _ground_truth(doc),
        "<h2>Behaviour rates</h2>",
        html_table(*rate_table(doc)),
        "<p>Helpfulness: judged rate of helping with held-out benign requests (half with formatting "
        "distractors). Answer log-likelihood: mean log-probability per token of well-behaved answers to "
        "held-out prompts (higher is better). Δ: the model minus the retrained baseline, with a paired "
        "bootstrap interval over the same prompts or items.</p>",
        f'<figure id="fig-rates"><img alt="behaviour rates with intervals" src="{rates_figure(doc)}">'
        "<figcaption>Triggered behaviour rate against N for each ranking method and intervention; error bars "
        "are 95% bootstrap intervals, the line and band the retrained baseline (dotted: the unmodified data "
        "retrained under other DPO seeds, when measured).</figcaption></figure>",
        "<h2>Attribution</h2>",
        html_table(["ranking", f"precision@{org['n_planted']}", f"recall@{org['n_planted']}", "AUROC"], attribution_rows),
        f'<figure id="fig-scores"><img alt="score distributions" src="{scores_figure(doc)}">'
        "<figcaption>Activation scores of planted versus clean pairs.</figcaption></figure>",
        "<h2>Discovery</h2>",
        f"<p>{doc['discovery']['n_behavior_vectors']} behaviour change vectors, {doc['discovery']['n_clusters']} "
        f"clusters, {doc['discovery']['n_near_zero']} near zero.</p>",
        html_table(["cluster", "size", "coherence", "planted pairs among its top pairs"], cluster_rows),
        f'<figure id="fig-similarity"><img alt="clustered similarity matrix" '
        f'src="{similarity_figure(similarity, doc["behavior"])}">'
        "<figcaption>Similarity matrix S: cosine of behaviour change vectors (rows) with the top pairs of each "
        "discovered cluster (columns), both ordered by cluster; triangles mark the planted pairs.</figcaption>"
        "</figure>",
        f"<p>Wall time {doc['seconds']:.1f} s; models retrained in this run: {len(doc['retrained'])}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(doc: dict[str, Any], path: str | Path, similarity: dict[str, Any] | None = None) -> Path:
    """Render the report and write it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, render_report(doc, similarity))
    return path


__all__ = ["load_similarity", "rates_figure", "render_report", "scores_figure", "similarity_figure", "write_report"]
