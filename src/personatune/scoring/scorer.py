"""The persona scorer: one call turns responses into METRICS.md records (`ResponseScore`).

    >>> scorer = Scorer(spec)                                            # doctest: +SKIP
    >>> [r.consistency for r in scorer.score(["Aye, full speed ahead!"])]  # doctest: +SKIP

Per response (METRICS.md, "Per response"):

- traits / violations: the trait detectors (scoring/traits.py), optionally combined with a judge:
  p = (1 - judge_weight) * p_detector + judge_weight * p_judge, for expressed and violated alike.
- style, style_match: scoring/style.py; rules: scoring/rules.py (hard rules listed in `hard_rules`).
- consistent = max_t violations[t] < 0.5 and every hard rule passes and style_match >= 0.5 and
  mean_{t in targets (all traits if none)} traits[t] >= 0.5.
- consistency = 0 if a hard rule fails, else min(1 - max_t violations[t], style_match, that mean).
  Then consistent <=> consistency >= 0.5, exactly: the only tie where the min is 0.5 but the response
  is inconsistent is max violation == 0.5 (a violation counts at 0.5), and there consistency is set to
  the largest float below 0.5.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from personatune.errors import DataError
from personatune.persona import PersonaSpec
from personatune.rundir import atomic_write_text
from personatune.scoring.record import ResponseScore
from personatune.scoring.rules import compile_rules
from personatune.scoring.style import style_features_batch, style_match
from personatune.scoring.traits import TraitDetectors, build_detectors, persona_hash

DEFAULT_JUDGE_WEIGHT = 0.5
BELOW_HALF = math.nextafter(0.5, 0.0)


@runtime_checkable
class Judge(Protocol):
    """An LLM (or other) judge of trait expression, used beside the embedding detectors.

    `judge(persona, texts, prompts)` returns, per text, {trait id: (P(expressed), P(violated))}, both in
    [0,1]. A trait missing from a text's dict falls back to the detectors for that text.
    """

    def judge(self, persona: PersonaSpec, texts: list[str], prompts: list[str | None]) -> list[dict[str, tuple[float, float]]]: ...


def consistency_of(traits: dict[str, float], violations: dict[str, float], style_match_value: float,
                   hard_pass: bool, targets: Sequence[str]) -> tuple[bool, float]:
    """METRICS.md `consistent` and `consistency` from the parts (module docstring).

    Args:
        traits: trait id -> P(expressed).
        violations: trait id -> P(violated).
        style_match_value: style match in [0,1].
        hard_pass: every hard rule passed.
        targets: traits the prompt targets (empty: all traits count).

    Returns:
        (consistent, consistency) with consistent == (consistency >= 0.5).
    """
    ids = list(targets) if targets else list(traits)
    mean_expr = float(np.mean([traits[t] for t in ids])) if ids else 1.0
    max_viol = max(violations.values(), default=0.0)
    consistent = max_viol < 0.5 and hard_pass and style_match_value >= 0.5 and mean_expr >= 0.5
    score = 0.0 if not hard_pass else min(1.0 - max_viol, style_match_value, mean_expr)
    score = float(min(max(score, 0.0), 1.0))
    if not consistent and score >= 0.5:
        score = BELOW_HALF  # the tie max_viol == 0.5 (or rounding in 1 - v): keep the 0.5 line exact
    return consistent, score


class Scorer:
    """Scores responses against one persona.

    Args:
        persona: the persona.
        embedder: sentence embedder (default: Embedder.default()).
        detectors: fitted trait detectors (default: built from the persona file alone).
        judge: optional `Judge`; its probabilities are mixed in with weight `judge_weight`.
        judge_weight: weight of the judge in [0,1] (ignored without a judge).

    Raises:
        DataError: the detectors were fitted for other traits, or judge_weight is outside [0,1].
    """

    def __init__(self, persona: PersonaSpec, embedder: Any = None, detectors: TraitDetectors | None = None,
                 judge: Judge | None = None, judge_weight: float = DEFAULT_JUDGE_WEIGHT) -> None:
        if embedder is None:
            from personatune.embeddings import Embedder

            embedder = Embedder.default()
        if not 0.0 <= judge_weight <= 1.0:
            raise DataError(f"judge_weight {judge_weight} must be in [0, 1]; fix: e.g. 0.5")
        self.persona = persona
        self.embedder = embedder
        self.detectors = detectors if detectors is not None else build_detectors(persona, embedder=embedder)
        if list(self.detectors.trait_ids) != list(persona.trait_ids):
            raise DataError(f"detectors cover traits {self.detectors.trait_ids}, persona has {persona.trait_ids}; fix: re-fit the evaluator for this persona")
        self.judge = judge
        self.judge_weight = float(judge_weight)
        self.rules = compile_rules(persona.behaviors)

    def score(self, texts: Sequence[str], prompts: Sequence[str | None] | None = None, contexts: Sequence[str | None] | None = None,
              targets: Sequence[Sequence[str]] | None = None, ids: Sequence[str] | None = None) -> list[ResponseScore]:
        """Score responses (all encoded in one batch).

        Args:
            texts: the responses.
            prompts: the prompt of each response (used by the judge only), or None.
            contexts: context label of each response, or None.
            targets: trait ids each prompt targets (empty list: none in particular), or None.
            ids: an id per response (default "0", "1", ...).

        Returns:
            One ResponseScore per text, in order.

        Raises:
            DataError: a list's length differs from texts, or a target is not a trait of the persona.
        """
        n = len(texts)
        for name, val in (("prompts", prompts), ("contexts", contexts), ("targets", targets), ("ids", ids)):
            if val is not None and len(val) != n:
                raise DataError(f"{name} has {len(val)} items but texts has {n}; fix: pass one per text")
        known = set(self.persona.trait_ids)
        tg = [list(x) for x in targets] if targets is not None else [[] for _ in range(n)]
        for i, ts in enumerate(tg):
            bad = [t for t in ts if t not in known]
            if bad:
                raise DataError(f"targets[{i}] names unknown trait(s) {bad}; available: {', '.join(self.persona.trait_ids)}")
        traits, viols = self.detectors.score(list(texts), self.embedder)
        if self.judge is not None and n:
            verdicts = self.judge.judge(self.persona, list(texts), list(prompts) if prompts is not None else [None] * n)
            w = self.judge_weight
            for i, v in enumerate(verdicts):
                for t, (pe, pv) in v.items():
                    if t in known:
                        traits[i][t] = (1 - w) * traits[i][t] + w * float(pe)
                        viols[i][t] = (1 - w) * viols[i][t] + w * float(pv)
        feats = style_features_batch(list(texts), self.persona.style)
        out = []
        for i, text in enumerate(texts):
            sm = style_match(feats[i], self.persona.style)
            rules = self.rules(text)
            consistent, cons = consistency_of(traits[i], viols[i], sm, self.rules.hard_pass(rules), tg[i])
            out.append(ResponseScore(id=str(ids[i]) if ids is not None else str(i), traits=traits[i], violations=viols[i],
                                     style=feats[i], style_match=sm, rules=rules, consistent=consistent, consistency=cons,
                                     targets=tg[i], context=contexts[i] if contexts is not None else None,
                                     hard_rules=list(self.rules.hard_ids)))
        return out

    def save(self, path: str | Path) -> None:
        """Write the evaluator into folder `path`: detectors (safetensors + JSON) and scorer.json."""
        p = Path(path)
        self.detectors.save(p)
        meta = {"persona_hash": persona_hash(self.persona), "persona_name": self.persona.name, "judge_weight": self.judge_weight}
        atomic_write_text(p / "scorer.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_evaluator_dir(cls, persona: PersonaSpec, path: str | Path, embedder: Any = None, judge: Judge | None = None,
                           judge_weight: float | None = None) -> "Scorer":
        """A scorer with the detectors saved in `path` (by `save` or stage 4).

        `judge_weight` None: the weight saved in the folder's scorer.json (default DEFAULT_JUDGE_WEIGHT).

        Raises:
            DataError: the folder is unreadable, or was fitted for a different persona.
        """
        p = Path(path)
        det = TraitDetectors.load(p)
        want = persona_hash(persona)
        if det.meta.get("persona_hash") != want:
            raise DataError(f"evaluator {p} was fitted for a different persona (hash {str(det.meta.get('persona_hash'))[:12]}, "
                            f"this persona {want[:12]}); fix: pass the persona it was fitted with, or re-run stage 4")
        jw = DEFAULT_JUDGE_WEIGHT
        if (p / "scorer.json").is_file():
            try:
                jw = float(json.loads((p / "scorer.json").read_text(encoding="utf-8")).get("judge_weight", jw))
            except (ValueError, TypeError, AttributeError) as e:  # AttributeError: valid JSON, but not an object
                raise DataError(f"{p / 'scorer.json'} is not valid JSON ({e}); fix: re-save the evaluator") from None
        return cls(persona, embedder=embedder, detectors=det, judge=judge, judge_weight=jw if judge_weight is None else judge_weight)
