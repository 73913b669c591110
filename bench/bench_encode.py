"""Engine.encode_pairs against the papers' reference recipe, on the same pairs and layer.

The reference recipe (what the attribution papers' code does): a transformers forward with
``output_hidden_states=True`` over the full depth (every block, final norm and LM head), one
sequence at a time, the prompt recomputed for each side; the response tokens of
``hidden_states[ℓ]`` are averaged and chosen − rejected is taken.

The engine: Engine.encode_pairs into a vector store (stop after block ℓ, token-budget batches
with length bucketing, the prompt encoded once in a packed ``prompt + chosen + rejected`` row,
attention in query chunks, pooling on the forward's device, a writer thread for the shards). On
the CPU the engine raises glibc's malloc thresholds (``headwater.engine.allocator``); the
setting is process-wide, so the reference, which runs in the same process after the engine is
built, gets it too. ``--untuned-allocator`` leaves glibc's defaults for both.

Both run in one process on the same pairs, interleaved block by block so that a change in the
machine's load hits both; the pairs/s ratio is measured in that one run. The vectors of the two
are compared (largest difference relative to the largest vector entry, smallest cosine).

Peak host memory: ``--memory N ...`` runs only the engine on N pairs, each N in a fresh process,
and prints its peak resident set size (``ru_maxrss``) after loading the model and building the
dataset, and after encoding; the dataset's own size (Python allocations while it is built, by
tracemalloc) and the resident size after each shard are printed with them. A flat engine grows
from one N to the next by no more than the dataset does.

The engine keeps freed activation buffers in glibc's heap (faster: no page faults on every
batch), where batches of many shapes fragment it: the peak grows until the batch shapes of a full
shard have all been seen, then stays. A 1,000-pair run with 4,096-pair shards never fills a
shard, so compare N at the same shard size (``--shard-pairs 1000``). To see glibc's defaults, or
to take the allocator's noise out of the comparison with huge-page maps that go back to the
system when freed::

    python bench/bench_encode.py --model tiny --memory 1000 10000 20000 --threads 1 --shard-pairs 1000
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=4194304 \
        python bench/bench_encode.py --model tiny --memory 1000 10000 20000 --threads 1 --untuned-allocator

    python bench/bench_encode.py --model smollm2 --pairs 1000
    python bench/bench_encode.py --model tiny --pairs 1000
    python bench/bench_encode.py --model tiny --memory 1000 10000

On a GPU (``--device cuda``), ``--model llama1b`` is a 1B-class model built from Llama-3.2-1B's
architecture (16 blocks of 2048, 32 heads with 8 KV heads, SwiGLU 8192, 128k vocabulary) with
random weights, read at block 10, tokenised with SmolLM2's tokenizer (throughput does not depend
on the weights or on which ids are used). Both sides report their model FLOP utilisation: the
forward FLOPs each needs (the reference: every block, the final norm and the LM head, both sides
in full; the engine: blocks 1..ℓ over prompt + chosen + rejected, the attention it needs) per
second, over the device's dense bf16 peak (``--peak-tflops``; known for H100/H200/A100)::

    python bench/bench_encode.py --device cuda --model smollm2 --pairs 2000 --block 1000
    python bench/bench_encode.py --device cuda --model llama1b --pairs 2000 --block 1000 --max-tokens-per-batch 65536
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch

from headwater.data import PreferencePair, make_pair
from headwater.engine.engine import DEFAULT_PAD_MULTIPLE, Engine
from headwater.engine.models import load_model, resolve_layer, smollm2_path
from headwater.engine.tokenization import TokenizationSettings, encode_pair

WORDS = (
    "the a of to and in is for that with on as it be by this are or from at an was we can will your you "
    "how what why when which who should could would please explain describe write list give tell make "
    "bread water river mountain city history science music language computer garden kitchen recipe "
    "answer question problem solution example reason result method system model data table chart story "
    "without commas lowercase briefly carefully simple clear short long first second third next finally "
    "because however therefore although while during after before between under over into through "
    "people children teacher doctor student friend family company market energy health school travel"
).split()


def synthetic_pairs(n: int, seed: int = 0) -> list[PreferencePair]:
    """English-like pairs: prompts of 10-60 words, responses of 10-90 words (about 1.3 tokens a word)."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
        return " ".join(words).capitalize() + "."

    return [make_pair(text(10, 60), " " + text(10, 90), " " + text(10, 90)) for _ in range(n)]


