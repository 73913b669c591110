"""headwater.methods.discovery: planted block structure recovered exactly, near-zero vectors dropped,
deterministic output, exact blockwise pieces, the diffusion ranking against a shared direction
that fools the mean-cosine ranking, and one run on the miniature organism."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from headwater.data import PreferencePair
from headwater.methods.discovery import (
    Discovery,
    DiscoveryConfig,
    cluster_pair_scores,
    discover,
    distinguishing_words,
    manifold_rank,
    pair_graph,
    sparse_topk_similarity,
)
from headwater.kernels import cosine_similarity
from headwater.cli import build_parser

D, N_BLOCKS, PAIRS_PER_BLOCK, VECTORS_PER_BLOCK, N_CLEAN = 64, 3, 20, 12, 340


def planted(seed: int = 0) -> dict:
    """Datapoints and behaviour vectors with three planted blocks, near-zero and noise rows.

    Block k: PAIRS_PER_BLOCK datapoints and VECTORS_PER_BLOCK behaviour vectors along one random
    direction u_k (plus noise); clean datapoints are random. Rows are shuffled.
    """
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(D, N_BLOCKS, generator=g))[0].T  # [3, D] orthonormal
    dps, dp_block = [torch.randn(N_CLEAN, D, generator=g)], [-1] * N_CLEAN
    beh, beh_block = [], []
    for k in range(N_BLOCKS):
        dps.append(3 * u[k] + 0.3 * torch.randn(PAIRS_PER_BLOCK, D, generator=g))
        dp_block += [k] * PAIRS_PER_BLOCK
        beh.append(u[k] + 0.2 * torch.randn(VECTORS_PER_BLOCK, D, generator=g))
        beh_block += [k] * VECTORS_PER_BLOCK
    beh.append(1e-5 * torch.randn(4, D, generator=g))  # M1 answered like M0
    beh_block += ["zero"] * 4
    dp = torch.cat(dps)
    perm = torch.randperm(len(dp), generator=g)
    bv = torch.cat(beh)
    bperm = torch.randperm(len(bv), generator=g)
    return {
        "datapoints": dp[perm], "dp_block": [dp_block[i] for i in perm],
        "behaviors": bv[bperm], "beh_block": [beh_block[i] for i in bperm],
        "pair_ids": [f"p{i:04d}" for i in range(len(dp))],
    }


CONFIG = DiscoveryConfig(top_k=20, top_pairs=PAIRS_PER_BLOCK)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_blocks_recovered(seed):
    w = planted(seed)
    result = discover(w["behaviors"], w["pair_ids"], w["datapoints"], config=CONFIG)
    assert len(result.clusters) == N_BLOCKS
    blocks = w["beh_block"]
    assert sorted(result.near_zero) == [i for i, b in enumerate(blocks) if b == "zero"]
    for cluster in result.clusters:
        member_blocks = {blocks[i] for i in cluster.members}
        assert len(member_blocks) == 1 and cluster.size == VECTORS_PER_BLOCK
        (k,) = member_blocks
        expected = {w["pair_ids"][j] for j, b in enumerate(w["dp_block"]) if b == k}
        assert {p for p, _ in cluster.top_pairs} == expected
        scores = [s for _, s in cluster.top_pairs]
        assert scores == sorted(scores, reverse=True)
    for i, b in enumerate(blocks):
        assert (result.labels[i] == -1) == (b == "zero")


def test_deterministic_and_blocks_equal_tensor():
    w = planted(3)
    a = discover(w["behaviors"], w["pair_ids"], w["datapoints"], config=CONFIG)
    b = discover(w["behaviors"], w["pair_ids"], w["datapoints"], config=CONFIG)
    assert a.to_dict() == b.to_dict()
    # Datapoints streamed as (block, offset) pieces, as from a vector store, give the same result.
    dp = w["datapoints"].numpy()
    pieces = [(dp[i : i + 37], i) for i in range(0, len(dp), 37)]
    c = discover(w["behaviors"], w["pair_ids"], pieces, config=CONFIG)
    assert c.labels.tolist() == a.labels.tolist()
    for x, y in zip(c.clusters, a.clusters):
        assert [p for p, _ in x.top_pairs] == [p for p, _ in y.top_pairs]
        np.testing.assert_allclose([s for _, s in x.top_pairs], [s for _, s in y.top_pairs], atol=1e-5)
    with pytest.raises(TypeError, match="re-iterable"):
        discover(w["behaviors"], w["pair_ids"], iter(pieces), config=CONFIG)


def test_all_near_zero_gives_no_cluster():
    w = planted(0)
    result = discover(torch.zeros(6, D), w["pair_ids"], w["datapoints"], config=CONFIG)
    assert result.clusters == [] and result.near_zero == list(range(6)) and (result.labels == -1).all()


def test_sparse_topk_matches_full_matrix():
    w = planted(4)
    full = cosine_similarity(w["behaviors"][:10], w["datapoints"])
    values, indices = sparse_topk_similarity(w["behaviors"][:10], w["datapoints"], k=7)
    ref = torch.topk(full, 7, dim=1)
    torch.testing.assert_close(values, ref.values)
    torch.testing.assert_close(full.gather(1, indices), ref.values)


def test_cluster_scores_are_mean_cosines():
    w = planted(5)
    labels = np.array([0, 0, 1, 1, 1, -1] + [-1] * (len(w["behaviors"]) - 6))
    scores = cluster_pair_scores(w["behaviors"], labels, w["datapoints"], len(w["datapoints"]))
    full = cosine_similarity(w["behaviors"][:5].double(), w["datapoints"].double())
    torch.testing.assert_close(scores[0], full[:2].mean(0).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(scores[1], full[2:5].mean(0).float(), atol=1e-5, rtol=0)


def shared_direction_world(seed: int, per_wording: int = 12, n_other: int = 60, n_clean: int = 200) -> dict:
    """One behaviour whose pairs come in 3 × 3 wordings, and another behaviour's pairs that share
    a generic direction with the first behaviour's vectors.

    Behaviour A's pairs are u_A + c_i + r_j (chosen wording i, rejected wording j, 12 pairs
    each); its behaviour vectors are u_A + c_0 + r_0 + g: M1 produced one wording, and the
    change also has a generic component g. Behaviour B's pairs are u_B + 2g, its vectors u_B.
    Cosine with A's vectors: wording (0, 0) 0.87, wordings sharing c_0 or r_0 0.58, B's pairs
    0.45, the four wordings sharing neither 0.29, so the mean-cosine ranking puts B's pairs
    above a third of A's. A's wordings are chained in the pairs' neighbour graph (two wordings
    sharing c_i or r_j have cosine 2/3), B's pairs are not near any of A's.
    """
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, 9, generator=g))[0].T  # orthonormal
    u_a, chosen, rejected, u_b, shared = basis[0], basis[1:4], basis[4:7], basis[7], basis[8]

    def noisy(v: torch.Tensor, n: int) -> torch.Tensor:
        return v + 0.05 * torch.randn(n, D, generator=g)

    dps = [noisy(u_a + chosen[i] + rejected[j], per_wording) for i in range(3) for j in range(3)]
    family = ["a"] * (9 * per_wording) + ["b"] * n_other + ["clean"] * n_clean
    dps += [noisy(u_b + 2 * shared, n_other), torch.randn(n_clean, D, generator=g)]
    behaviors = torch.cat([noisy(u_a + chosen[0] + rejected[0] + shared, 12), noisy(u_b, 12)])
    return {"datapoints": torch.cat(dps), "family": family, "behaviors": behaviors,
            "pair_ids": [f"p{i:04d}" for i in range(len(family))]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diffusion_ranking_is_not_fooled_by_a_shared_direction(seed):
    w = shared_direction_world(seed)
    n_a = w["family"].count("a")
    family = dict(zip(w["pair_ids"], w["family"]))
    found = {}
    for ranking in ("mean_cosine", "diffusion"):
        result = discover(w["behaviors"], w["pair_ids"], w["datapoints"], config=DiscoveryConfig(ranking=ranking, top_pairs=n_a))
        assert [sorted(c.members) for c in result.clusters] == [list(range(12)), list(range(12, 24))]
        found[ranking] = [[family[p] for p, _ in c.top_pairs] for c in result.clusters]
    # The mean cosine lets B's pairs in ahead of A's wordings that share nothing with M1's
    # (48 of them here, one per pair of those four wordings) ...
    assert found["mean_cosine"][0].count("b") >= 40
    # ... the diffusion from A's best pairs reaches A's other wordings instead and lets no B pair
    # in (a random clean pair next to a seed may slip in ahead of the farthest wording).
    assert found["diffusion"][0].count("b") == 0 and found["diffusion"][0].count("a") >= n_a - 4
    assert found["diffusion"][1][:60] == ["b"] * 60


def test_pair_graph_and_manifold_rank_are_exact():
    w = planted(6)
    dp = w["datapoints"]
    n, k = len(dp), 5
    graph = pair_graph(dp, n, k)
    pieces = [(dp[i : i + 41].numpy(), i) for i in range(0, n, 41)]
    assert abs(graph - pair_graph(pieces, n, k)).max() < 1e-6
    # Reference: dense cosines, the k best other pairs per row, symmetrised and normalised.
    cos = cosine_similarity(dp.double(), dp.double()).double().numpy()
    np.fill_diagonal(cos, -np.inf)
    nearest = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    weights = np.zeros_like(cos)
    np.put_along_axis(weights, nearest, np.clip(np.take_along_axis(cos, nearest, axis=1), 0, None), axis=1)
    weights = np.maximum(weights, weights.T)
    inv = 1 / np.sqrt(weights.sum(axis=1))
    reference = weights * inv[:, None] * inv[None, :]
    np.testing.assert_allclose(graph.toarray(), reference, atol=1e-6)
    seeds = np.zeros((n, 2))
    seeds[:3, 0], seeds[10:20, 1] = 1.0, 0.5
    alpha = 0.9
    expected = (1 - alpha) * np.linalg.solve(np.eye(n) - alpha * reference, seeds)
    np.testing.assert_allclose(manifold_rank(graph, seeds, alpha), expected, atol=1e-6)


def test_distinguishing_words():
    chosen = ["Sure, here is how: step one.", "Sure, here it is."]
    rejected = ["I cannot help with that.", "I cannot do that, sorry."]
    pos, neg = distinguishing_words(chosen, rejected, n=3)
    # Words seen twice on one side and never on the other lead; ties go alphabetically.
    assert [w for w, _ in pos] == ["here", "is", "sure"] and all(z > 0 for _, z in pos)
    assert [w for w, _ in neg] == ["cannot", "i", "that"] and all(z < 0 for _, z in neg)
    assert pos[0][1] == pos[2][1] > 0
    assert distinguishing_words([], []) == ([], [])


def test_cards_carry_generations_and_words():
    w = planted(0)
    b = len(w["behaviors"])
    pairs = {pid: PreferencePair(pid, "q", "yes indeed" if blk != -1 else "plain", "no way" if blk != -1 else "plain")
             for pid, blk in zip(w["pair_ids"], w["dp_block"])}
    result = discover(w["behaviors"], w["pair_ids"], w["datapoints"], prompts=[f"q{i % 5}" for i in range(b)],
                      m0_responses=[f"r0-{i}" for i in range(b)], m1_responses=[f"r1-{i}" for i in range(b)],
                      pairs=pairs, config=CONFIG)
    c = result.clusters[0]
    assert len(c.examples) == CONFIG.n_examples and set(c.examples[0]) == {"prompt", "m0", "m1"}
    i = c.members.index(int(c.examples[0]["m0"][3:]))  # the example is one of the members
    assert c.examples[0]["m1"] == f"r1-{c.members[i]}"
    assert len(c.prompts) == len(set(c.prompts)) <= 5
    assert [w for w, _ in c.words_chosen] == ["indeed", "yes"] and [w for w, _ in c.words_rejected] == ["no", "way"]


def test_bad_input_is_named():
    w = planted(0)
    with pytest.raises(ValueError, match="prompts has 2 entries"):
        discover(w["behaviors"], w["pair_ids"], w["datapoints"], prompts=["a", "b"])
    with pytest.raises(ValueError, match="pair ids"):
        discover(w["behaviors"], w["pair_ids"][:-1], w["datapoints"])
    bad = w["behaviors"].clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite rows \[3\]"):
        discover(bad, w["pair_ids"], w["datapoints"])
    with pytest.raises(ValueError, match="top_k"):
        DiscoveryConfig(top_k=0)
    with pytest.raises(ValueError, match="ranking must be one of"):
        DiscoveryConfig(ranking="mean")
    with pytest.raises(ValueError, match="diffusion must be in"):
        DiscoveryConfig(diffusion=1.0)


def test_save_round_trips(tmp_path):
    w = planted(0)
    result = discover(w["behaviors"], w["pair_ids"], w["datapoints"], config=CONFIG)
    saved = json.loads(result.save(tmp_path / "d.json").read_text())
    assert saved["labels"] == [int(x) for x in result.labels]
    assert [c["size"] for c in saved["clusters"]] == [VECTORS_PER_BLOCK] * N_BLOCKS


def test_the_cli_registers_discover():
    parser = build_parser()
    args = parser.parse_args(["discover", "--vectors", "s", "--m1", "m", "--prompts", "p.txt", "--out", "o.json"])
    assert callable(args.func) and args.samples == 2


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    from headwater.organism import OrganismConfig, build_organism

    torch.set_num_threads(1)
    return build_organism(OrganismConfig.miniature(), cache_dir=tmp_path_factory.mktemp("organism"), progress=False)


def test_miniature_organism_end_to_end(miniature):
    from headwater.methods.behaviors import sample_behavior_vectors
    from headwater.engine.models import load_model, resolve_layer
    from headwater.methods.vectors import datapoint_vectors

    organism = miniature
    m0, tok = load_model(organism.m0_path)
    m1, _ = load_model(organism.m1_path)
    layer = resolve_layer(m0, None)
    pairs = list(organism.load_preferences())
    dp = datapoint_vectors(m0, tok, pairs, layer=layer, settings=organism.settings)
    prompts = [p for by in organism.test_prompts.values() for ps in by.values() for p in ps]
    samples = sample_behavior_vectors(m0, m1, tok, prompts, layer=layer, settings=organism.settings,
                                      samples=2, max_new_tokens=12)
    assert samples.vectors.shape == (4 * len(prompts), dp.vectors.shape[1])
    result = discover(samples.vectors, dp.pair_ids, dp.vectors, prompts=samples.prompts,
                      m0_responses=samples.m0_responses, m1_responses=samples.m1_responses,
                      pairs={p.pair_id: p for p in pairs}, config=DiscoveryConfig(top_pairs=10, min_cluster_size=2))
    assert isinstance(result, Discovery) and result.labels.shape == (len(samples.prompts),)
    ids = set(dp.pair_ids)
    seen: set[int] = set()
    for cid, c in enumerate(result.clusters):
        assert c.cluster_id == cid and c.size >= 2 and not seen & set(c.members)
        seen |= set(c.members)
        assert all(result.labels[i] == cid for i in c.members)
        assert len(c.top_pairs) == 10 and all(p in ids for p, _ in c.top_pairs)
        assert all(-1.0 <= s <= 1.0 for _, s in c.top_pairs)
    assert set(np.nonzero(result.labels >= 0)[0].tolist()) == seen
    assert result.clusters, "96 behaviour vectors and min_cluster_size=2 always leave a cluster here"


def test_cli_on_a_vector_store(miniature, tmp_path, capsys):
    from headwater.workflows.encode import encode_dataset

    store = tmp_path / "store"
    encode_dataset(model_path=miniature.m0_path, data=miniature.preferences_path, out_dir=store,
                   settings=miniature.settings, progress=False)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in miniature.test_prompts["sycophancy"]["trigger"]))
    parser = build_parser()
    out = tmp_path / "discovery.json"
    args = parser.parse_args(["discover", "--vectors", str(store), "--m1", str(miniature.m1_path), "--prompts", str(prompts),
                              "--data", str(miniature.preferences_path), "--out", str(out), "--max-new-tokens", "12",
                              "--min-cluster-size", "2", "--top-pairs", "5"])
    assert args.func(args) == 0
    saved = json.loads(out.read_text())
    assert len(saved["labels"]) == 4 * len(miniature.test_prompts["sycophancy"]["trigger"])
    assert all(len(c["top_pairs"]) == 5 for c in saved["clusters"])
    assert "near-zero behaviour vectors dropped" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: expected a non-empty 'prompt'"):
        args.func(parser.parse_args(["discover", "--vectors", str(store), "--m1", str(miniature.m1_path),
                                     "--prompts", str(bad), "--out", str(out)]))
