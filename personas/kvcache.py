"""KV-cache snapshots per (conversation, adapter, persona), so switching persona back and
forth in a conversation does not re-read the whole conversation.

llama.cpp keeps one KV cache per context. A persona switch changes the prompt's start (its
own system prompt or header) and usually its LoRA adapter, under which every cached key
and value is wrong, so the engine used to throw the cache away on each switch. Before the
context moves to another (conversation, adapter, persona) key, the engine now saves its state here —
llama.cpp's serialised context (`llama_state_get_data`: the KV cells in use, a few MB) and
the tokens it holds — and restores the target key's snapshot, if there is one, so only the
tokens after that persona's last turn are evaluated. Keys hold the conversation, the
adapter's label with its version ("poet/v3", "" for the bare base) and the persona (prompt-
only personas share the bare base, not their prompt), so a snapshot never crosses
conversations, personas or adapter versions. (llama-cpp-python's own `save_state` also copies a logits buffer of up
to n_batch × vocabulary floats — 268 MB for Gemma's 262k vocabulary — and its
`LlamaRAMCache` keys states by token prefix alone, knowing nothing of adapters.)

The store is a bounded LRU measured in bytes (`engine.kv_snapshot_mb`); the oldest
snapshots go first. It is used under the engine's lock only."""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np


@dataclass
class Snapshot:
    tokens: np.ndarray  # the token ids the KV cache holds, in order
    # llama.cpp's serialised context state. A bytearray, so ctypes can hand llama.cpp
    # the very memory it was written to and is restored from, without a copy.
    state: bytearray

    @property
    def nbytes(self) -> int:
        return len(self.state) + self.tokens.nbytes


class SnapshotStore:
    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[Hashable, Snapshot] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list:
        return list(self._items)

    def put(self, key: Hashable, snapshot: Snapshot) -> None:
        self.drop(key)
        if snapshot.nbytes > self.max_bytes:
            return  # larger than the whole budget: not worth evicting everything for
        self._items[key] = snapshot
        self.bytes += snapshot.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes
            self.evictions += 1

    def get(self, key: Hashable) -> Snapshot | None:
        snap = self._items.get(key)
        if snap is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return snap

    def drop(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes

    def drop_where(self, predicate) -> int:
        doomed = [k for k in self._items if predicate(k)]
        for key in doomed:
            self.drop(key)
        return len(doomed)


def capture(llm) -> Snapshot:
    """The context's state and tokens (a llama_cpp.Llama)."""
    import llama_cpp

    size = int(llama_cpp.llama_state_get_size(llm._ctx.ctx))
    state = bytearray(size)
    # Written in place: slicing a ctypes array instead makes a list of Python ints, which
    # took 165 ms of a switch's time to first token for a 7.6 MB state (this: 2 ms).
    view = (ctypes.c_uint8 * size).from_buffer(state)
    written = int(llama_cpp.llama_state_get_data(llm._ctx.ctx, view, size))
    del view  # a bytearray cannot be resized while ctypes holds its buffer
    if written > size:
        raise RuntimeError("llama_state_get_data wrote past its buffer")
    del state[written:]
    return Snapshot(tokens=np.array(llm.input_ids[: llm.n_tokens], dtype=np.intc), state=state)


def restore(llm, snapshot: Snapshot) -> None:
    """Put a captured state back; the next prompt reuses its tokens as a cached prefix."""
    import llama_cpp

    size = len(snapshot.state)
    buf = (ctypes.c_uint8 * size).from_buffer(snapshot.state)  # read by llama.cpp, not copied
    if llama_cpp.llama_state_set_data(llm._ctx.ctx, buf, size) != size:
        llm.reset()
        raise RuntimeError("llama_state_set_data did not accept the snapshot")
    n = len(snapshot.tokens)
    llm.input_ids[:n] = snapshot.tokens
    llm.n_tokens = n
    llm._requires_eval = True  # as Llama.load_state: logits are re-derived before sampling