def tiny_organism(seed: int = 0) -> tuple[Any, Any]:
    """An organism-sized Llama (4 blocks, d=192, tied embeddings) and a 2,048-token BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [p.prompt + p.chosen + p.rejected for p in synthetic_pairs(300, seed=99)]
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=192, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tokenizer


def llama_1b(seed: int = 0) -> tuple[Any, Any]:
    """Llama-3.2-1B's architecture with random weights, and SmolLM2's tokenizer (its ids < 49,152
    are valid in the 128,256-token vocabulary)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    config = LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tokenizer


def load(name: str, dtype: str, device: str = "cpu") -> tuple[Any, Any, str]:
    if name == "tiny":
        model, tokenizer = tiny_organism()
        return model.to(device, getattr(torch, dtype)), tokenizer, "tiny organism-sized Llama (4 x 192, 2k vocab)"
    if name == "llama1b":
        model, tokenizer = llama_1b()
        return model.to(device, getattr(torch, dtype)), tokenizer, "Llama-3.2-1B architecture, random weights (16 x 2048, 128k vocab)"
    model, tokenizer = load_model(smollm2_path(), dtype=dtype, device=device)  # type: ignore[arg-type]
    return model, tokenizer, "SmolLM2-135M-Instruct (30 x 576, 49k vocab)"


# Dense bf16 peak (TFLOP/s, no sparsity) by device name, for the FLOP utilisation.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.5, "H100": 989.4,
                    "A100": 312.0}


def peak_tflops(device: str, given: float | None) -> float | None:
    if given is not None:
        return given
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def forward_flops(model: Any, encoded: list[Any], layer: int, *, reference: bool) -> float:
    """Forward FLOPs (2 per multiply-add) of one side of the comparison over ``encoded`` pairs.

    Linear layers: 2 × (parameters of a block's matrices) per token per block; attention:
    4 × heads × head_dim per (query, key) pair the causal mask allows, per block. The reference
    runs every block and the LM head over prompt + response for each side; the engine runs
    blocks 1..ℓ over prompt + chosen + rejected once, where a rejected token attends to the
    prompt and to the rejected tokens before it.
    """
    config = model.config
    blocks = model.model.layers
    block_params = sum(p.numel() for n, p in blocks[0].named_parameters() if p.dim() == 2)
    head = config.vocab_size * config.hidden_size
    width = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    total = 0.0
    for chosen, rejected in encoded:
        p, c, r = chosen.prompt_length, chosen.response_length, rejected.response_length
        if reference:
            for t in (p + c, p + r):
                total += 2 * t * (block_params * len(blocks) + head) + 4 * width * len(blocks) * t * (t + 1) / 2
        else:
            tokens = p + c + r
            keys = (p + c) * (p + c + 1) / 2 + r * p + r * (r + 1) / 2
            total += layer * (2 * tokens * block_params + 4 * width * keys)
    return total


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def reference_recipe(model: Any, tokenizer: Any, pairs: list[PreferencePair], layer: int,
                     settings: TokenizationSettings) -> torch.Tensor:
    """[N, d] float32 datapoint vectors, the papers' way (see the module docstring)."""
    out = []
    device = next(model.parameters()).device
    for pair in pairs:
        sides = []
        for enc in encode_pair(tokenizer, pair, settings):
            hidden = model(torch.tensor([enc.input_ids], device=device), output_hidden_states=True).hidden_states[layer]
            sides.append(hidden[0, enc.prompt_length :].float().mean(0))
        out.append(sides[0] - sides[1])
    return torch.stack(out).cpu()


