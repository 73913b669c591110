"""The streaming engine: a preference dataset through M0, datapoint vectors into a vector store.

:class:`Engine` holds a model (run only up to block ℓ), its tokenizer and the tokenisation
settings. :meth:`Engine.encode_pairs` computes v_d = ā(p, r⁺) − ā(p, r⁻) for every pair of a
dataset, written shard by shard to a :class:`~headwater.engine.store.VectorStore`; resumable, and
split across processes under torchrun. (ā of single responses, for behaviour and probing vectors,
is :func:`headwater.engine.capture.response_activations`; search over a store streams its
memory-mapped shards through :func:`headwater.kernels.cosine_topk`.)

How a run flows (one process; under torchrun each rank does this for its own shards):

    dataset positions [0, N) cut into shards of ``shard_pairs``
      tokenise shard j+1 (a worker thread)  ──┐
      shard j: batches by token budget with two-key length bucketing
        → forward to block ℓ with the prompt computed once per pair (pair_forward.py; packed rows
          attend in query chunks on the CPU, attention.py)
        → masked mean pool and chosen − rejected on the device
        → pooled [b, d] to the host (asynchronous on CUDA)
      writer thread: assembles shard j, writes .npy + checksum + record, atomically
    all shards complete → pair_ids.txt and manifest.json (rank 0)

A shard's vectors depend only on its own pairs (batches never cross shards and are formed from
lengths alone), so a run killed and resumed, a run on several processes, and one uninterrupted
run all write the same bytes.

Host memory stays flat as the dataset grows: a tokenised shard waits as flat int32 buffers
(:class:`~headwater.engine.pair_forward.PairTokens`, 4 bytes a token rather than about 40 in lists of
Python ints), only the batch being run exists as Python lists, and the writer holds one shard's
vectors at a time. What grows with N is the dataset itself and the pair ids of the records.
The peak also depends on the C allocator. On the CPU the engine has glibc keep freed activation
buffers in its heap (allocator.py: no page faults on every batch, 1-5% more pairs/s), where
batches of many shapes fragment it: the peak grows over the first shards' batch shapes (about
30 MiB on the tiny model), then stays (bench/bench_encode.py, ``--memory``).

(Over 500 lines on purpose: shard planning, the tokenising worker, the writer thread, resuming
and collecting other ranks' shards are one run's protocol and read best in one place.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from headwater.engine import distributed
from headwater.engine.allocator import keep_freed_memory
from headwater.engine.capture import DEFAULT_MAX_TOKENS_PER_BATCH, pad_token_id_of
from headwater.engine.devices import check_device
from headwater.engine.models import resolve_layer
from headwater.engine.pair_forward import (
    FORWARDS,
    EncodedPair,
    PairTokens,
    check_mode,
    is_long,
    pair_batches,
    prompt_sharing_mode,
)
from headwater.engine.store import (
    ShardRecord,
    StoreError,
    VectorStore,
    dataset_fingerprint,
    dtype_name,
    finish_run,
    model_fingerprint,
    read_shard_record,
    shard_is_intact,
    resumable_shards,
    start_run,
    store_lock,
    write_shard,
)
from headwater.engine.tokenization import (
    EmptyResponseError,
    OverlongError,
    TokenizationError,
    TokenizationSettings,
    encode_pair,
    settings_as_used,
)

LOG = logging.getLogger(__name__)

DEFAULT_SHARD_PAIRS = 4096
# Padded widths are not rounded by default: on the CPU, rounding to 64 tokens cut a 10,000-pair
# run from about 114 batch shapes to 5 but added about 20% padding and did not lower the peak
# memory (bench/bench_encode.py). A backend that compiles or tunes per shape may want it.
DEFAULT_PAD_MULTIPLE = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _ShardWork:
    """A tokenised shard waiting for the model (its token ids in flat int32 buffers)."""

    index: int
    start: int
    stop: int
    pair_ids: list[str] = field(default_factory=list)
    tokens: PairTokens = field(default_factory=PairTokens)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    n_truncated: int = 0
    n_tokens: int = 0


class _ShardWriter:
    """A thread that assembles pooled batches into shards and writes them while the model runs.

    The queue is bounded, so at most a few batches of pooled vectors wait in memory. An error in
    the thread is raised in the caller at its next :meth:`put` or at :meth:`close`.
    """

    def __init__(self, root: Path, dtype: str, dim: int, on_shard: Callable[[ShardRecord], None] | None) -> None:
        self.root, self.dtype, self.dim, self.on_shard = root, dtype, dim, on_shard
        self.records: list[ShardRecord] = []
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="headwater-shard-writer", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                raise RuntimeError(f"writing shards failed: {self.error}") from self.error
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> list[ShardRecord]:
        if self._thread.is_alive():
            self.put(None)
            self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"writing shards failed: {self.error}") from self.error
        return self.records

    def _run(self) -> None:
        work: _ShardWork | None = None
        buffer = np.empty((0, self.dim), dtype=np.float32)
        filled = 0
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if isinstance(item, _ShardWork):
                    work, filled = item, 0
                    buffer = np.empty((len(work.pair_ids), self.dim), dtype=np.float32)
                else:
                    rows, vectors, event = item
                    if event is not None:
                        event.synchronize()  # the device-to-host copy of this batch is done
                    buffer[rows] = vectors.numpy()
                    filled += len(rows)
                if work is not None and filled == len(work.pair_ids):
                    record = ShardRecord(
                        work.index, work.start, work.stop, 0, "", pair_ids=work.pair_ids,
                        skipped=work.skipped, n_truncated=work.n_truncated, n_tokens=work.n_tokens,
                    )
                    self.records.append(write_shard(self.root, record, buffer, self.dtype))
                    work = None
                    if self.on_shard is not None:
                        self.on_shard(record)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.error = err


def _to_host(pooled: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Start copying pooled vectors to the host; returns (host tensor, CUDA event or None)."""
    if pooled.device.type != "cuda":
        return pooled.cpu(), None
    host = torch.empty(pooled.shape, dtype=pooled.dtype, pin_memory=True)
    host.copy_(pooled, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _text_config(model: nn.Module) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


class Engine:
    """Datapoint vectors of preference data on a model read at block ℓ.

    Args:
        model: a transformers causal LM (M0). Only blocks 1..ℓ ever run.
        tokenizer: its tokenizer (needs a pad or EOS token).
        layer: 1-based block ℓ, negative from the end, or None for the default (5/8 of the depth).
        device: move the model there (default: where it is).
        dtype: cast the model to ``"float32"``, ``"bfloat16"`` or ``"float16"`` (default: as is).
        settings: how (prompt, response) become tokens (raw or chat; max length; over-long policy).
            Without a ``max_length`` the model's context length (``max_position_embeddings``) is
            used: a pair longer than the model can read is truncated or skipped by the policy, and
            counted, instead of building attention masks for an unbounded sequence.
        max_tokens_per_batch: padded tokens in one forward pass.
        pad_multiple: round every padded width up to a multiple of this many tokens (1: pad to
            the longest row only): fewer distinct batch shapes for more padding.
        share_prompt: encode the prompt shared by chosen and rejected once (see
            :mod:`headwater.engine.pair_forward`): ``"auto"`` uses ``"packed"`` or else ``"kv_cache"``,
            whichever a check on the model shows exact, or else separate sequences; ``True``
            requires one of them (error when neither works); ``"packed"`` or ``"kv_cache"``
            requires that one; ``False`` runs the two sides as separate sequences.
        model_name: what the manifest records as the model (default: the config's name or path).
        tune_allocator: on the CPU, raise glibc's malloc thresholds so that freed activation
            buffers are reused instead of page-faulted in again for every op (1-5% more
            pairs/s measured; process-wide, see :mod:`headwater.engine.allocator`).
        on_error: a pair that cannot be tokenised (a conversation the chat template cannot
            render, text a tokenizer refuses): ``"raise"`` names it and stops, ``"skip"`` records
            it with its reason in the manifest's ``skipped_pairs``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        layer: int | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        settings: TokenizationSettings = TokenizationSettings(),
        max_tokens_per_batch: int = DEFAULT_MAX_TOKENS_PER_BATCH,
        share_prompt: bool | Literal["auto", "packed", "kv_cache"] = "auto",
        model_name: str | None = None,
        pad_multiple: int = DEFAULT_PAD_MULTIPLE,
        tune_allocator: bool = True,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be positive, got {max_tokens_per_batch}")
        if pad_multiple < 1:
            raise ValueError(f"pad_multiple must be positive, got {pad_multiple}")
        if share_prompt not in (True, False, "auto", "packed", "kv_cache"):
            raise ValueError(f"share_prompt must be True, False, 'auto', 'packed' or 'kv_cache', got {share_prompt!r}")
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES[dtype]
        if device is not None:
            device = check_device(device)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        self.model = model.eval()
        if tune_allocator and self.device.type == "cpu":
            keep_freed_memory()
        self.tokenizer = tokenizer
        self.layer = resolve_layer(model, layer)
        self.on_error = on_error
        context = getattr(_text_config(model), "max_position_embeddings", None)
        if settings.max_length is None and isinstance(context, int) and context > 1:
            LOG.info("no max_length given: pairs are limited to the model's context length, %d tokens (%s)",
                     context, settings.overlong)
            settings = dataclasses.replace(settings, max_length=context)
        self.settings = settings
        self.max_tokens_per_batch = max_tokens_per_batch
        self.pad_multiple = pad_multiple
        self.pad_token_id = pad_token_id_of(tokenizer)
        self.model_name = model_name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
        self.fingerprint = model_fingerprint(model)
        self.dim = int(_text_config(model).hidden_size)
        self._share_request = share_prompt
        self._mode: str | None = "separate" if share_prompt is False else None

    # -----------------------------------------------------------------------------------------
    # properties

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def model_dtype(self) -> str:
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def prompt_sharing(self) -> str:
        """How pairs run: ``"packed"``, ``"kv_cache"`` or ``"separate"`` (decided on first use
        by checking the model, then fixed)."""
        if self._mode is None:
            request = self._share_request
            if request in ("packed", "kv_cache"):
                ok, reason = check_mode(self.model, self.layer, request, pad_token_id=self.pad_token_id)
                if not ok:
                    raise ValueError(f"share_prompt={request!r} does not work on this model: {reason}")
                self._mode = request
            else:
                self._mode, reasons = prompt_sharing_mode(self.model, self.layer, pad_token_id=self.pad_token_id)
                if self._mode == "separate" and request is True:
                    raise ValueError(f"share_prompt=True but the prompt cannot be shared on this model: {'; '.join(reasons)}")
                if self._mode == "separate":
                    LOG.info("encoding both sides of each pair separately: %s", "; ".join(reasons))
        return self._mode

    @property
    def share_prompt(self) -> bool:
        """Whether the prompt of a pair is encoded once."""
        return self.prompt_sharing != "separate"

    # -----------------------------------------------------------------------------------------
    # vectors

    def pair_differences(self, pairs: Sequence[EncodedPair]) -> torch.Tensor:
        """[B, d] float32 datapoint vectors of one batch of encoded pairs, on the model's device."""
        mode = self.prompt_sharing
        if mode == "kv_cache" and any(chosen.prompt_length == 0 for chosen, _ in pairs):
            mode = "separate"  # a prompt cache needs at least one prompt token
        if any(is_long(c.prompt_length, c.response_length, r.response_length) for c, r in pairs):
            mode = "long"  # _batches gives such a pair a batch of its own
        return FORWARDS[mode](
            self.model, pairs, self.layer, pad_token_id=self.pad_token_id, pad_multiple=self.pad_multiple
        )

    def _batches(self, tokens: PairTokens) -> list[list[int]]:
        """Batches of indices into ``tokens``. Under ``"kv_cache"``, pairs without prompt tokens
        never share a batch with pairs that have some (they cannot use the prompt cache). A pair
        longer than :data:`~headwater.engine.pair_forward.LONG_ROW_TOKENS` is a batch of its own,
        run without any attention mask (:func:`~headwater.engine.pair_forward.pair_differences_long`)."""
        mode = self.prompt_sharing
        p, c, r = tokens.prompt_lengths, tokens.chosen_lengths, tokens.rejected_lengths
        long: list[int] = []
        rest: list[int] = []
        for i in range(len(tokens)):
            (long if is_long(p[i], c[i], r[i]) else rest).append(i)
        groups = [(rest, mode)]
        if mode == "kv_cache":
            groups = [
                ([i for i in rest if p[i] > 0], "kv_cache"),
                ([i for i in rest if p[i] == 0], "separate"),
            ]
        batches: list[list[int]] = [[i] for i in long]  # too long to pack: one pair, each side alone
        for group, group_mode in groups:
            for batch in pair_batches(
                [p[i] for i in group], [c[i] for i in group], [r[i] for i in group], self.max_tokens_per_batch,
                mode=group_mode, pad_multiple=self.pad_multiple,
            ):
                batches.append([group[i] for i in batch])
        return batches

    # -----------------------------------------------------------------------------------------
    # datasets

    def _tokenize(self, pairs: Sequence[Any], index: int, start: int, stop: int) -> _ShardWork:
        work = _ShardWork(index, start, stop)
        for position in range(start, stop):
            pair = pairs[position]
            try:
                chosen, rejected = encode_pair(self.tokenizer, pair, self.settings)
            except OverlongError as err:
                if self.settings.overlong == "error":
                    raise OverlongError(f"pair {position} (id {pair.pair_id}): {err}") from None
                work.skipped.append({"position": position, "pair_id": pair.pair_id, "reason": f"overlong: {err}"})
                continue
            except EmptyResponseError as err:
                work.skipped.append({"position": position, "pair_id": pair.pair_id, "reason": f"empty response: {err}"})
                continue
            except TokenizationError as err:
                if self.on_error == "raise":
                    raise type(err)(f"pair {position} (id {pair.pair_id}): {err}") from None
                work.skipped.append({"position": position, "pair_id": pair.pair_id, "reason": f"cannot tokenise: {err}"})
                continue
            work.pair_ids.append(pair.pair_id)
            work.tokens.append(chosen, rejected)
            work.n_truncated += int(chosen.truncated or rejected.truncated)
            work.n_tokens += len(chosen.input_ids) + len(rejected.input_ids)
        return work

    def run_header(
        self, pairs: Sequence[Any], *, store_dtype: str, shard_pairs: int, dataset_name: str | None = None
    ) -> dict[str, Any]:
        """What a run of :meth:`encode_pairs` computes; saved as ``run.json``, then in the manifest.

        The tokenisation is recorded as used: ``format="auto"`` becomes ``"chat"`` or ``"raw"``
        (a dataset is all message lists or all strings), so a reader rebuilds the same tokens.
        """
        settings = settings_as_used(self.settings, pairs)
        return {
            "model": self.model_name,
            "model_fingerprint": self.fingerprint,
            "layer": self.layer,
            "model_dtype": self.model_dtype,
            "tokenization": settings.to_dict(),
            "dataset": dataset_name if dataset_name is not None else str(getattr(pairs, "source", "")),
            "dataset_fingerprint": dataset_fingerprint(pairs),
            "n_pairs_in_dataset": len(pairs),
            "dtype": store_dtype,
            "shard_pairs": shard_pairs,
            "dim": self.dim,
            "prompt_sharing": self.prompt_sharing,
            "max_tokens_per_batch": self.max_tokens_per_batch,
            "pad_multiple": self.pad_multiple,
        }

    def encode_pairs(
        self,
        dataset: Sequence[Any],
        out_dir: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        shard_pairs: int = DEFAULT_SHARD_PAIRS,
        store_dtype: str | torch.dtype = "float32",
        progress: bool = True,
        dataset_name: str | None = None,
        skipped_rows: Sequence[Any] | None = None,
        on_shard: Callable[[ShardRecord], None] | None = None,
    ) -> VectorStore:
        """Datapoint vectors of every pair of ``dataset`` into a vector store at ``out_dir``.

        Args:
            dataset: pairs with ``pair_id``, ``prompt``, ``chosen``, ``rejected`` (a
                :class:`headwater.data.PreferenceDataset` or a list of ``PreferencePair``).
            out_dir: the store directory.
            resume: continue a run that was interrupted (or return the finished store) after
                checking that it was made with this model, layer, dtypes, tokenisation and
                dataset; complete shards are kept, the rest is computed.
            overwrite: replace a store or partial run already in ``out_dir``.
            shard_pairs: dataset positions per shard, the unit of writing and of resuming.
            store_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for the stored vectors
                (pooling is always float32).
            progress: show a progress bar (pairs/s, tokens/s, ETA) on rank 0.
            dataset_name: what the manifest records as the dataset (default: ``dataset.source``).
            skipped_rows: rows the loader left out, recorded in the manifest (default:
                ``dataset.skipped``; items with ``_asdict`` or dicts).
            on_shard: called with each shard's record once it is durably written (from the
                writer thread).

        Returns:
            the finished :class:`VectorStore`; ``store.summary`` holds counts and throughput.

        Raises:
            StoreError: ``out_dir`` holds another run, or (with ``resume``) one made differently.
            TokenizationError / OverlongError: a pair that cannot be encoded, named, when the
                policy is to fail.
        """
        started = time.perf_counter()
        if shard_pairs < 1:
            raise ValueError(f"shard_pairs must be positive, got {shard_pairs}")
        root = Path(out_dir)
        # One writer per store: rank 0 holds the lock for the whole run (the other ranks of the
        # same torchrun write their own shards under it); a second run gets a clear error.
        with store_lock(root) if distributed.current().is_main else contextlib.nullcontext():
            return self._encode_pairs(
                dataset, root, resume=resume, overwrite=overwrite, shard_pairs=shard_pairs, store_dtype=store_dtype,
                progress=progress, dataset_name=dataset_name, skipped_rows=skipped_rows, on_shard=on_shard,
                started=started,
            )

    def _encode_pairs(
        self, dataset: Sequence[Any], root: Path, *, resume: bool, overwrite: bool, shard_pairs: int,
        store_dtype: str | torch.dtype, progress: bool, dataset_name: str | None,
        skipped_rows: Sequence[Any] | None, on_shard: Callable[[ShardRecord], None] | None, started: float,
    ) -> VectorStore:
        store_dtype = dtype_name(store_dtype)
        rank = distributed.current()
        n = len(dataset)
        n_shards = max(1, -(-n // shard_pairs))
        header = self.run_header(dataset, store_dtype=store_dtype, shard_pairs=shard_pairs, dataset_name=dataset_name)

        finished = None
        if rank.is_main:
            finished = start_run(root, header, resume=resume, overwrite=overwrite)
        distributed.barrier()
        if not rank.is_main:  # rank 0 prepared the directory; the others check it matches
            finished = start_run(root, header, resume=True)
        if finished is not None:
            store = VectorStore.open(root, verify=rank.is_main)
            store.summary = self._summary(store, n, time.perf_counter() - started, {}, n_shards, n_shards, rank)
            LOG.info("%s is already complete (%d vectors)", root, len(store))
            return store

        mine = list(range(rank.rank, n_shards, rank.world_size))
        if not mine:
            LOG.warning(
                "rank %d of %d has no shard to encode (%d pairs in %d shard(s) of %d): lower shard_pairs "
                "(--shard-pairs) to at most %d to keep every rank busy",
                rank.rank, rank.world_size, n, n_shards, shard_pairs, max(1, -(-n // rank.world_size)),
            )
        pending, resumed = resumable_shards(root, mine, n, shard_pairs) if resume else (mine, [])
        resumed_pairs = sum(r.stop - r.start for r in resumed)
        my_pairs = sum(min(n, (i + 1) * shard_pairs) - i * shard_pairs for i in mine)
        stats = {"pairs": 0, "tokens": 0, "seconds": 0.0}
        bar = _progress_bar(my_pairs, resumed_pairs, self.layer, enabled=progress and rank.is_main)
        writer = _ShardWriter(root, store_dtype, self.dim, on_shard)
        compute_started = time.perf_counter()
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="headwater-tokenize") as pool:
                ahead: Future[_ShardWork] | None = None
                for k, index in enumerate(pending):
                    start, stop = index * shard_pairs, min(n, (index + 1) * shard_pairs)
                    work = ahead.result() if ahead is not None else self._tokenize(dataset, index, start, stop)
                    if k + 1 < len(pending):  # tokenise the next shard while this one runs
                        nxt = pending[k + 1]
                        ahead = pool.submit(
                            self._tokenize, dataset, nxt, nxt * shard_pairs, min(n, (nxt + 1) * shard_pairs)
                        )
                    else:
                        ahead = None
                    self._run_shard(work, writer, bar, stats, compute_started)
            records = writer.close()
        finally:
            bar.close()
            if writer.error is None and writer._thread.is_alive():
                writer.put(None)
        stats["seconds"] = time.perf_counter() - compute_started

        distributed.barrier()  # every rank's shards are on disk
        # The run's throughput: every rank's pairs and tokens over the slowest rank's compute time.
        stats["rank_pairs"], stats["rank_seconds"] = stats["pairs"], stats["seconds"]
        (stats["pairs"], stats["tokens"]), (stats["seconds"],) = distributed.sum_and_max(
            [stats["pairs"], stats["tokens"]], [stats["seconds"]]
        )
        if rank.is_main:
            all_records = self._collect_records(root, n_shards, resumed + records, rank.world_size > 1)
            loader_skipped = skipped_rows if skipped_rows is not None else getattr(dataset, "skipped", [])
            rows = [s._asdict() if hasattr(s, "_asdict") else dict(s) for s in loader_skipped]
            finish_run(root, header, all_records, {"skipped_rows": rows, "world_size": rank.world_size})
        distributed.barrier()
        # Rank 0 reads back every byte it finally wrote against the manifest.
        store = VectorStore.open(root, verify=rank.is_main)
        seconds = time.perf_counter() - started
        store.summary = self._summary(store, n, seconds, stats, n_shards, len(resumed), rank)
        if rank.is_main:
            LOG.info(
                "encoded %d of %d pairs (%d skipped, %d truncated) into %s in %.1f s: %s pairs/s, %s tokens/s%s",
                store.summary["n_encoded"], n, store.summary["n_skipped_pairs"], store.summary["n_truncated"],
                root, seconds, store.summary["pairs_per_second"], store.summary["tokens_per_second"],
                f"; {len(resumed)} of {n_shards} shards were already complete" if resumed else "",
            )
        return store

    def _summary(
        self, store: VectorStore, n: int, seconds: float, stats: dict[str, Any], n_shards: int, n_resumed: int,
        rank: distributed.Rank,
    ) -> dict[str, Any]:
        """Counts from the manifest; throughput of the pairs computed in this call, by all ranks
        (over the slowest rank's compute time) and by this process (``rank_pairs_per_second``)."""
        compute = stats.get("seconds", 0.0)
        rank_compute = stats.get("rank_seconds", 0.0)
        return {
            "out": str(store.root),
            "layer": self.layer,
            "n_pairs": n,
            "n_encoded": len(store),
            "n_skipped_pairs": len(store.manifest["skipped_pairs"]),
            "n_truncated": store.manifest["n_truncated"],
            "n_tokens": store.manifest["n_tokens"],
            "shards": n_shards,
            "shards_resumed": n_resumed,
            "prompt_sharing": self.prompt_sharing,
            "world_size": rank.world_size,
            "seconds": round(seconds, 3),
            "pairs_computed": int(stats.get("pairs", 0)),  # encoded in this call, all ranks
            "pairs_per_second": round(stats["pairs"] / compute, 2) if compute > 0 else None,
            "tokens_per_second": round(stats["tokens"] / compute, 1) if compute > 0 else None,
            "rank_pairs_per_second": round(stats["rank_pairs"] / rank_compute, 2) if rank_compute > 0 else None,
        }

    def _run_shard(self, work: _ShardWork, writer: _ShardWriter, bar: Any, stats: dict[str, Any], since: float) -> None:
        writer.put(work)
        if work.skipped:
            bar.update(len(work.skipped))
        for batch in self._batches(work.tokens):
            pairs = work.tokens.pairs(batch)  # Python lists for this batch only
            writer.put((batch, *_to_host(self.pair_differences(pairs))))
            stats["pairs"] += len(batch)
            stats["tokens"] += work.tokens.n_tokens(batch)
            bar.update(len(batch))
            elapsed = time.perf_counter() - since
            if elapsed > 0:
                bar.set_postfix_str(f"{stats['tokens'] / elapsed:,.0f} tok/s", refresh=False)
        work.tokens = PairTokens()  # the writer still holds the shard's ids until it is written, not its tokens

    def _collect_records(self, root: Path, n_shards: int, local: list[ShardRecord], check_others: bool) -> list[ShardRecord]:
        """Records of every shard: this rank's from memory, the other ranks' from disk (checked)."""
        by_index = {r.index: r for r in local}
        for index in range(n_shards):
            if index in by_index:
                continue
            record = read_shard_record(root, index)
            if record is None or (check_others and not shard_is_intact(root, record)):
                raise StoreError(f"{root}: shard {index} is missing or corrupt after every rank finished")
            by_index[index] = record
        return [by_index[i] for i in range(n_shards)]


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, initial: int, layer: int, *, enabled: bool) -> Any:
    """tqdm over pairs: its rate is pairs/s and its remaining time the ETA; tokens/s as postfix."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"encoding pairs (layer {layer})", unit="pair", smoothing=0.1)
