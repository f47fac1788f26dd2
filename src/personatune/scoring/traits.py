"""Trait detectors: per trait t, P(expressed) and P(contradicts) of a response, from MiniLM embeddings.

Method (details and rationale in docs/persona-evaluation.md, "Trait detection"):

1. **Three classes per trait.** For each trait a multinomial logistic regression separates
   *expressed* / *violated* / *neutral*. `traits[t]` is P(expressed), `violations[t]` is P(violated);
   the neutral class is what lets both be low at once for text that has nothing to do with the trait.
   Training data, from the persona file alone:
   - expressed: the trait's description and positive exemplars;
   - violated: its negative exemplars (and its `inverse`, when given);
   - neutral: the built-in neutral bank (scoring/trait_bank.py), optionally the other traits'
     exemplars (`other_trait_weight`, default 0);
   - optionally (`other_positive_weight`, default 0) the other traits' positives with the partial
     label "not violated" (expressed or neutral), see `_fit_multinomial`.
   `fit` adds labelled examples (e.g. stage-3 responses) on top of these.
2. **Negation.** Every exemplar is also negated by a rule (scoring/negation.py: "I love X" ->
   "I don't love X", "never" -> "always"), with the opposite label and a lower weight (a negated
   neutral utterance stays neutral, so a negation cue alone is no evidence of a violation), and the
   features are [e, n*e, n] where e is the embedding and n = 1 when the text has a negation cue.
   The n*e block lets a linear model learn how a negation changes what an embedding means; the
   augmented pairs are the evidence for it.
3. **Regularisation and class balance.** L2-penalised (strength `l2`), each class carries the
   same total weight (so 0.5 is not pulled down by the size of the neutral bank), augmented rows
   carry `AUG_WEIGHT` of their class. Fitted by Newton's method in the span of the training rows.
4. **Calibration.** One softmax temperature per trait, fitted on out-of-fold logits (5 folds;
   an exemplar and its negation always fall in the same fold), clipped to [0.5, 3]. The
   temperature changes how confident the probabilities are, never the ranking.
5. **Long responses.** A response is split into sentences; every sentence is encoded once (the
   embedder caches), and the whole-response embedding is the token-weighted mean of its sentence
   embeddings, renormalised (one encoder pass per sentence, none for the whole). Then
   traits[t] = max(P_whole, mean of the top-2 sentence P(expressed)) and
   violations[t] = max(P_whole, mean of the top-2 sentence P(violated)). A one-sentence response is just itself.

Fitted detectors are saved as `detectors.safetensors` (weights, float64) + `detectors.json`
(trait ids, temperatures are in the tensors, persona hash, method, versions) — never pickle.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from personatune.errors import DataError
from personatune.persona import PersonaSpec
from personatune.rundir import atomic_write_bytes
from personatune.scoring.negation import has_negation, negate
from personatune.scoring.trait_bank import NEUTRAL_BANK_VERSION, NEUTRAL_UTTERANCES

DETECTOR_VERSION = 2
LABELS = ("expressed", "violated", "neutral")
# Share of its class's weight that the rule-negated copies of exemplars carry: enough to teach the
# negation block, small enough that imperfect rule-made sentences do not dominate the direction.
AUG_WEIGHT = 0.1
# Weight of a persona exemplar relative to one labelled example in `fit` (exemplars are hand-written).
EXEMPLAR_WEIGHT = 1.0
DEFAULT_L2 = 0.03
# Weight of one of the other traits' exemplars in the neutral class, relative to a neutral-bank utterance.
# Default 0: on third-party Big-Five data, using correlated traits as "neutral" lowered AUROC (0.887 -> 0.875
# at 0.2, see docs); labelled data given to `fit` supplies real contrast instead.
DEFAULT_OTHER_TRAIT_WEIGHT = 0.0
# Optional: another trait's positive exemplar is in persona, so it should not contradict this trait — but it
# may or may not express it (traits correlate). It can enter as a PARTIAL label "not violated" (expressed or
# neutral, likelihood 1 - P(violated)) with this total weight relative to one class. Default 0 (not used):
# at 1.0 it cut false cross-trait violations on unseen Captain Nova sentences from 19/60 to 5/60, but it
# lowered Big-Five accuracy from 0.811 to 0.727 (docs/benchmarks.md, "Tried and reverted").
DEFAULT_OTHER_POSITIVE_WEIGHT = 0.0
NOT_VIOLATED = 3  # internal label index of the partial label {expressed, neutral}
N_FOLDS = 5
TEMPERATURE_RANGE = (0.5, 3.0)
TOP_K_SENTENCES = 2

_SENT_RE = re.compile(r"[^.!?…\n]*(?:[.!?…]+[\"')\]]*|\n|$)")


class EmbedderLike(Protocol):
    """What the detectors need from an embedder (personatune.embeddings.Embedder fits)."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