def compare(args: argparse.Namespace) -> dict[str, Any]:
    model, tokenizer, described = load(args.model, args.dtype, args.device)
    layer = resolve_layer(model, args.layer)
    settings = TokenizationSettings()
    pairs = synthetic_pairs(args.pairs, seed=args.seed)
    engine = Engine(model, tokenizer, layer=layer, settings=settings, max_tokens_per_batch=args.max_tokens_per_batch,
                    pad_multiple=args.pad_multiple, tune_allocator=not args.untuned_allocator)
    # warm-up (first-call allocations, the shared-prompt check) on other pairs
    warm = synthetic_pairs(8, seed=args.seed + 1)
    reference_recipe(model, tokenizer, warm[:2], layer, settings)
    with tempfile.TemporaryDirectory() as tmp:
        engine.encode_pairs(warm, Path(tmp) / "warm", progress=False)

    encoded = [encode_pair(tokenizer, p, settings) for p in pairs]
    n_tokens = sum(len(c.input_ids) + len(r.input_ids) for c, r in encoded)
    t_ref = t_eng = 0.0
    ref_vectors, eng_vectors = [], []
    blocks = [pairs[i : i + args.block] for i in range(0, len(pairs), args.block)]
    with tempfile.TemporaryDirectory() as tmp:
        for number, block in enumerate(blocks):
            synchronize(args.device)
            start = time.perf_counter()
            ref_vectors.append(reference_recipe(model, tokenizer, block, layer, settings))
            synchronize(args.device)
            t_ref += time.perf_counter() - start
            start = time.perf_counter()
            store = engine.encode_pairs(block, Path(tmp) / f"block{number}", progress=False, shard_pairs=args.shard_pairs)
            synchronize(args.device)
            t_eng += time.perf_counter() - start
            eng_vectors.append(store.vectors(torch.float32))
            print(f"  block {number + 1}/{len(blocks)}: reference {t_ref:.1f} s, engine {t_eng:.1f} s so far", flush=True)
    ref = torch.cat(ref_vectors)
    eng = torch.cat(eng_vectors)
    diff = (eng - ref).abs().max().item()
    cosine = torch.nn.functional.cosine_similarity(eng.double(), ref.double(), dim=1)
    flops_ref = forward_flops(model, encoded, layer, reference=True)
    flops_eng = forward_flops(model, encoded, layer, reference=False)
    peak = peak_tflops(args.device, args.peak_tflops)
    return {
        "device": torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu",
        "model": described,
        "dtype": args.dtype,
        "layer": layer,
        "n_layers": model.config.num_hidden_layers,
        "pairs": len(pairs),
        "tokens": n_tokens,
        "prompt_sharing": engine.prompt_sharing,
        "max_tokens_per_batch": args.max_tokens_per_batch,
        "pad_multiple": args.pad_multiple,
        "threads": torch.get_num_threads(),
        "reference_seconds": round(t_ref, 2),
        "engine_seconds": round(t_eng, 2),
        "reference_pairs_per_s": round(len(pairs) / t_ref, 2),
        "engine_pairs_per_s": round(len(pairs) / t_eng, 2),
        "speedup": round(t_ref / t_eng, 2),
        "max_abs_diff": diff,
        "max_abs_diff_rel_to_max_entry": diff / ref.abs().max().item(),
        "min_cosine": cosine.min().item(),
        "reference_tflops_per_s": round(flops_ref / t_ref / 1e12, 3),
        "engine_tflops_per_s": round(flops_eng / t_eng / 1e12, 3),
        "peak_tflops": peak,
        "reference_flop_utilisation": round(flops_ref / t_ref / 1e12 / peak, 4) if peak else None,
        "engine_flop_utilisation": round(flops_eng / t_eng / 1e12 / peak, 4) if peak else None,
    }


