"""Activations streamed from the model into a shuffle buffer on the device: SAE training without an on-disk cache.

An 8M-token run at d_model 768 is 25 GB of fp32 activations: more than a free Colab runtime has on disk to spare and
twice its RAM.  :class:`ActivationStream` instead runs the model on the token rows while training consumes them and
keeps only ``buffer_rows`` activations, on the training device (SAELens's ``ActivationsStore`` works the same way):

1. fill the buffer from the next token rows and shuffle it;
2. serve rows from its front as training batches until half of it has been served;
3. refill the served rows from the next token rows, shuffle the whole buffer, go to 2.

A row stays in the buffer for a random number of refills, so one batch mixes tokens of many documents and of several
refills (batches of consecutive rows would hold a handful of documents each, strongly correlated).  When the token
rows run out, the stream starts another pass over them in a new row order (seeded by the seed and the pass).

``train_sae(stream, config)`` trains from a stream as it does from a tensor.  The price is the model's forward pass:
every pass over the data harvests it again, where the on-disk cache (``activations.get_activations``) pays it once.
Stream when the activations do not fit on the disk or in RAM; use the cache when they do and several SAEs train on
the same activations.

Memory: ``buffer_rows × d_model`` values of ``storage_dtype`` on the device (262,144 × 768 in bf16: 0.4 GB; twice
that for a moment while it is shuffled), the fp32 set-up sample (``sample_rows × d_model``), the model and one
forward batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import Tensor

from absae_lib.activations import (_check_hook, _check_tokens, _forward_batch, _model_device_dtype,
                                   resolve_compute_dtype)

STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class ActivationStream:
    """Activations at ``hook_name`` for the rows of ``tokens``, harvested as they are needed, served shuffled.

    Args:
        model: a HookedTransformer (on the device the SAE trains on, normally).
        hook_name: e.g. "blocks.6.hook_resid_post".
        tokens: [n_seq, seq_len] integer token rows (``data.token_sequences``); one pass over the data is every row.
        buffer_rows: activations held at once; a larger buffer mixes better (at least 2 × the training batch).
        forward_batch: token rows per forward pass.
        seed: the shuffles (buffer and row order of each pass).
        drop_first: leave out position 0 of every row (the attention sink), as the on-disk cache does.
        storage_dtype: the buffer's dtype (float32, bfloat16 or float16); batches are served as float32.
        compute_dtype: the forward pass's dtype (None: ``activations.resolve_compute_dtype``'s default).
        sample_rows: rows of the first fill kept aside for the trainer's set-up (input scale, b_dec, held-out
            comparison, BatchTopK calibration): see :meth:`sample`.
    """

    def __init__(self, model, hook_name: str, tokens: Tensor, buffer_rows: int = 262_144, forward_batch: int = 32,
                 seed: int = 0, drop_first: bool = True, storage_dtype: torch.dtype = torch.float32,
                 compute_dtype: torch.dtype | None = None, sample_rows: int = 32_768):
        if not isinstance(tokens, Tensor) or tokens.dim() != 2:
            raise ValueError("tokens must be an integer tensor [n_seq, seq_len] (see data.token_sequences)")
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {', '.join(map(str, STORAGE_DTYPES))}, got {storage_dtype}")
        self.rows_per_seq = tokens.shape[1] - int(drop_first)
        if self.rows_per_seq < 1:
            raise ValueError(f"seq_len {tokens.shape[1]} leaves no positions once position 0 is dropped")
        self.n_rows = tokens.shape[0] * self.rows_per_seq  # rows in one pass over the tokens
        if buffer_rows < 2 or buffer_rows > self.n_rows:
            raise ValueError(f"buffer_rows must be between 2 and the {self.n_rows:,} rows of one pass over the tokens, "
                             f"got {buffer_rows:,}; lower it or stream more token rows")
        self.model, self.hook_name, self.tokens = model, hook_name, tokens
        self.buffer_rows, self.forward_batch, self.seed = buffer_rows, forward_batch, seed
        self.drop_first, self.storage_dtype, self.compute_dtype = drop_first, storage_dtype, compute_dtype
        self.sample_rows = min(sample_rows, buffer_rows)
        _check_hook(model, hook_name)
        _check_tokens(model, tokens)
        self.device, model_dtype = _model_device_dtype(model)
        self._compute_dtype = resolve_compute_dtype(model_dtype, self.device, compute_dtype)
        self._generator = torch.Generator().manual_seed(seed)
        self._source: Iterator[Tensor] | None = None
        self._pending: list[Tensor] = []  # harvested rows not yet in the buffer
        self._buffer: Tensor | None = None
        self._served = 0
        self._sample: Tensor | None = None
        self.rows_harvested = 0  # every row the model has produced so far (all passes)
        self.refills = 0

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (f"ActivationStream({self.hook_name}, {self.tokens.shape[0]:,} × {self.tokens.shape[1]} tokens = "
                f"{self.n_rows:,} rows a pass, buffer {self.buffer_rows:,} {str(self.storage_dtype)[6:]})")

    @property
    def d_in(self) -> int:
        return self._ensure_buffer().shape[1]

    # --- the harvest: an endless sequence of activation rows, pass after pass ---------------------------------------

    def _harvest(self, rows: Tensor) -> Tensor:
        """Activations [rows·positions, d] float32 on the device for token rows [b, seq_len]."""
        # no_grad entered and left here, never held across a yield: a generator that holds inference_mode or
        # no_grad between yields leaves it switched on in the caller's code (the trainer's backward would fail).
        with torch.no_grad():
            acts = _forward_batch(self.model, self.hook_name, rows.to(self.device), self._compute_dtype)
            acts = acts[:, int(self.drop_first):].flatten(0, 1).flatten(1).float()
        if not torch.isfinite(acts).all():
            raise ValueError(f"NaN or Inf in the activations at {self.hook_name!r} (compute dtype "
                             f"{self._compute_dtype}); in bf16/fp16 retry with compute_dtype=torch.float32")
        self.rows_harvested += len(acts)
        return acts

    def _passes(self, first_row: int = 0) -> Iterator[Tensor]:
        """Activation batches [rows, d] (device, float32), pass after pass, starting ``first_row`` rows in."""
        n_seq = self.tokens.shape[0]
        pass_index, skip_seq = divmod(first_row // self.rows_per_seq, n_seq)
        while True:
            order = torch.randperm(n_seq, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index))
            order = order[skip_seq:]
            for start in range(0, len(order), self.forward_batch):
                yield self._harvest(self.tokens[order[start : start + self.forward_batch]])
            pass_index, skip_seq = pass_index + 1, 0

    def _take(self, m: int) -> Tensor:
        """The next ``m`` harvested rows [m, d] in the storage dtype."""
        if self._source is None:
            self._source = self._passes()
        have = sum(len(p) for p in self._pending)
        while have < m:
            batch = next(self._source).to(self.storage_dtype)
            self._pending.append(batch)
            have += len(batch)
        rows = torch.cat(self._pending)
        self._pending = [rows[m:]] if len(rows) > m else []
        return rows[:m]

    def _shuffle(self) -> None:
        perm = torch.randperm(self.buffer_rows, generator=self._generator).to(self.device)
        self._buffer = self._buffer[perm]

    def _ensure_buffer(self) -> Tensor:
        if self._buffer is None:
            self._buffer = self._take(self.buffer_rows)
            self._shuffle()
            self._sample = self._buffer[: self.sample_rows].float().clone()
        return self._buffer

    # --- what the trainer reads -------------------------------------------------------------------------------------

    def sample(self) -> Tensor:
        """Up to ``sample_rows`` rows of the first fill, shuffled, float32 [m, d]: the trainer's set-up rows."""
        self._ensure_buffer()
        return self._sample

    def next_batch(self, batch_size: int) -> Tensor:
        """The next training batch [batch_size, d] float32 on the device; refills the buffer when half is served."""
        if not 1 <= batch_size <= self.buffer_rows // 2:
            raise ValueError(f"batch_size {batch_size} must be between 1 and half the buffer "
                             f"({self.buffer_rows // 2}); raise buffer_rows")
        buffer = self._ensure_buffer()
        if self._served + batch_size > self.buffer_rows // 2:
            buffer[: self._served] = self._take(self._served)  # the served rows make way for new ones
            self._shuffle()
            buffer, self._served = self._buffer, 0
            self.refills += 1
        out = buffer[self._served : self._served + batch_size]
        self._served += batch_size
        # a copy: a view would change under the caller when these buffer rows are refilled
        return out.to(torch.float32, copy=True)

    def skip_to(self, rows_served: int) -> None:
        """Resume after ``rows_served`` training rows without running the model on the rows already trained on.

        The buffer is filled afresh from the token rows after those the uninterrupted run had harvested by then,
        so the resumed run sees new rows in the same proportions, but not the uninterrupted run's exact batches.
        """
        if self._buffer is not None and (self._served or self.refills):
            raise RuntimeError("skip_to must come before the first batch is served")
        # An uninterrupted run had harvested the first fill plus every served row by then.
        first_row = self.buffer_rows + rows_served if rows_served else 0
        self._source, self._pending = self._passes(first_row - first_row % self.rows_per_seq), []
        self._buffer = None
        sample = self._sample
        self._ensure_buffer()
        if sample is not None:
            self._sample = sample  # the set-up rows stay those of the first fill

    def fingerprint(self) -> dict:
        """What a checkpoint remembers of this data: the shape of one pass and a hash of the tokens, hook and seed."""
        digest = hashlib.sha256()
        digest.update(self.tokens.to(torch.int64).cpu().contiguous().numpy().tobytes())
        digest.update(f"{self.hook_name}|{self.drop_first}|{self.seed}|{self.buffer_rows}".encode())
        return {"shape": [self.n_rows, self.d_in], "sample_sha256": digest.hexdigest()}
