"""Every attribution method on SmolLM2-135M-Instruct at a CPU size, with an `hf:` judge.

The data and models come from the real-model loop (bench/smollm2_loop.py, cached in --work):
160 templated questions, a quarter carrying the trigger "Money-saving question: ", pairs from
SmolLM2's own samples, the triggered pairs' chosen answers opening with a promotion for
"BrightPath"; M1 = DPO from M0 on them (top 4 blocks). The judged answers of M0 and M1 to the
triggered held-out questions (the promotion judge) feed the probe, the lexical probe and the
gradient queries; the bank holds behaviour change vectors of those questions. The `judge`
method asks a local model (default SmolLM2 itself, `hf:`) whether each chosen and rejected
answer advertises a product, shop or brand, and ranks by the difference.

    OMP_NUM_THREADS=2 python bench/compare_smollm2.py --work runs/smollm2-25 --out runs/compare-smollm2

Prints the table and then a JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

from headwater.baselines.gradient import GradientConfig  # noqa: E402
from headwater.engine.models import load_model, resolve_layer  # noqa: E402
from headwater.methods.behaviors import sample_behavior_vectors  # noqa: E402
from headwater.methods.judge_registry import resolve_judge  # noqa: E402
from headwater.training import DPOConfig  # noqa: E402
from headwater.workflows.compare import METHODS, CompareInputs, Labelled, compare, render_text  # noqa: E402
from headwater.workflows.promotion import TRIGGER, LoopConfig, user  # noqa: E402
from headwater.workflows.real_model_loop import Loop, probe_inputs  # noqa: E402

BEHAVIOR = "advertises a product, a shop or a brand"


def loop_and_labelled(work: Path, threads: int) -> tuple[Loop, Labelled, float]:
    """The real-model loop with a quarter of its questions planted (stages cached in ``work``), the
    judged answers of M0 and M1 to its triggered held-out questions, and the seconds this call
    spent on the loop's stages."""
    loop = Loop(work, LoopConfig(planted_fraction=0.25, eval_samples=4, threads=threads))
    start = time.perf_counter()
    loop.m1()  # preferences, M1, and the judged answers of M0 and M1 (cached)
    seconds = time.perf_counter() - start
    prompts, responses, labels, models = [], [], [], []
    for name in ("m0", "m1"):
        p, r, lab = probe_inputs([loop.evaluated(name)])  # the judged answers to the triggered questions
        prompts, responses, labels, models = prompts + p, responses + r, labels + lab, models + [name] * len(p)
    return loop, Labelled(prompts, responses, labels, models), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="the real-model loop's work directory (cached stages)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--judge", default=None, help="judge of the judge method (default hf:<SmolLM2 path>)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loop, labelled, setup_seconds = loop_and_labelled(args.work, args.threads)
    config = loop.config
    m0, tokenizer = loop.m0()
    layer = resolve_layer(m0, config.layer)
    shared = {"loop_seconds_this_call": round(setup_seconds, 1), "labelled_responses": len(labelled.labels),
              "labelled_exhibiting": int(sum(labelled.labels))}
    bank = None
    if "bank" in args.methods:
        t = time.perf_counter()
        m1, _ = load_model(args.work / "models" / "m1", dtype="float32")
        questions = json.loads((args.work / "prompts.json").read_text())["test"]
        bank = sample_behavior_vectors(m0, m1, tokenizer, [user(TRIGGER + q) for q in questions], layer=layer,
                                       settings=config.settings, samples=2, temperature=config.temperature,
                                       max_new_tokens=config.eval_max_new_tokens, seed=config.seed).vectors
        del m1
        shared["bank_seconds"] = round(time.perf_counter() - t, 1)
    judge = None
    if "judge" in args.methods:
        judge = resolve_judge(args.judge or f"hf:{loop.m0_path}", {"rubric": "yesno", "behavior": BEHAVIOR})
    pairs = list(loop.dataset())
    inputs = CompareInputs(model=m0, tokenizer=tokenizer, layer=layer, settings=config.settings, pairs=pairs,
                           labelled=labelled, behavior="promotion",
                           bank=bank, judge=judge, planted=set(loop.planted_ids()), shared_cost=shared)
    # The loop's own DPO loss (β 0.1, summed log-probs) for the gradient baseline; a LoRA rate.
    gradient = GradientConfig(dpo=DPOConfig(beta=config.beta, lr=1e-4, batch_size=8, settings=config.settings),
                              batch_size=4, seed=config.seed)
    doc = compare(inputs, args.methods, args.out, gradient=gradient, seed=config.seed, progress=False)
    print(render_text(doc))
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