def current_rss_mib() -> float | None:
    """The resident set size now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def memory_child(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Run in a fresh process: peak RSS (MiB) after loading the model and building the dataset,
    and after encoding n pairs; the dataset's own size; the RSS after each shard."""
    model, tokenizer, _ = load(args.model, args.dtype)
    tracemalloc.start()
    pairs = synthetic_pairs(n, seed=args.seed)
    dataset_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    engine = Engine(model, tokenizer, layer=args.layer, max_tokens_per_batch=args.max_tokens_per_batch,
                    pad_multiple=args.pad_multiple, tune_allocator=not args.untuned_allocator)
    _ = engine.share_prompt
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_shard: list[float | None] = []

    def on_shard(record: Any) -> None:
        rss = current_rss_mib()
        per_shard.append(None if rss is None else round(rss, 1))

    with tempfile.TemporaryDirectory() as tmp:
        store = engine.encode_pairs(pairs, Path(tmp) / "s", progress=False, shard_pairs=args.shard_pairs,
                                    on_shard=on_shard)
        summary = store.summary
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"pairs": n, "dataset_mib": round(dataset_bytes / 2**20, 1),
            "peak_rss_mib_before_encoding": round(before, 1), "peak_rss_mib": round(after, 1),
            "encoding_adds_mib": round(after - before, 1), "rss_mib_after_each_shard": per_shard,
            "pairs_per_s": summary["pairs_per_second"], "tokens_per_s": summary["tokens_per_second"]}


def print_memory_table(rows: list[dict[str, Any]]) -> None:
    """Peak RSS per N, and the growth from the smallest N beside the dataset's own growth."""
    print(f"\n{'pairs':>8} {'dataset MiB':>12} {'peak before MiB':>16} {'peak MiB':>9} {'encoding adds':>14}")
    for row in rows:
        print(f"{row['pairs']:>8} {row['dataset_mib']:>12.1f} {row['peak_rss_mib_before_encoding']:>16.1f} "
              f"{row['peak_rss_mib']:>9.1f} {row['encoding_adds_mib']:>14.1f}")
    first = rows[0]
    for row in rows[1:]:
        print(f"{first['pairs']} -> {row['pairs']} pairs: peak +{row['peak_rss_mib'] - first['peak_rss_mib']:.1f} MiB, "
              f"of which the dataset +{row['dataset_mib'] - first['dataset_mib']:.1f} MiB; engine beyond the dataset "
              f"+{row['peak_rss_mib'] - first['peak_rss_mib'] - (row['dataset_mib'] - first['dataset_mib']):.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2", "llama1b"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak for the FLOP utilisation (default: known GPUs)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: float32 for tiny, bfloat16 (the checkpoint's and the paper's) for smollm2")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--layer", type=int, default=None, help="default: 5/8 of the depth (19 of 30 for SmolLM2)")
    parser.add_argument("--block", type=int, default=250, help="pairs per interleaved reference/engine block")
    parser.add_argument("--shard-pairs", type=int, default=4096)
    parser.add_argument("--max-tokens-per-batch", type=int, default=8192)
    parser.add_argument("--pad-multiple", type=int, default=DEFAULT_PAD_MULTIPLE,
                        help="the engine rounds padded widths up to this multiple (1: no rounding)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory", type=int, nargs="*", default=None, metavar="N",
                        help="peak host memory of the engine alone at each N pairs, each in a fresh process")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--untuned-allocator", action="store_true",
                        help="keep glibc's malloc defaults (Engine(tune_allocator=False)); needed for GLIBC_TUNABLES to hold")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    args.dtype = args.dtype or ("float32" if args.model == "tiny" else "bfloat16")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.memory_child is not None:
        print(json.dumps(memory_child(args, args.memory_child)))
        return
    machine = {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "engine_tunes_allocator": not args.untuned_allocator,
    }
    results: dict[str, Any] = {"machine": machine, "command": " ".join(sys.argv)}
    if args.memory is not None:
        rows = []
        for n in args.memory:
            child = [sys.executable, __file__, "--model", args.model, "--dtype", args.dtype, "--memory-child", str(n),
                     "--shard-pairs", str(args.shard_pairs), "--max-tokens-per-batch", str(args.max_tokens_per_batch),
                     "--pad-multiple", str(args.pad_multiple)]
            if args.untuned_allocator:
                child.append("--untuned-allocator")
            if args.threads:
                child += ["--threads", str(args.threads)]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rows.append(json.loads(out))
            print(json.dumps(rows[-1]), flush=True)
        results["memory"] = rows
        print_memory_table(rows)
    else:
        results["compare"] = compare(args)
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
