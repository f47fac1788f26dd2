"""The measurements of the stage-2 persona gate (personatune.persona_gate).

- `loo_separability`: per trait, leave-one-pair-out, the AUROC of the instrument's margin traits[t] - violations[t]
  between the trait's held-out positives and negatives (how clear the trait is to the instrument);
- `opposite_twins`: for each exemplar, the nearest exemplar on the trait's other side (the sentence it was most
  likely written against), held out with it;
- `centroid_similarity`: cosine similarity of the traits' positive centroids (redundancy);
- `_rules_parse`: every behaviour check and style phrase list compiled by the scorer's own rule engine;
- `_example_warnings`: example replies that break the persona's own hard rules or avoid-list.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from personatune.persona import PersonaSpec


def _normalize(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def opposite_twins(pos: np.ndarray, neg: np.ndarray) -> tuple[list[int], list[int]]:
    """For each positive the index of its most similar negative, and for each negative its most similar positive.

    Args:
        pos: (p, dim) embeddings of a trait's positive exemplars.
        neg: (n, dim) embeddings of its negative exemplars.

    Returns:
        (twin of each positive among the negatives, twin of each negative among the positives); empty lists when
        either side is empty.

    >>> opposite_twins(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.1, 1.0], [1.0, 0.2]]))
    ([1, 0], [1, 0])
    """
    if len(pos) == 0 or len(neg) == 0:
        return [], []
    sim = _normalize(np.asarray(pos, dtype=np.float64)) @ _normalize(np.asarray(neg, dtype=np.float64)).T
    return [int(j) for j in sim.argmax(axis=1)], [int(i) for i in sim.argmax(axis=0)]


def loo_separability(spec: PersonaSpec, instrument: Any, pairs: bool = True) -> list[dict[str, Any]]:
    """Leave-one-pair-out separability of every trait on its own exemplars (personatune.persona_gate's docstring).

    Each exemplar is held out of the profile together with its opposite twin (`opposite_twins`, in the
    instrument's persona space): persona writers put a trait's two sides on the same topics ("I won't send a
    plate out with a smear on the rim" / "Just throw it all in the pot"), and with the twin left in, the
    held-out sentence is read by its topic (nearest to its own negation) rather than by its attitude — the
    leave-one-out bias that made most hand-written, clear personas fail (docs/persona-definition.md).

    Args:
        spec: the persona.
        instrument: the persona instrument (scoring/instrument.py).
        pairs: hold out the opposite twin too (default); False = plain leave-one-out, as before 2026-12-02.

    Returns:
        Per trait: {"auroc", "accuracy", "positive", "negative"} (None where there was nothing to compare):
        AUROC of the margin traits[t] - violations[t] between held-out positives and negatives, and the share
        of exemplars on the right side of 0 (all, positives, negatives); "predictions": for each held-out
        exemplar, ("positive"|"negative", index, read), read = "expressed" when its margin is > 0, else
        "violated"; "margins": the margins, positives first.
    """
    from personatune.scoring.aggregate import auroc
    from personatune.scoring.traits import PersonaProfile, build_profile

    full = build_profile(spec, instrument=instrument)
    out: list[dict[str, Any]] = []
    for k, t in enumerate(spec.traits):
        preds: list[tuple[str, int, str]] = []
        margins: dict[str, list[float]] = {"positive": [], "negative": []}
        # rows of the profile: pos[k] = [description, *positive], neg[k] = [inverse?, *negative]
        neg_off = 1 if t.inverse else 0
        tp, tn = opposite_twins(full.pos[k][1:], full.neg[k][neg_off:]) if pairs else ([], [])
        for kind, texts in (("positive", t.positive), ("negative", t.negative)):
            for i, text in enumerate(texts):
                pos, neg = list(full.pos), list(full.neg)
                if kind == "positive":
                    p_out, n_out = [1 + i], ([neg_off + tp[i]] if tp else [])
                else:
                    p_out, n_out = ([1 + tn[i]] if tn else []), [neg_off + i]
                pos[k], neg[k] = np.delete(pos[k], p_out, axis=0), np.delete(neg[k], n_out, axis=0)
                held = PersonaProfile(full.trait_ids, pos, neg, full.voice_rows, full.meta)
                sc = held.score([text], instrument)
                m = sc.traits[0][t.id] - sc.violations[0][t.id]
                margins[kind].append(m)
                preds.append((kind, i, "expressed" if m > 0 else "violated"))
        mp, mn = margins["positive"], margins["negative"]
        right_p, right_n = sum(m > 0 for m in mp), sum(m < 0 for m in mn)
        out.append(
            {
                "auroc": auroc(mp + mn, [1] * len(mp) + [0] * len(mn)) if mp and mn else None,
                "accuracy": (right_p + right_n) / (len(mp) + len(mn)) if mp or mn else None,
                "positive": right_p / len(mp) if mp else None,
                "negative": right_n / len(mn) if mn else None,
                "predictions": preds,
                "margins": [round(float(m), 4) for m in mp + mn],
            }
        )
    return out


def centroid_similarity(pos: list[np.ndarray]) -> np.ndarray:
    """(K, K) cosine similarity of the trait centroids (normalised mean of normalised positives).

    A trait without positives gets a row and column of NaN.
    """
    k = len(pos)
    dim = next((np.asarray(p).shape[-1] for p in pos if len(p)), 1)
    cents = np.full((k, dim), np.nan)
    for i, p in enumerate(pos):
        if len(p):
            cents[i] = _normalize(_normalize(np.asarray(p, dtype=np.float64)).mean(axis=0))
    return cents @ cents.T


def _rules_parse(spec: PersonaSpec) -> tuple[float, int, list[str]]:
    """Compile every behaviour check and style phrase list with the scorer's own engine.

    Returns:
        (1.0 if all compile else 0.0, number of things compiled, error lines).
    """
    from personatune.scoring.rules import compile_rules
    from personatune.scoring.style import compile_phrases

    errors: list[str] = []
    n = 0
    for i, b in enumerate(spec.behaviors):
        if b.check is None:
            continue
        n += 1
        try:
            compile_rules([b])("probe")
        except Exception as e:  # noqa: BLE001 - any failure of a user-written rule is reported, not raised
            errors.append(f"behaviors[{i}] {b.id!r}: check does not run ({type(e).__name__}: {e})")
    for key in ("signature_phrases", "avoid_phrases"):
        n += 1
        try:
            compile_phrases(getattr(spec.style, key))
        except Exception as e:  # noqa: BLE001 - as above
            errors.append(f"style.{key}: does not compile ({type(e).__name__}: {e})")
    return (0.0 if errors else 1.0), n, errors


def _example_warnings(spec: PersonaSpec) -> list[str]:
    """Assistant turns of the example interactions that break the persona's own hard rules or avoid-list."""
    from personatune.scoring.rules import compile_rules
    from personatune.scoring.style import compile_phrases

    rules = compile_rules(spec.behaviors)
    avoid = compile_phrases(spec.style.avoid_phrases)
    out = []
    for i, ex in enumerate(spec.examples):
        for j, m in enumerate(ex.messages):
            if m.role != "assistant":
                continue
            failed = [bid for bid, ok in rules(m.content).items() if not ok and bid in rules.hard_ids]
            if failed:
                out.append(
                    f"examples[{i}].messages[{j}] breaks hard rule(s) {', '.join(failed)}; fix the example or the rule"
                )
            if avoid is not None and (hit := avoid.search(m.content)):
                out.append(
                    f"examples[{i}].messages[{j}] uses avoided phrase {hit.group(0)!r}; fix the example or style.avoid_phrases"
                )
    return out
