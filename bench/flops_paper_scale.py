"""Paper-scale cost estimate: activation attribution against the gradient baseline on a 7B model.

FLOPs per token are *counted* (torch.utils.flop_counter) on the real architecture of a 7B Llama
(Llama-2-7B's shapes: 32 blocks, d 4,096, MLP 11,008, vocabulary 32,000), built on the meta device
(no weights, no memory), one sequence of --seq-len tokens:

- activation: the forward pass through the blocks up to ℓ = 5/8 of the depth (the engine stops
  there; no LM head), once per side of every pair;
- gradient (LESS for DPO, headwater.baselines.gradient): per checkpoint, the reference forward
  (adapters off), the policy forward and the backward to the LoRA adapters (rank 8 on every
  linear layer), per side of every pair; --checkpoints of them, plus the warm-up: the same passes
  over --warmup-fraction of the pairs for --warmup-epochs epochs (the optimiser step and the
  per-pair gradient einsums and projection are small and not counted).

Totals for --pairs pairs of 2 × --seq-len tokens (the paper: 378k pairs), and the ratio, which
does not depend on the pair count or length (up to attention's share):

    python bench/flops_paper_scale.py --pairs 378000 --seq-len 512
"""
from __future__ import annotations

import argparse
import json

import torch

from headwater.workflows.compare import count_flops as counted


def llama_7b(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=378_000)
    p.add_argument("--seq-len", type=int, default=512, help="tokens per side (prompt + response)")
    p.add_argument("--checkpoints", type=int, default=4)
    p.add_argument("--warmup-fraction", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=4)
    p.add_argument("--lora-rank", type=int, default=8)
    args = p.parse_args()
    T = args.seq_len
    ids = torch.zeros(1, T, dtype=torch.long, device="meta")

    layer = round(32 * 5 / 8)  # the engine's default block
    truncated = llama_7b(layer)
    activation = counted(lambda: truncated.model(input_ids=ids))

    from peft import LoraConfig, get_peft_model

    full = get_peft_model(llama_7b(32), LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                                   target_modules="all-linear", lora_dropout=0.0))

    def gradient_pass() -> None:
        with torch.no_grad(), full.disable_adapter():
            full(input_ids=ids).logits.float().log_softmax(-1)
        logp = full(input_ids=ids).logits.float().log_softmax(-1)[..., 0].sum()
        logp.backward()

    gradient = counted(gradient_pass)
    per_token = {"activation": activation / T, "gradient_pass": gradient / T}
    tokens = 2 * args.pairs * T
    passes = args.checkpoints + args.warmup_fraction * args.warmup_epochs
    totals = {"activation": per_token["activation"] * tokens, "gradient": per_token["gradient_pass"] * tokens * passes}
    ratio = totals["gradient"] / totals["activation"]
    h100_hours = {k: v / 800e12 / 3600 for k, v in totals.items()}  # at the bf16 dense peak; real runs reach less
    print(f"7B Llama, {args.pairs:,} pairs × 2 × {T} tokens = {tokens:.3g} tokens")
    print(f"activation: {per_token['activation'] / 1e9:.1f} GFLOP/token (blocks 1-{layer}) -> {totals['activation']:.3g} FLOP "
          f"({h100_hours['activation']:.1f} GPU-hours at 800 TFLOP/s)")
    print(f"gradient:   {per_token['gradient_pass'] / 1e9:.1f} GFLOP/token per pass × {passes:g} passes -> "
          f"{totals['gradient']:.3g} FLOP ({h100_hours['gradient']:.1f} GPU-hours at 800 TFLOP/s)")
    print(f"gradient / activation: {ratio:.1f}×")
    print(json.dumps({"per_token": per_token, "totals": totals, "ratio": ratio, "passes": passes,
                      "gpu_hours_at_800_tflops": h100_hours, "args": vars(args)}))


if __name__ == "__main__":
    main()
