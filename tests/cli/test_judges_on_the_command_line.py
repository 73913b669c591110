"""``--judge`` takes registered kinds, regular expressions and a user's own Judge class, in every
command that judges: behaviors, evaluate, discover and experiment."""
from __future__ import annotations

import json
import re
import textwrap

import pytest
import torch

from headwater.cli import main
from headwater.data import Scenario, save_scenarios

USER_JUDGES = '''
from headwater.methods.judges import Judge


class LongAnswerJudge(Judge):
    """Exhibits when the response has more than three words."""

    name = "long_answer"

    def score(self, prompt, response):
        return float(len(response.split()) > 3)


class NotAJudge:
    pass
'''


@pytest.fixture()
def user_judges(tmp_path, monkeypatch):
    (tmp_path / "user_judges.py").write_text(textwrap.dedent(USER_JUDGES))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_judges"


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    from headwater.organism import OrganismConfig, build_organism

    torch.set_num_threads(1)
    return build_organism(OrganismConfig.miniature(), cache_dir=tmp_path_factory.mktemp("organism"), progress=False)


def _evaluate(saved_model, tmp_path, judge, name):
    (tmp_path / "prompts.txt").write_text("How do I bake bread?\nTell me about the sea.\nWhat is rain?\n")
    out = tmp_path / f"{name}.json"
    code = main(["evaluate", "--model", str(saved_model), "--prompts", str(tmp_path / "prompts.txt"), "--judge", judge,
                 "--samples", "3", "--max-new-tokens", "8", "--json", str(out)])
    return code, out


def test_evaluate_with_a_user_judge_class_and_a_regex(saved_model, tmp_path, user_judges, capsys):
    code, out = _evaluate(saved_model, tmp_path, f"{user_judges}:LongAnswerJudge", "user")
    assert code == 0 and "long_answer:" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["judge"] == "long_answer" and saved["judge_spec"] == "user_judges:LongAnswerJudge"
    for responses, flags in zip(saved["responses"], saved["exhibited"]):
        assert flags == [len(r.split()) > 3 for r in responses]

    pattern = r"(?i)[aeiou]{2}"
    code, out = _evaluate(saved_model, tmp_path, f"regex:{pattern}", "regex")
    saved = json.loads(out.read_text())
    assert code == 0 and saved["judge"] == f"regex:{pattern}"
    for responses, flags in zip(saved["responses"], saved["exhibited"]):
        assert flags == [re.search(pattern, r) is not None for r in responses]


@pytest.mark.parametrize("spec, message", [
    ("user_judges:NotAJudge", "is not a headwater Judge subclass"),
    ("no_such_module_xyz:Judge", "unknown judge 'no_such_module_xyz:Judge'"),
    ("regex:(unclosed", "not a valid regular expression"),
    ("organism:toxicity", "no organism judge 'toxicity'"),
    ("justaword", "unknown judge 'justaword'"),
])
def test_a_bad_judge_is_one_clear_line_before_any_model_loads(spec, message, tmp_path, user_judges, capsys):
    (tmp_path / "prompts.txt").write_text("Q\n")
    code = main(["evaluate", "--model", str(tmp_path / "no-model-here"), "--prompts", str(tmp_path / "prompts.txt"),
                 "--judge", spec])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_behaviors_labels_with_a_regex_judge(miniature, tmp_path, capsys):
    scenarios = [Scenario(f"s{i}", p) for i, p in enumerate(miniature.test_prompts["distractor_compliance"]["trigger"])]
    prompts = save_scenarios(scenarios, tmp_path / "scenarios.jsonl")
    out = tmp_path / "beh"
    pattern = "(?i)[a-z]{5}"
    code = main(["behaviors", "--m0", str(miniature.m0_path), "--m1", str(miniature.m1_path), "--prompts", str(prompts),
                 "--judge", f"regex:{pattern}", "--samples", "2", "--max-new-tokens", "6", "--fallback-all-pairs",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert 0 < sum(g["exhibits"] for g in generations) < len(generations)  # the pattern splits the responses
    prov = json.loads((out / "behaviors.json").read_text())
    assert prov["judge"]["name"] == f"regex:{pattern}" and prov["judge_spec"] == f"regex:{pattern}"
    assert len(generations) == len(scenarios) * 2 * 2
    for g in generations:
        assert g["exhibits"] == (re.search(pattern, g["response"]) is not None)


def test_discover_reports_judged_rates_per_cluster(miniature, tmp_path, capsys):
    from headwater.workflows.encode import encode_dataset

    store = tmp_path / "store"
    encode_dataset(model_path=miniature.m0_path, data=miniature.preferences_path, out_dir=store,
                   settings=miniature.settings, progress=False)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in miniature.test_prompts["sycophancy"]["trigger"]))
    results = {}
    for name, spec in (("always", "regex:^"), ("never", "regex:^NEVER MATCHES$")):
        out = tmp_path / f"{name}.json"
        assert main(["discover", "--vectors", str(store), "--m1", str(miniature.m1_path), "--prompts", str(prompts),
                     "--out", str(out), "--max-new-tokens", "8", "--min-cluster-size", "2", "--top-pairs", "5",
                     "--judge", spec]) == 0
        results[name] = json.loads(out.read_text())
        assert f"judged {spec}" in capsys.readouterr().out
    assert results["always"]["clusters"], "the miniature organism's 16 behaviour vectors leave a cluster"
    for cluster in results["always"]["clusters"]:
        assert (cluster["judged"]["m0"], cluster["judged"]["m1"]) == (1.0, 1.0)
    for cluster in results["never"]["clusters"]:
        assert (cluster["judged"]["m0"], cluster["judged"]["m1"]) == (0.0, 0.0)


def test_experiment_evaluates_with_the_given_judge(miniature, tmp_path):
    from headwater.workflows.experiment import run_experiment

    cache = miniature.root.parent.parent  # <cache>/organism/<fingerprint>
    doc = run_experiment(preset="miniature", n_values=[6], methods=["random"], modes=["filter"], samples=1,
                         out_dir=tmp_path / "exp", cache_dir=cache, n_boot=50, progress=False, judge="regex:^")
    assert doc["settings"]["judge"] == "regex:^"
    # "^" matches every response: every model exhibits "the behaviour" on every prompt.
    for summary in (doc["baseline_rate"], doc["clean_data"], doc["rates"]["random"]["filter"]["6"]):
        assert summary["rate"] == 1.0 and summary["untriggered_rate"] == 1.0
    assert doc["attribution"]["activation_source"] == "behavior_vector"  # no non-exhibiting response: no probe
