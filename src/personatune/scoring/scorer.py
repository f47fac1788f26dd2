"""The persona scorer: one call turns responses into METRICS.md records (`ResponseScore`).

    >>> scorer = Scorer(spec)                                            # doctest: +SKIP
    >>> [r.consistency for r in scorer.score(["Aye, full speed ahead!"])]  # doctest: +SKIP

Per response (METRICS.md, "Per response"; the parts are explained in docs/persona-evaluation.md):

- traits / violations / voice: the persona instrument (scoring/instrument.py) with the persona's profile
  (scoring/traits.py), optionally combined with a judge: p = (1 - judge_weight) * p_instrument +
  judge_weight * p_judge, for expressed and violated alike. Per-trait lexical evidence is added first, for the
  traits whose words carry them (scoring/trait_lexicon.py: selected per trait from the persona's exemplars).
- style: the style features of scoring/style.py plus `voice` (P(in the persona's voice), 0-1) and, when the
  instrument has a lexical bank, `own_voice` (scoring/lexical.py: >= 0.5 when the response's words are about as
  much this persona's as any bank persona's); style_match = min(feature match of scoring/style.py, voice,
  own_voice): the measurable style, the learned voice and this persona's own words must all hold.
- rules: scoring/rules.py (hard rules listed in `hard_rules`).
- on_task: P(the response addresses the user's last turn), from the frozen MiniLM relevance of the response
  to that turn (instrument.on_task), times the repetition factor (scoring/repetition.py: a looping answer
  is off task however relevant its words); None when no prompt is given.
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
from personatune.scoring.instrument import Instrument, sentence_weights, split_sentences
from personatune.scoring.lexical import bank_of
from personatune.scoring.record import ResponseScore
from personatune.scoring.repetition import repetition_factor, repetition_share
from personatune.scoring.rules import compile_rules
from personatune.scoring.style import style_features_batch, style_match
from personatune.scoring.trait_lexicon import WEIGHT as TRAIT_LEXICON_WEIGHT
from personatune.scoring.trait_lexicon import TraitLexicons
from personatune.scoring.traits import PersonaProfile, build_profile, persona_hash

DEFAULT_JUDGE_WEIGHT = 0.5
BELOW_HALF = math.nextafter(0.5, 0.0)


@runtime_checkable
class Judge(Protocol):
    """An LLM (or other) judge of trait expression, used beside the embedding detectors.

    `judge(persona, texts, prompts)` returns, per text, {trait id: (P(expressed), P(violated))}, both in
    [0,1]. A trait missing from a text's dict falls back to the detectors for that text.
    """

    def judge(
        self, persona: PersonaSpec, texts: list[str], prompts: list[str | None]
    ) -> list[dict[str, tuple[float, float]]]: ...


def consistency_of(
    traits: dict[str, float],
    violations: dict[str, float],
    style_match_value: float,
    hard_pass: bool,
    targets: Sequence[str],
) -> tuple[bool, float]:
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


def last_user_turn(prompt: Any) -> str | None:
    """The text the response answers: a string as it is, or the last user message of an OpenAI-style list."""
    if prompt is None or isinstance(prompt, str):
        return prompt
    for m in reversed(list(prompt)):
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
        if isinstance(m, (tuple, list)) and len(m) == 2 and m[0] == "user":
            return str(m[1])
    return None


class Scorer:
    """Scores responses against one persona.

    Args:
        persona: the persona.
        instrument: the persona instrument (default: Instrument.default()).
        profile: the persona's fitted profile (default: built from the persona file alone).
        judge: optional `Judge`; its probabilities are mixed in with weight `judge_weight`.
        judge_weight: weight of the judge in [0,1] (ignored without a judge).
        lexical: apply the lexical-bank condition (`own_voice`) when the instrument has a bank; False leaves
            it out (for comparisons in benchmarks/; the per-trait lexical evidence is set apart, below).
        trait_lexicon_weight: weight of the per-trait lexical evidence (scoring/trait_lexicon.py) when the
            instrument has a lexical bank, for the traits whose lexicon separates their own exemplars
            (`trait_lexicon.SELECT_AUROC`); 0 = off, as the scorer was before 2026-12-02 (for comparisons).

    Raises:
        DataError: the profile was fitted for other traits, or judge_weight is outside [0,1].
    """

    def __init__(
        self,
        persona: PersonaSpec,
        instrument: Instrument | None = None,
        profile: PersonaProfile | None = None,
        judge: Judge | None = None,
        judge_weight: float = DEFAULT_JUDGE_WEIGHT,
        lexical: bool = True,
        trait_lexicon_weight: float = TRAIT_LEXICON_WEIGHT,
    ) -> None:
        if not 0.0 <= judge_weight <= 1.0:
            raise DataError(f"judge_weight {judge_weight} must be in [0, 1]; fix: e.g. 0.5")
        self.persona = persona
        self.instrument = instrument or Instrument.default()
        self.profile = profile if profile is not None else build_profile(persona, instrument=self.instrument)
        if list(self.profile.trait_ids) != list(persona.trait_ids):
            raise DataError(
                f"the profile covers traits {self.profile.trait_ids}, the persona has {persona.trait_ids}; "
                "fix: re-fit the evaluator for this persona"
            )
        self.judge = judge
        self.judge_weight = float(judge_weight)
        self.rules = compile_rules(persona.behaviors)
        bank = bank_of(getattr(self.instrument, "weights_dir", None))
        self.own_voice = bank.scorer_for(persona) if bank is not None and lexical else None
        self.trait_lexicons = (
            TraitLexicons.build(persona, bank.background, trait_lexicon_weight)
            if bank is not None and trait_lexicon_weight
            else None
        )

    def on_task(self, texts: Sequence[str], prompts: Sequence[Any]) -> list[float | None]:
        """P(on task) of each response given its prompt (None where the prompt is None)."""
        asks = [last_user_turn(p) for p in prompts]
        sents = [split_sentences(t) for t in texts]
        known = [a for a in asks if a]
        fz, _ = self.instrument.encode_both([s for ss in sents for s in ss] + known)
        q_of = dict(zip(known, fz[len(fz) - len(known) :])) if known else {}
        out: list[float | None] = []
        off = 0
        for text, ss, a in zip(texts, sents, asks):
            S = fz[off : off + len(ss)]
            off += len(ss)
            if not a:
                out.append(None)
                continue
            w = sentence_weights(ss) @ S
            w = w / max(float(np.linalg.norm(w)), 1e-12)
            cos = S @ q_of[a]
            p = self.instrument.on_task(float(w @ q_of[a]), float(cos.max()))
            out.append(p * repetition_factor(repetition_share(text)))
        return out

    def score(
        self,
        texts: Sequence[str],
        prompts: Sequence[Any] | None = None,
        contexts: Sequence[str | None] | None = None,
        targets: Sequence[Sequence[str]] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[ResponseScore]:
        """Score responses (all sentences encoded in one batch).

        Args:
            texts: the responses.
            prompts: what each response answers — the user's turn as a string, or the OpenAI-style messages
                (the last user turn is used) — or None. Needed for on_task; also given to a judge.
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
                raise DataError(
                    f"targets[{i}] names unknown trait(s) {bad}; available: {', '.join(self.persona.trait_ids)}"
                )
        sc = self.profile.score(list(texts), self.instrument)
        traits, viols = sc.traits, sc.violations
        if self.trait_lexicons is not None:
            self.trait_lexicons.apply(list(texts), traits, viols)
        on_task = self.on_task(list(texts), list(prompts)) if prompts is not None else [None] * n
        if self.judge is not None and n:
            asks = [last_user_turn(p) for p in prompts] if prompts is not None else [None] * n
            verdicts = self.judge.judge(self.persona, list(texts), asks)
            w = self.judge_weight
            for i, v in enumerate(verdicts):
                for t, (pe, pv) in v.items():
                    if t in known:
                        traits[i][t] = (1 - w) * traits[i][t] + w * float(pe)
                        viols[i][t] = (1 - w) * viols[i][t] + w * float(pv)
        feats = style_features_batch(list(texts), self.persona.style)
        own = self.own_voice.score(list(texts)) if self.own_voice is not None else [1.0] * n
        out = []
        for i, text in enumerate(texts):
            feats[i]["voice"] = sc.voice[i]
            if self.own_voice is not None:
                feats[i]["own_voice"] = own[i]
            sm = min(style_match(feats[i], self.persona.style), sc.voice[i], own[i])
            rules = self.rules(text)
            consistent, cons = consistency_of(traits[i], viols[i], sm, self.rules.hard_pass(rules), tg[i])
            out.append(
                ResponseScore(
                    id=str(ids[i]) if ids is not None else str(i),
                    traits=traits[i],
                    violations=viols[i],
                    style=feats[i],
                    style_match=sm,
                    rules=rules,
                    consistent=consistent,
                    consistency=cons,
                    targets=tg[i],
                    context=contexts[i] if contexts is not None else None,
                    hard_rules=list(self.rules.hard_ids),
                    on_task=on_task[i],
                )
            )
        return out

    def save(self, path: str | Path) -> None:
        """Write the evaluator into folder `path`: the profile (safetensors + JSON) and scorer.json."""
        p = Path(path)
        self.profile.save(p)
        meta = {
            "persona_hash": persona_hash(self.persona),
            "persona_name": self.persona.name,
            "judge_weight": self.judge_weight,
        }
        atomic_write_text(p / "scorer.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_evaluator_dir(
        cls,
        persona: PersonaSpec,
        path: str | Path,
        instrument: Instrument | None = None,
        judge: Judge | None = None,
        judge_weight: float | None = None,
    ) -> "Scorer":
        """A scorer with the profile saved in `path` (by `save` or stage 4).

        `judge_weight` None: the weight saved in the folder's scorer.json (default DEFAULT_JUDGE_WEIGHT).

        Raises:
            DataError: the folder is unreadable, or was fitted for a different persona.
        """
        p = Path(path)
        det = PersonaProfile.load(p)
        want = persona_hash(persona)
        if det.meta.get("persona_hash") != want:
            raise DataError(
                f"evaluator {p} was fitted for a different persona (hash {str(det.meta.get('persona_hash'))[:12]}, "
                f"this persona {want[:12]}); fix: pass the persona it was fitted with, or re-run stage 4"
            )
        jw = DEFAULT_JUDGE_WEIGHT
        if (p / "scorer.json").is_file():
            try:
                jw = float(json.loads((p / "scorer.json").read_text(encoding="utf-8")).get("judge_weight", jw))
            except (ValueError, TypeError, AttributeError) as e:  # AttributeError: valid JSON, but not an object
                raise DataError(f"{p / 'scorer.json'} is not valid JSON ({e}); fix: re-save the evaluator") from None
        return cls(
            persona,
            instrument=instrument,
            profile=det,
            judge=judge,
            judge_weight=jw if judge_weight is None else judge_weight,
        )
