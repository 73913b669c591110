"""The HTML report of a real (miniature) experiment: three inline figures, the numbers, nothing external."""
from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest

from headwater.workflows.experiment import run_experiment
from headwater.workflows.tables import ci_text, pct
from headwater.workflows.report import load_similarity, render_report, write_report


class _Collect(HTMLParser):
    """Figures (by id) with their images, every attribute value, and the visible text."""

    def __init__(self):
        super().__init__()
        self.figures: dict[str, list[str]] = {}
        self.attrs: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self._figure: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.attrs += [(tag, k, v or "") for k, v in attrs.items()]
        if tag == "figure":
            self._figure = attrs.get("id")
            self.figures[self._figure] = []
        elif tag == "img" and self._figure is not None:
            self.figures[self._figure].append(attrs.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    doc = run_experiment(preset="miniature", n_values=[6], modes=["switch"], methods=["activation"],
                         samples=1, out_dir=tmp_path_factory.mktemp("exp"),
                         cache_dir=tmp_path_factory.mktemp("cache"), n_boot=200, progress=False)
    return doc


@pytest.mark.slow
def test_report_renders_three_inline_figures_and_the_numbers(experiment, tmp_path):
    path = write_report(experiment, tmp_path / "report.html")
    page = path.read_text(encoding="utf-8")
    parsed = _Collect()
    parsed.feed(page)
    parsed.close()

    assert set(parsed.figures) == {"fig-scores", "fig-rates", "fig-similarity"}
    for name, sources in parsed.figures.items():
        assert len(sources) == 1, name
        assert sources[0].startswith("data:image/png;base64,"), name
        png = base64.b64decode(sources[0].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000, name

    # Nothing is fetched: no http(s) anywhere, no src/href that is not a data URI.
    assert not re.search(r"https?://", page)
    for tag, key, value in parsed.attrs:
        if key in ("src", "href"):
            assert value.startswith("data:"), (tag, key, value[:40])
    assert "<script" not in page and "<link" not in page

    text = " ".join(parsed.text)
    base = experiment["baseline_rate"]
    assert f"{pct(base['rate'])} {ci_text(base['ci_low'], base['ci_high'])}" in text
    for method in experiment["rates"]:
        cell = experiment["rates"][method]["switch"]["6"]
        assert f"{method} switch N=6" in text
        assert f"{pct(cell['rate'])} {ci_text(cell['ci_low'], cell['ci_high'])}" in text
        assert f"{pct(cell['reduction'])} {ci_text(*cell['reduction_ci'])}" in text
        assert f"{pct(cell['untriggered_rate'])} {ci_text(*cell['untriggered_ci'])}" in text
        assert f"{cell['answer_logprob']:.3f}" in text
    assert f"{experiment['attribution']['activation']['auroc']:.3f}" in text
    clean = experiment["clean_data"]  # the ground-truth removal, as a table row and in the summary
    assert "clean data (no planted)" in text and "clean data (exactly the planted pairs removed" in text
    assert f"{pct(clean['rate'])} {ci_text(clean['ci_low'], clean['ci_high'])}" in text


@pytest.mark.slow
def test_similarity_matrix_is_ordered_by_cluster(experiment):
    sim = load_similarity(experiment["similarity_file"])
    rows, cols = sim["row_cluster"], sim["col_cluster"]
    assert sim["matrix"].shape == (len(rows), len(cols)) and len(rows) > 0 and len(cols) > 0
    assert (sim["matrix"] >= -1.0001).all() and (sim["matrix"] <= 1.0001).all()
    # Contiguous blocks: a cluster's rows (and columns) never reappear after another cluster's.
    for labels in (rows, cols):
        starts = [labels[0]] + [b for a, b in zip(labels[:-1], labels[1:]) if a != b]
        assert len(starts) == len({int(s) for s in starts})


def test_render_names_missing_inputs():
    with pytest.raises(ValueError, match="baseline_rate"):
        render_report({"rates": {}}, similarity={})
