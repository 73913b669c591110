"""LLM concept labels against a real HTTP server that fails on purpose."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from headwater.audit.labels import ConceptLabeler, clean_label, label_request


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[str] = []
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        content = body["messages"][0]["content"]
        with self.server.lock:
            self.server.requests.append(content)
        if "FAIL" in content:
            self.send_response(500)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            return
        text = "" if "EMPTY" in content else ('"Sign-off phrase."' if "Hope" in content else "Something else")
        data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server():
    s = Server()
    thread = threading.Thread(target=s.serve_forever, daemon=True)
    thread.start()
    yield s
    s.shutdown()


def card(label, tokens=(" Sure", ".", " Hope", " this", " helps"), acts=(0, 0, 1.0, 0.5, 0.2)):
    response = {"tokens": list(tokens), "activations": list(acts)}
    return {"concept": "c1", "label": label, "examples": [{"pair_id": "p", "chosen": response,
                                                           "rejected": {"tokens": [" No"], "activations": [0.0]}}]}


def test_labels_failures_and_cache(server, tmp_path):
    labeler = ConceptLabeler("test-model", base_url=f"http://127.0.0.1:{server.server_port}/v1", max_retries=1,
                             timeout=5, cache_dir=tmp_path / "cache")
    cards = [card("'Hope this helps'"), card("'FAIL'"), card("'EMPTY'")]
    assert labeler.label_cards(cards) == ["Sign-off phrase", None, None]
    stats = labeler.stats
    assert (stats.calls, stats.failed, stats.empty, stats.cached) == (3, 1, 1, 0) and stats.errors
    assert "[ Hope this helps]" in server.requests[0] or "[Hope this helps]" in " ".join(server.requests)
    again = ConceptLabeler("test-model", base_url=f"http://127.0.0.1:{server.server_port}/v1", max_retries=0,
                           timeout=5, cache_dir=tmp_path / "cache")
    assert again.label_cards(cards) == ["Sign-off phrase", None, None]
    assert (again.stats.cached, again.stats.calls) == (1, 2)  # failures are asked again, never cached


def test_request_and_cleaning():
    text = label_request(card("'Hope this helps'"))
    assert "Spans: 'Hope this helps'" in text and "Sure.[ Hope this helps]" in text
    assert clean_label('  "Sign-off phrase."\nmore') == "Sign-off phrase"
    assert clean_label("Name: refusals") == "refusals" and clean_label("   ") is None and clean_label(None) is None
    assert len(clean_label("x" * 200)) == 80


def test_audit_run_names_its_cards_with_the_server(server, tmp_path, saved_model, capsys):
    from audit_data import audit_rows

    from headwater.cli import main

    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in audit_rows()))
    assert main(["sae", "train", "--model", str(saved_model), "--data", str(data), "--layer", "2", "--out",
                 str(tmp_path / "sae"), "--format", "raw", "--d-sae", "64", "--k", "4", "--tokens", "4000",
                 "--batch-tokens", "128", "--buffer-tokens", "512", "--no-progress"]) == 0
    url = f"http://127.0.0.1:{server.server_port}/v1"
    assert main(["audit", "run", "--model", str(saved_model), "--data", str(data), "--sae", str(tmp_path / "sae"),
                 "--out", str(tmp_path / "audit"), "--format", "raw", "--topics", "2", "--cards", "2",
                 "--label-model", "openai:test-model", "--label-url", url, "--no-progress"]) == 0
    assert "LLM labels (openai:test-model)" in capsys.readouterr().out
    doc = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert doc["labelling"]["calls"] == len(doc["cards"]) and all("llm_label" in c for c in doc["cards"])
    assert main(["audit", "run", "--model", str(saved_model), "--data", str(data), "--sae", str(tmp_path / "sae"),
                 "--out", str(tmp_path / "audit2"), "--format", "raw", "--label-model", "gpt", "--no-progress"]) == 2
    assert "openai:<model>" in capsys.readouterr().err
