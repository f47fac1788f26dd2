"""A persona's profile in the instrument's persona space, and trait probabilities of responses.

The trained instrument (scoring/instrument.py) is persona-relative: everything persona-specific is the
**profile**, the persona-space embeddings of

- each trait's positive side: its description and positive exemplars (plus labelled responses that express
  it, when `fit` is given labelled data, e.g. stage 3's chosen responses);
- each trait's negative side: its `inverse` and negative exemplars (plus labelled responses that violate it,
  e.g. stage 3's trait-flipped contrast);
- the persona's voice: every positive exemplar and every sentence of its example assistant turns.

Fitting is therefore only encoding (a second or two for a persona file); nothing is learned per persona.
For a response the instrument's head gives, per trait t, `traits[t]` = P(expressed) and `violations[t]` =
P(contradicts), and once per response `voice` = P(in the persona's voice rather than a plain assistant's).
A labelled example with label "neutral" is accepted and counted, but does not enter the profile.

Profiles are saved as `profile.safetensors` (embeddings) + `profile.json` (trait ids, persona hash,
instrument version and weights hash) — never pickle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personatune.errors import DataError
from personatune.persona import PersonaSpec
from personatune.rundir import atomic_write_bytes
from personatune.scoring.instrument import Instrument, centroid, sentence_weights, split_sentences

PROFILE_VERSION = 3
LABELS = ("expressed", "violated", "neutral")


def persona_hash(spec: PersonaSpec) -> str:
    """sha256 of the persona's canonical JSON (sorted keys): ties a fitted profile to its persona."""
    blob = json.dumps(spec.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def voice_sentences(spec: PersonaSpec) -> list[str]:
    """The persona's own voice: every positive exemplar and every sentence of its example assistant turns."""
    out = [s for t in spec.traits for s in t.positive]
    out += [s for ex in spec.examples for m in ex.messages if m.role == "assistant" for s in split_sentences(m.content)]
    return out


@dataclass
class Scores:
    """Trait probabilities of a batch of responses (one entry per response)."""

    traits: list[dict[str, float]]
    violations: list[dict[str, float]]
    voice: list[float]


@dataclass
class PersonaProfile:
    """Persona-space embeddings of a persona's trait sides and voice (see the module docstring).

    Attributes:
        trait_ids: trait ids, in persona order.
        pos: per trait, (k, dim) embeddings of its positive side (row 0 is the description).
        neg: per trait, (k, dim) embeddings of its negative side.
        voice_rows: (m, dim) embeddings of the persona's voice sentences.
        meta: JSON metadata (persona hash, instrument version, example counts).
    """

    trait_ids: list[str]
    pos: list[np.ndarray]
    neg: list[np.ndarray]
    voice_rows: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, texts: Sequence[str], instrument: Instrument) -> Scores:
        """traits, violations and voice of each response (all sentences encoded in one instrument call).

        Args:
            texts: the responses.
            instrument: the instrument the profile was fitted with.

        Returns:
            Scores, one entry per text.
        """
        torch = instrument._torch
        if not texts:
            return Scores([], [], [])
        sents = [split_sentences(t) for t in texts]
        _, ps = instrument.encode_both([s for ss in sents for s in ss])
        PE = [torch.from_numpy(np.asarray(p, dtype=np.float32)) for p in self.pos]
        NE = [torch.from_numpy(np.asarray(n, dtype=np.float32)) for n in self.neg]
        P = torch.stack([centroid(p) for p in PE])
        N = torch.stack([centroid(n) for n in NE])
        V = centroid(torch.from_numpy(np.asarray(self.voice_rows, dtype=np.float32)))
        G = instrument.neutral_centroid
        traits, viols, voice = [], [], []
        off = 0
        with torch.inference_mode():
            for ss in sents:
                S = torch.from_numpy(ps[off : off + len(ss)])
                off += len(ss)
                w = torch.from_numpy(sentence_weights(ss))
                W = torch.nn.functional.normalize((w[:, None] * S).sum(0), dim=0)
                v, e, vo = instrument.head(S, W, P, N, PE, NE, V, G)
                pv, pe = torch.sigmoid(v).tolist(), torch.sigmoid(e).tolist()
                traits.append(dict(zip(self.trait_ids, map(float, pe))))
                viols.append(dict(zip(self.trait_ids, map(float, pv))))
                voice.append(float(torch.sigmoid(vo)))
        return Scores(traits, viols, voice)

    def save(self, path: str | Path) -> None:
        """Write `profile.safetensors` and `profile.json` into folder `path`, atomically."""
        from safetensors.numpy import save as st_save

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"voice_rows": np.ascontiguousarray(self.voice_rows, dtype=np.float32)}
        for i, (p, n) in enumerate(zip(self.pos, self.neg)):
            tensors[f"pos.{i}"] = np.ascontiguousarray(p, dtype=np.float32)
            tensors[f"neg.{i}"] = np.ascontiguousarray(n, dtype=np.float32)
        atomic_write_bytes(out / "profile.safetensors", st_save(tensors))
        meta = {**self.meta, "trait_ids": self.trait_ids, "profile_version": PROFILE_VERSION}
        atomic_write_bytes(out / "profile.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> "PersonaProfile":
        """Read a profile written by `save`.

        Raises:
            DataError: the files are missing, unreadable, of another version, or inconsistent.
        """
        from safetensors.numpy import load as st_load

        p = Path(path)
        if (p / "detectors.json").is_file() and not (p / "profile.json").is_file():
            raise DataError(
                f"evaluator {p} was fitted by an older personatune (trait detectors); fix: re-fit it with "
                "`personatune fit` or re-run stage 4"
            )
        from safetensors import SafetensorError

        try:
            meta = json.loads((p / "profile.json").read_text(encoding="utf-8"))
            tensors = st_load((p / "profile.safetensors").read_bytes())
        except (OSError, ValueError, UnicodeDecodeError, SafetensorError) as e:
            raise DataError(
                f"cannot read the persona profile in {p}: {e}; fix: re-run stage 4 or `personatune fit`"
            ) from None
        if not isinstance(meta, dict) or meta.get("profile_version") != PROFILE_VERSION:
            got = meta.get("profile_version") if isinstance(meta, dict) else None
            raise DataError(
                f"persona profile in {p} has version {got}, this code reads {PROFILE_VERSION}; fix: re-fit it"
            )
        ids = meta.get("trait_ids")
        if (
            not isinstance(ids, list)
            or "voice_rows" not in tensors
            or any(f"pos.{i}" not in tensors or f"neg.{i}" not in tensors for i in range(len(ids)))
        ):
            raise DataError(
                f"persona profile in {p} is inconsistent (trait ids and tensors do not match); fix: re-fit it"
            )
        meta = {k: v for k, v in meta.items() if k not in ("trait_ids", "profile_version")}
        return cls(
            trait_ids=list(ids),
            pos=[tensors[f"pos.{i}"] for i in range(len(ids))],
            neg=[tensors[f"neg.{i}"] for i in range(len(ids))],
            voice_rows=tensors["voice_rows"],
            meta=meta,
        )


def check_examples(spec: PersonaSpec, examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The labelled examples, validated.

    Raises:
        DataError: an example is malformed (names its index and the fix).
    """
    ids = set(spec.trait_ids)
    out = []
    for i, e in enumerate(examples):
        if not isinstance(e, dict) or not isinstance(e.get("text"), str) or not e.get("text", "").strip():
            raise DataError(f"labelled example {i}: needs a non-empty string 'text'; got {e!r:.80}")
        if e.get("trait") not in ids:
            raise DataError(
                f"labelled example {i}: trait {e.get('trait')!r} is not in the persona; available: {', '.join(sorted(ids))}"
            )
        if e.get("label") not in LABELS:
            raise DataError(f"labelled example {i}: label {e.get('label')!r} must be one of {', '.join(LABELS)}")
        out.append(e)
    return out


def whole_embeddings(texts: Sequence[str], instrument: Instrument) -> np.ndarray:
    """Persona-space embedding of each whole response: the word-weighted mean of its sentences, renormalised."""
    if not texts:
        return np.zeros((0, instrument.dim), dtype=np.float32)
    sents = [split_sentences(t) for t in texts]
    _, ps = instrument.encode_both([s for ss in sents for s in ss])
    out, off = [], 0
    for ss in sents:
        v = sentence_weights(ss) @ ps[off : off + len(ss)]
        off += len(ss)
        out.append(v / max(float(np.linalg.norm(v)), 1e-12))
    return np.stack(out).astype(np.float32)


def fit(
    spec: PersonaSpec, examples: Sequence[dict[str, Any]] = (), instrument: Instrument | None = None
) -> PersonaProfile:
    """The persona's profile from its file, plus optional labelled responses.

    Args:
        spec: the persona (its descriptions, exemplars and examples are always used).
        examples: labelled data, each {"text": str, "trait": trait id, "label": "expressed" | "violated" |
            "neutral"}: an expressed example joins the trait's positive side, a violated one its negative side.
        instrument: the instrument (default: Instrument.default()).

    Returns:
        The profile.

    Raises:
        DataError: a labelled example is malformed, or a trait has no positive or no negative side.
    """
    inst = instrument or Instrument.default()
    extra = check_examples(spec, examples)
    texts: list[str] = []
    for t in spec.traits:
        texts += [t.description, *t.positive, *([t.inverse] if t.inverse else []), *t.negative]
    voice = voice_sentences(spec)
    _, ps = inst.encode_both(texts + voice)
    ex_pos = {t: [e["text"] for e in extra if e["trait"] == t and e["label"] == "expressed"] for t in spec.trait_ids}
    ex_neg = {t: [e["text"] for e in extra if e["trait"] == t and e["label"] == "violated"] for t in spec.trait_ids}
    pos, neg, i, counts = [], [], 0, {}
    for t in spec.traits:
        npos, nneg = 1 + len(t.positive), (1 if t.inverse else 0) + len(t.negative)
        if not t.negative and not t.inverse:
            raise DataError(f"trait {t.id}: no negative exemplar or inverse; fix: add at least 3 `negative` exemplars")
        p, n = ps[i : i + npos], ps[i + npos : i + npos + nneg]
        i += npos + nneg
        if ex_pos[t.id]:
            p = np.concatenate([p, whole_embeddings(ex_pos[t.id], inst)])
        if ex_neg[t.id]:
            n = np.concatenate([n, whole_embeddings(ex_neg[t.id], inst)])
        pos.append(p)
        neg.append(n)
        counts[t.id] = {
            "positive_side": int(len(p)),
            "negative_side": int(len(n)),
            "labelled_neutral": int(sum(1 for e in extra if e["trait"] == t.id and e["label"] == "neutral")),
        }
    meta = {
        "persona_hash": persona_hash(spec),
        "instrument_version": inst.meta.get("version"),
        "instrument_weights": inst.meta.get("weights_sha256"),
        "n_labelled_examples": len(extra),
        "sides": counts,
    }
    return PersonaProfile(trait_ids=list(spec.trait_ids), pos=pos, neg=neg, voice_rows=ps[i:], meta=meta)


def build_profile(spec: PersonaSpec, instrument: Instrument | None = None) -> PersonaProfile:
    """The profile from the persona file alone (no labelled data): `fit(spec, ())`."""
    return fit(spec, (), instrument=instrument)