def persona_hash(spec: PersonaSpec) -> str:
    """sha256 of the persona's canonical JSON (sorted keys): ties a fitted evaluator to its persona."""
    blob = json.dumps(spec.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (split after . ! ? … and at line breaks); [text] when there is at most one."""
    parts = [p.strip() for p in _SENT_RE.findall(text)]
    parts = [p for p in parts if re.search(r"\w", p)]
    return parts if len(parts) > 1 else [text]


def _features(emb: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """[e, n*e, n, 1]: embedding, negation-gated embedding, negation cue, bias."""
    n = neg[:, None]
    return np.hstack([emb, n * emb, n, np.ones_like(n)])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _fit_multinomial(F: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float, iters: int = 30) -> np.ndarray:
    """Weighted L2 multinomial logistic regression by Newton's method; the last feature is an unpenalised bias.

    Works in the span of the training rows (w lies there at the optimum), so the Hessian is at most
    2n x 2n however wide the features are. Class 2 (neutral) is the reference with logit 0.
    Rows with y == NOT_VIOLATED carry the partial label {expressed, neutral}: their loss is
    -log(1 - P(violated)), whose gradient is that of a soft target q = (p_e, 0, p_n) / (p_e + p_n) at the
    current weights; the full multinomial Hessian bounds this term's curvature from above, so each step
    is a majorise-minimise step and the loss never rises.

    Returns:
        (3, d) weights; row 2 is zero.
    """
    X, bias = F[:, :-1], F[:, -1:]
    # Orthonormal basis of the row space: the penalty is the same in it, the problem much smaller.
    # Via the n x n Gram matrix: X = U S V^T, so X V = U S and V = X^T U / S (cheaper than an SVD when n < d).
    lam, U = np.linalg.eigh(X @ X.T)
    keep = lam > max(lam.max(), 1e-300) * 1e-10
    S = np.sqrt(lam[keep])
    U = U[:, keep]
    V = (X.T @ U) / S
    Z = np.hstack([U * S, bias])
    n, d = Z.shape
    Y = np.zeros((n, 2))
    Y[y == 0, 0] = 1.0
    Y[y == 1, 1] = 1.0
    partial = y == NOT_VIOLATED
    R = np.full(d, l2)
    R[-1] = 1e-8
    B = np.zeros((d, 2))
    for _ in range(iters if not partial.any() else 3 * iters):
        P3 = _softmax(np.hstack([Z @ B, np.zeros((n, 1))]))
        P = P3[:, :2]
        if partial.any():
            Y[partial, 0] = P3[partial, 0] / np.maximum(P3[partial, 0] + P3[partial, 2], 1e-300)
        G = Z.T @ (w[:, None] * (P - Y)) + R[:, None] * B
        H = np.zeros((2 * d, 2 * d))
        for a in range(2):
            for b in range(2):
                c = w * P[:, a] * ((a == b) - P[:, b])
                H[a * d:(a + 1) * d, b * d:(b + 1) * d] = (Z * c[:, None]).T @ Z
        H[np.diag_indices(2 * d)] += np.tile(R, 2)
        step = np.linalg.solve(H, G.T.reshape(-1)).reshape(2, d).T
        B -= step
        if np.abs(step).max() < 1e-7:
            break
    W = np.zeros((3, F.shape[1]))
    W[:2, :-1] = (V @ B[:-1]).T
    W[:2, -1] = B[-1]
    return W


def _fit_temperature(logits: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Softmax temperature minimising weighted NLL, by golden-section search on log T."""
    lo, hi = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])

    def nll(logt: float) -> float:
        p = _softmax(logits / np.exp(logt))
        # a partial label {expressed, neutral} has the probability of either
        py = np.where(y == NOT_VIOLATED, p[:, 0] + p[:, 2], p[np.arange(len(y)), np.minimum(y, 2)])
        return float(-(w * np.log(np.clip(py, 1e-12, 1.0))).sum())

    g = (np.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(40):
        if nll(c) < nll(d):
            b = d
        else:
            a = c
        c, d = b - g * (b - a), a + g * (b - a)
    return float(np.exp((a + b) / 2))


@dataclass
class _Example:
    text: str
    label: int  # index into LABELS
    weight: float
    group: int  # an exemplar and its negation share a group (same fold)


def _trait_examples(spec: PersonaSpec, trait_id: str, extra: Sequence[dict[str, Any]], other_weight: float,
                    other_positive_weight: float = 0.0) -> list[_Example]:
    """Training rows of one trait's detector (see the module docstring for the recipe)."""
    ex: list[_Example] = []
    g = 0

    def add(text: str, label: int, weight: float, augment: bool) -> None:
        nonlocal g
        ex.append(_Example(text, label, weight, g))
        flipped = negate(text) if augment else None
        if flipped is not None:
            # Negating an expressed/violated utterance swaps the two; negating a neutral one leaves it neutral,
            # which is what teaches the detector that a negation cue alone is no evidence of a violation.
            ex.append(_Example(flipped, label if label == 2 else 1 - label, -weight, g))  # weight sign marks "augmented" until balancing
        g += 1

    for t in spec.traits:
        if t.id == trait_id:
            add(t.description, 0, EXEMPLAR_WEIGHT, augment=False)
            for s in t.positive:
                add(s, 0, EXEMPLAR_WEIGHT, augment=True)
            for s in t.negative:
                add(s, 1, EXEMPLAR_WEIGHT, augment=True)
            if t.inverse:
                add(t.inverse, 1, EXEMPLAR_WEIGHT, augment=False)
        else:
            if other_weight > 0:
                for s in [t.description, *t.positive, *t.negative]:
                    add(s, 2, EXEMPLAR_WEIGHT * other_weight, augment=False)
            if other_positive_weight > 0:
                for s in t.positive:
                    add(s, NOT_VIOLATED, EXEMPLAR_WEIGHT, augment=False)
    for s in NEUTRAL_UTTERANCES:
        add(s, 2, EXEMPLAR_WEIGHT, augment=True)
    for e in extra:
        if e["trait"] == trait_id:
            add(e["text"], LABELS.index(e["label"]), 1.0, augment=False)
    # Balance: each class carries 1/3 of the weight; within a class, augmented rows carry AUG_WEIGHT.
    for c in range(3):
        orig = [e for e in ex if e.label == c and e.weight > 0]
        aug = [e for e in ex if e.label == c and e.weight < 0]
        share_aug = AUG_WEIGHT if aug and orig else (1.0 if aug else 0.0)
        so, sa = sum(e.weight for e in orig), -sum(e.weight for e in aug)
        for e in orig:
            e.weight = e.weight / so * (1 - share_aug) / 3
        for e in aug:
            e.weight = -e.weight / sa * share_aug / 3
    part = [e for e in ex if e.label == NOT_VIOLATED]
    for e in part:  # the partial rows together weigh other_positive_weight x one class
        e.weight = e.weight / sum(x.weight for x in part) * other_positive_weight / 3
    return ex


@dataclass
class TraitDetectors:
    """Per-trait 3-class detectors over MiniLM features.

    Attributes:
        trait_ids: trait ids, in persona order.
        weights: (n_traits, 3, 2*dim+2) float64 logit weights over `_features` (expressed, violated, neutral=0).
        temperatures: (n_traits,) softmax temperature per trait (calibration).
        meta: JSON metadata (persona hash, method, versions, example counts).
    """

    trait_ids: list[str]
    weights: np.ndarray
    temperatures: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def probabilities(self, emb: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P(expressed) and P(violated), each (n, n_traits), for embeddings `emb` with negation cues `neg`."""
        F = _features(emb.astype(np.float64), neg.astype(np.float64))
        logits = np.einsum("nf,tcf->ntc", F, self.weights) / self.temperatures[None, :, None]
        p = _softmax(logits)
        return p[:, :, 0], p[:, :, 1]

    def score(self, texts: Sequence[str], embedder: EmbedderLike) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        """traits and violations of each text, with sentence aggregation (module docstring, step 5).

        All sentences of all texts are encoded in one `embedder.encode` call.

        Args:
            texts: the responses.
            embedder: sentence embedder (e.g. Embedder.default()).

        Returns:
            (traits, violations): one {trait id: probability} dict per text, for each.
        """
        if not texts:
            return [], []
        sents = [split_sentences(t) for t in texts]
        flat = [s for ss in sents for s in ss]
        emb = np.asarray(embedder.encode(flat), dtype=np.float64) if flat else np.zeros((0, 1))
        offs = np.cumsum([0] + [len(ss) for ss in sents])
        whole = np.zeros((len(texts), emb.shape[1]))
        for i, ss in enumerate(sents):
            block = emb[offs[i]:offs[i + 1]]
            if len(ss) == 1:
                whole[i] = block[0]
            else:
                # token-weighted mean of sentence embeddings ~ mean pooling over the whole text
                wts = np.array([max(len(s.split()), 1) for s in ss], dtype=np.float64)
                v = wts @ block
                whole[i] = v / max(np.linalg.norm(v), 1e-12)
        pe_w, pv_w = self.probabilities(whole, np.array([has_negation(t) for t in texts]))
        multi = [i for i, ss in enumerate(sents) if len(ss) > 1]
        if multi:
            pe_s, pv_s = self.probabilities(emb, np.array([has_negation(s) for s in flat]))
        traits, violations = [], []
        for i in range(len(texts)):
            pe, pv = pe_w[i].copy(), pv_w[i].copy()
            if len(sents[i]) > 1:
                se, sv = pe_s[offs[i]:offs[i + 1]], pv_s[offs[i]:offs[i + 1]]
                k = min(TOP_K_SENTENCES, se.shape[0])
                pe = np.maximum(pe, np.sort(se, axis=0)[-k:].mean(axis=0))
                # top-2 mean, like traits: one stray sentence (often a negation idiom such as "you're not
                # alone") does not condemn a whole response on its own; measured in docs/persona-evaluation.md
                pv = np.maximum(pv, np.sort(sv, axis=0)[-k:].mean(axis=0))
            traits.append({t: float(pe[j]) for j, t in enumerate(self.trait_ids)})
            violations.append({t: float(pv[j]) for j, t in enumerate(self.trait_ids)})
        return traits, violations

    def save(self, path: str | Path) -> None:
        """Write `detectors.safetensors` (weights, temperatures) and `detectors.json` (metadata) into folder `path`, atomically."""
        from safetensors.numpy import save as st_save

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        blob = st_save({"weights": np.ascontiguousarray(self.weights, dtype=np.float64),
                        "temperatures": np.ascontiguousarray(self.temperatures, dtype=np.float64)})
        atomic_write_bytes(out / "detectors.safetensors", blob)
        meta = {**self.meta, "trait_ids": self.trait_ids, "detector_version": DETECTOR_VERSION, "labels": list(LABELS)}
        atomic_write_bytes(out / "detectors.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> "TraitDetectors":
        """Read detectors written by `save`.

        Raises:
            DataError: the files are missing, unreadable, or their shapes disagree with the metadata.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load as st_load

        p = Path(path)
        try:
            meta = json.loads((p / "detectors.json").read_text(encoding="utf-8"))
            tensors = st_load((p / "detectors.safetensors").read_bytes())
        except (OSError, ValueError, SafetensorError) as e:
            raise DataError(f"cannot read trait detectors in {p}: {e}; fix: re-run stage 4 or `Scorer.save` to write them") from None
        if not isinstance(meta, dict):
            raise DataError(f"{p / 'detectors.json'} is not a JSON object; fix: re-run stage 4 or `Scorer.save` to write it")
        w, temps, ids = tensors.get("weights"), tensors.get("temperatures"), meta.get("trait_ids")
        if w is None or temps is None or not isinstance(ids, list) or w.shape[:2] != (len(ids), 3) or temps.shape != (len(ids),):
            raise DataError(f"trait detectors in {p} are inconsistent (weights/temperatures/trait_ids do not match); fix: re-fit them")
        if meta.get("detector_version") != DETECTOR_VERSION:
            raise DataError(f"trait detectors in {p} have version {meta.get('detector_version')}, this code reads {DETECTOR_VERSION}; fix: re-fit them")
        meta = {k: v for k, v in meta.items() if k not in ("trait_ids", "detector_version", "labels")}
        return cls(trait_ids=list(ids), weights=w, temperatures=temps, meta=meta)


def _check_examples(spec: PersonaSpec, examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = set(spec.trait_ids)
    out = []
    for i, e in enumerate(examples):
        if not isinstance(e, dict) or not isinstance(e.get("text"), str) or not e.get("text", "").strip():
            raise DataError(f"labelled example {i}: needs a non-empty string 'text'; got {e!r:.80}")
        if e.get("trait") not in ids:
            raise DataError(f"labelled example {i}: trait {e.get('trait')!r} is not in the persona; available: {', '.join(sorted(ids))}")
        if e.get("label") not in LABELS:
            raise DataError(f"labelled example {i}: label {e.get('label')!r} must be one of {', '.join(LABELS)}")
        out.append(e)
    return out


def fit(spec: PersonaSpec, examples: Sequence[dict[str, Any]] = (), embedder: EmbedderLike | None = None,
        seed: int = 0, l2: float = DEFAULT_L2, other_trait_weight: float = DEFAULT_OTHER_TRAIT_WEIGHT,
        other_positive_weight: float = DEFAULT_OTHER_POSITIVE_WEIGHT) -> TraitDetectors:
    """Fit one detector per trait from the persona's exemplars plus optional labelled examples.

    Args:
        spec: the persona (its description/positive/negative exemplars are always used).
        examples: labelled data, each {"text": str, "trait": trait id, "label": "expressed" |
            "violated" | "neutral"}: the text expresses / contradicts / is neutral about the trait.
        embedder: sentence embedder (default: Embedder.default()).
        seed: seed of the fold assignment used for calibration.
        l2: L2 penalty strength.
        other_trait_weight: weight of the other traits' exemplars as "neutral" contrast (0: not used).
        other_positive_weight: total weight, relative to one class, of the other traits' positive exemplars
            as the partial label "not violated" (0: not used).

    Returns:
        The fitted detectors (calibrated).

    Raises:
        DataError: a labelled example is malformed (names its index and the fix).
    """
    if embedder is None:
        from personatune.embeddings import Embedder

        embedder = Embedder.default()
    extra = _check_examples(spec, examples)
    per_trait = {t: _trait_examples(spec, t, extra, other_trait_weight, other_positive_weight) for t in spec.trait_ids}
    texts = sorted({e.text for rows in per_trait.values() for e in rows})
    index = {t: i for i, t in enumerate(texts)}
    emb = np.asarray(embedder.encode(texts), dtype=np.float64)  # everything encoded once, in one call
    neg = np.array([has_negation(t) for t in texts])
    F_all = _features(emb, neg)
    rng = np.random.default_rng(seed)
    weights, temps, counts = [], [], {}
    for t in spec.trait_ids:
        rows = per_trait[t]
        F = F_all[[index[e.text] for e in rows]]
        y = np.array([e.label for e in rows])
        w = np.array([e.weight for e in rows]) * len(rows)
        groups = np.array([e.group for e in rows])
        W = _fit_multinomial(F, y, w, l2)
        # out-of-fold logits for the temperature: whole groups (exemplar + its negation) per fold
        ug = np.unique(groups)
        fold_of = dict(zip(ug, rng.permutation(len(ug)) % N_FOLDS))
        folds = np.array([fold_of[g] for g in groups])
        oof = np.zeros((len(rows), 3))
        for k in range(N_FOLDS):
            te = folds == k
            if te.any() and {0, 1, 2} <= set(np.unique(y[~te]).tolist()):
                oof[te] = F[te] @ _fit_multinomial(F[~te], y[~te], w[~te], l2).T
            else:
                oof[te] = F[te] @ W.T
        weights.append(W)
        temps.append(_fit_temperature(oof, y, w))
        counts[t] = {lab: int((y == i).sum()) for i, lab in enumerate(LABELS)} | {"not_violated": int((y == NOT_VIOLATED).sum())}
    meta = {"persona_hash": persona_hash(spec), "method": "3-class L2 logistic regression on [e, n*e, n] MiniLM features",
            "l2": l2, "other_trait_weight": other_trait_weight, "other_positive_weight": other_positive_weight, "aug_weight": AUG_WEIGHT, "n_folds": N_FOLDS, "seed": seed, "neutral_bank_version": NEUTRAL_BANK_VERSION,
            "n_labelled_examples": len(extra), "examples_per_trait": counts, "top_k_sentences": TOP_K_SENTENCES,
            "embedder": str(getattr(embedder, "model_path", type(embedder).__name__))}
    return TraitDetectors(trait_ids=list(spec.trait_ids), weights=np.stack(weights), temperatures=np.array(temps), meta=meta)


def build_detectors(spec: PersonaSpec, embedder: EmbedderLike | None = None, seed: int = 0) -> TraitDetectors:
    """Detectors from the persona file alone (no labelled data): `fit(spec, [], ...)`."""
    return fit(spec, (), embedder=embedder, seed=seed)
