"""Prompt-ensembled text embeddings, cached: a repeated text query costs no model forward,
and concurrent misses of one text embed it once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np


class TextEmbeddingCache:
    def __init__(self, embed: Callable[[str], np.ndarray], size: int):
        self._embed, self._size = embed, size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}

    def get(self, key: str) -> np.ndarray:
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                pending = self._inflight.get(key)
                if pending is None:
                    pending = self._inflight[key] = threading.Event()
                    break
            pending.wait()  # another request is embedding this text; then read the cache
        try:
            v = self._embed(key)
            with self._lock:
                self._cache[key] = v
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
            return v
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            pending.set()
