"""The stage-2 persona gate: is the persona file clear and complete enough to train on?

The gate (METRICS.md, docs/persona-definition.md) asks for:

1. 5-10 traits, each with a description and >= 3 positive and >= 3 negative exemplars;
2. **clear and measurable by the instrument the later stages use**: per trait, leave-one-pair-out AUROC
   >= 0.8 of the persona instrument (scoring/instrument.py) on the trait's own exemplars (below);
3. **no redundancy**: the cosine similarity of every two traits' positive centroids in the instrument's
   persona space stays below a bound (0.9);
4. style and behaviour rules parse (the schema checks them; here every check is also compiled by the
   rule engine the scorer uses);
5. >= 3 example interactions.

Measurability of trait t, leave-one-pair-out, with the instrument the scorer uses. Each of t's exemplars is
held out in turn together with its opposite twin (its nearest exemplar on t's other side, usually the sentence
it was written against: left in, the held-out sentence is read by its topic; persona_measures.opposite_twins):
the persona's profile is built without the two, and the exemplar is scored as a one-sentence
response, giving its margin m = traits[t] - violations[t] (how much more the instrument reads it as
expressing t than as contradicting it). The trait's separability is the AUROC of m between its held-out
positives and its held-out negatives: 1.0 when every positive reads more "expressed" than every negative,
0.5 when the instrument cannot tell its two sides apart. The share of positives with m > 0 and of negatives
with m < 0 is reported beside it. A trait the instrument cannot tell apart from its own opposite on the
persona's own sentences cannot be measured in the later stages either.

Why AUROC and not the 0.5 decisions: the gate asks whether the *persona* is clear to the instrument, not how
well the instrument's thresholds are calibrated on one-sentence exemplars. Calibration is checked on the
gold sets (docs/persona-evaluation.md); here a trait whose sides are perfectly ordered but whose negatives
all fall just under violations[t] = 0.5 is still a clear trait.

`check_persona` runs the gate on a loaded persona (measurements in personatune.persona_measures); stage 2
(personatune.stages.s2_persona) loads the file, runs it and prints the report.

>>> report = check_persona(load_persona("examples/personas/captain_nova.yaml"), Instrument.default())  # doctest: +SKIP
>>> report.passed, report.traits[0].loo_auroc                                                         # doctest: +SKIP
(True, 1.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from personatune.config import PersonaGateArgs
from personatune.gates import GateReport, GateSpec, Measurement, check_gates
from personatune.persona import PersonaSpec
from personatune.persona_measures import _example_warnings, _rules_parse, centroid_similarity, loo_separability

STAGE = "02_persona"
"""The stage whose gate this is (the id in its report and gate.json)."""
# How many misclassified exemplars per trait the report quotes (the full list is in the JSON).
QUOTE_CONFUSIONS = 2


@dataclass
class TraitCheck:
    """One row of the per-trait table.

    Attributes:
        id: trait id.
        n_positive / n_negative: exemplar counts.
        has_description: the description is not blank.
        loo_auroc: leave-one-pair-out AUROC of the margin between its positives and negatives (the gated value;
            None: a side has no exemplar).
        loo_accuracy: share of held-out exemplars on the right side of margin 0 (None: no exemplar).
        loo_positive / loo_negative: the same on positives only / negatives only.
        nearest_trait / nearest_similarity: the other trait whose centroid is closest, and that cosine.
        confusions: misclassified exemplars: {"kind": "positive"|"negative", "text", "nearest": class}.
        problems: short reasons this trait fails the gate (empty when it passes).
    """

    id: str
    n_positive: int
    n_negative: int
    has_description: bool
    loo_auroc: float | None = None
    loo_accuracy: float | None = None
    loo_positive: float | None = None
    loo_negative: float | None = None
    nearest_trait: str | None = None
    nearest_similarity: float | None = None
    confusions: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class PersonaGateReport:
    """The stage-2 result: the gate, the per-trait table and the pairwise similarities.

    Attributes:
        persona: the persona's name.
        source: the file it came from (None when checked from memory).
        config: the thresholds used.
        gate: the gate results with diagnosis and next steps (what the pipeline writes to gate.json).
        traits: one row per trait, in file order.
        similarity: trait id -> trait id -> centroid cosine similarity.
        warnings: things worth fixing that do not fail the gate (e.g. an example breaks a hard rule).
    """

    persona: str
    source: str | None
    config: PersonaGateArgs
    gate: GateReport
    traits: list[TraitCheck] = field(default_factory=list)
    similarity: dict[str, dict[str, float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.gate.passed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: `passed`, the gate (results, diagnosis, next steps), the table, similarities."""
        return {
            "stage": STAGE,
            "persona": self.persona,
            "source": self.source,
            "passed": self.passed,
            "config": self.config.model_dump(),
            "gate": self.gate.to_dict(),
            "traits": [{**asdict(t), "passed": t.passed} for t in self.traits],
            "similarity": self.similarity,
            "warnings": list(self.warnings),
        }


# --- the gate --------------------------------------------------------------------------------------


def _gate_specs(c: PersonaGateArgs) -> list[GateSpec]:
    return [
        GateSpec("trait_count", c.min_traits, ">=", "traits", "number of core traits (lower bound)"),
        GateSpec("trait_count", c.max_traits, "<=", "traits", "number of core traits (upper bound)"),
        GateSpec("traits_without_description", 0, "<=", "traits", "traits whose description is blank"),
        GateSpec(
            "min_positive_exemplars",
            c.min_positive,
            ">=",
            "exemplars (fewest over traits)",
            "positive exemplars of the trait that has fewest",
        ),
        GateSpec(
            "min_negative_exemplars",
            c.min_negative,
            ">=",
            "exemplars (fewest over traits)",
            "negative exemplars of the trait that has fewest",
        ),
        GateSpec(
            "min_separability",
            c.min_separability,
            ">=",
            "leave-one-pair-out AUROC (lowest trait)",
            "the persona instrument, leave-one-pair-out, on the trait's own exemplars: AUROC of traits[t] - violations[t], positives vs negatives",
        ),
        GateSpec(
            "max_trait_similarity",
            c.max_trait_similarity,
            "<",
            "cosine similarity (highest pair)",
            "cosine similarity of two traits' positive centroids in the instrument's persona space",
        ),
        GateSpec(
            "rules_parse",
            1.0,
            ">=",
            "boolean (1 = every check and phrase list compiles)",
            "style phrase lists and behaviour checks compile in the rule engine",
        ),
        GateSpec(
            "example_interactions",
            c.min_examples,
            ">=",
            "examples",
            "example interactions with a user and an assistant turn",
        ),
    ]


def check_persona(
    spec: PersonaSpec, instrument: Any, config: PersonaGateArgs | None = None, source: str | None = None
) -> PersonaGateReport:
    """Check a loaded persona against the stage-2 gate.

    Args:
        spec: the persona (already schema-valid: see `load_persona`).
        instrument: the persona instrument (scoring/instrument.py) the later stages score with.
        config: thresholds: the run config's `gates.persona` section (default: METRICS.md values).
        source: file name shown in the report.

    Returns:
        The report: gate results, per-trait table, similarities, diagnosis and next steps.
    """
    c = config if config is not None else PersonaGateArgs()
    ids = spec.trait_ids
    pos_texts = [list(t.positive) for t in spec.traits]
    every = [u for lst in pos_texts for u in lst]
    if every:
        _, vecs = instrument.encode_both(every)
    else:
        vecs = np.zeros((0, 1))
    table: dict[str, np.ndarray] = {u: vecs[i] for i, u in enumerate(every)}
    dim = vecs.shape[1] if vecs.ndim == 2 and vecs.shape[0] else 1
    pos = [np.stack([table[u] for u in lst]) if lst else np.zeros((0, dim)) for lst in pos_texts]
    # A trait with no negative side cannot be profiled; the exemplar counts then fail the gate on their own.
    if ids and all(t.negative or t.inverse for t in spec.traits):
        sep = loo_separability(spec, instrument)
    else:
        sep = [{"auroc": None, "accuracy": None, "positive": None, "negative": None, "predictions": []} for _ in ids]
    sim = centroid_similarity(pos) if ids else np.zeros((0, 0))

    rows: list[TraitCheck] = []
    for k, t in enumerate(spec.traits):
        row = TraitCheck(
            t.id,
            len(t.positive),
            len(t.negative),
            bool(t.description.strip()),
            sep[k]["auroc"],
            sep[k]["accuracy"],
            sep[k]["positive"],
            sep[k]["negative"],
        )
        others = [(sim[k, u], ids[u]) for u in range(len(ids)) if u != k and not np.isnan(sim[k, u])]
        if others:
            s, u_id = max(others)
            row.nearest_trait, row.nearest_similarity = u_id, float(s)
        for kind, i, read in sep[k]["predictions"]:
            wrong = read != "expressed" if kind == "positive" else read != "violated"
            if wrong:
                text = (t.positive if kind == "positive" else t.negative)[i]
                row.confusions.append({"kind": kind, "text": text, "read_as": read})
        if not row.has_description:
            row.problems.append("no description")
        if row.n_positive < c.min_positive:
            row.problems.append(f"{row.n_positive} positive < {c.min_positive}")
        if row.n_negative < c.min_negative:
            row.problems.append(f"{row.n_negative} negative < {c.min_negative}")
        if row.loo_auroc is None or row.loo_auroc < c.min_separability:
            row.problems.append(
                f"LOO AUROC {'n/a' if row.loo_auroc is None else f'{row.loo_auroc:.2f}'} < {c.min_separability:g}"
            )
        if row.nearest_similarity is not None and row.nearest_similarity >= c.max_trait_similarity:
            row.problems.append(f"redundant with {row.nearest_trait}")
        rows.append(row)

    # Redundancy: the most similar pair (each unordered pair once).
    pairs = sorted(
        (
            (float(sim[a, b]), ids[a], ids[b])
            for a in range(len(ids))
            for b in range(a + 1, len(ids))
            if not np.isnan(sim[a, b])
        ),
        reverse=True,
    )
    rules_ok, n_rules, rule_errors = _rules_parse(spec)
    accs = [r.loo_auroc for r in rows if r.loo_auroc is not None]
    worst = min((r for r in rows if r.loo_auroc is not None), key=lambda r: r.loo_auroc, default=None)
    measured: dict[str, Measurement | None] = {
        "trait_count": Measurement(float(len(ids)), n=len(ids)),
        "traits_without_description": Measurement(float(sum(not r.has_description for r in rows)), n=len(ids)),
        "min_positive_exemplars": Measurement(float(min((r.n_positive for r in rows), default=0)), n=len(ids)),
        "min_negative_exemplars": Measurement(float(min((r.n_negative for r in rows), default=0)), n=len(ids)),
        "min_separability": Measurement(float(min(accs)), n=sum(r.n_positive + r.n_negative for r in rows))
        if accs
        else None,
        "max_trait_similarity": Measurement(pairs[0][0], n=len(pairs)) if pairs else None,
        "rules_parse": Measurement(rules_ok, n=n_rules),
        "example_interactions": Measurement(float(len(spec.examples)), n=len(spec.examples)),
    }
    results = check_gates(_gate_specs(c), measured)
    for r in results:
        if r.metric == "min_separability" and worst is not None:
            r.note = f"lowest: {worst.id}"
        elif r.metric == "max_trait_similarity":
            r.note = f"pair: {pairs[0][1]} ~ {pairs[0][2]}" if pairs else "fewer than 2 traits with positives"
    gate = GateReport(stage=STAGE, results=results)
    _diagnose(gate, spec, rows, pairs, rule_errors, c)
    return PersonaGateReport(
        persona=spec.name,
        source=source,
        config=c,
        gate=gate,
        traits=rows,
        similarity={
            ids[a]: {ids[b]: round(float(sim[a, b]), 4) for b in range(len(ids)) if b != a and not np.isnan(sim[a, b])}
            for a in range(len(ids))
        },
        warnings=_example_warnings(spec),
    )


def _diagnose(
    gate: GateReport,
    spec: PersonaSpec,
    rows: list[TraitCheck],
    pairs: list[tuple[float, str, str]],
    rule_errors: list[str],
    c: PersonaGateArgs,
) -> None:
    """Fill `gate.diagnosis` (what is wrong, by name) and `gate.next_steps` (what to change)."""
    d, fix = gate.diagnosis, gate.next_steps
    n = len(rows)
    if n < c.min_traits:
        d.append(f"the persona has {n} trait(s); the gate needs {c.min_traits}-{c.max_traits}")
        fix.append(f"add {c.min_traits - n} more trait(s) under `traits:`, each a distinct facet of the persona")
    elif n > c.max_traits:
        d.append(f"the persona has {n} traits; the gate allows at most {c.max_traits}")
        closest = ", ".join(f"{a}~{b} ({s:.2f})" for s, a, b in pairs[:3])
        fix.append(f"merge or drop {n - c.max_traits} trait(s); the most similar pairs are {closest}")
    for r in rows:
        if not r.has_description:
            d.append(f"trait {r.id!r} has a blank description")
            fix.append(f"write one or two sentences under traits.{r.id}.description: what expressing it looks like")
        if r.n_positive < c.min_positive:
            d.append(f"trait {r.id!r} has {r.n_positive} positive exemplar(s) (needs >= {c.min_positive})")
            fix.append(
                f"add {c.min_positive - r.n_positive} more first-person utterance(s) that express {r.id!r} to its `positive:` list"
            )
        if r.n_negative < c.min_negative:
            d.append(f"trait {r.id!r} has {r.n_negative} negative exemplar(s) (needs >= {c.min_negative})")
            fix.append(
                f"add {c.min_negative - r.n_negative} more utterance(s) that contradict {r.id!r} to its `negative:` list"
            )
        if r.loo_auroc is not None and r.loo_auroc < c.min_separability:
            pos_bad = [x for x in r.confusions if x["kind"] == "positive"]
            neg_bad = [x for x in r.confusions if x["kind"] == "negative"]
            parts = []
            if pos_bad:
                parts.append(
                    f"{len(pos_bad)}/{r.n_positive} positives read more as contradicting it than expressing it (e.g. {pos_bad[0]['text']!r})"
                )
            if neg_bad:
                parts.append(
                    f"{len(neg_bad)}/{r.n_negative} negatives read more as expressing it than contradicting it (e.g. {neg_bad[0]['text']!r})"
                )
            d.append(
                f"trait {r.id!r} is not measurable: leave-one-pair-out AUROC {r.loo_auroc:.2f} < {c.min_separability:g}; "
                + "; ".join(parts)
            )
            advice = []
            if pos_bad:
                advice.append(
                    f"rewrite the positives of {r.id!r} quoted above so each plainly shows {r.id!r} (its description in action), in varied words"
                )
            if neg_bad:
                advice.append(
                    f"make the negatives of {r.id!r} plainly contradict it (the opposite attitude), not unrelated or neutral statements"
                )
            fix.append("; ".join(advice))
    for s, a, b in pairs:
        if s >= c.max_trait_similarity:
            d.append(
                f"traits {a!r} and {b!r} are redundant: centroid cosine similarity {s:.3f} >= {c.max_trait_similarity:g}"
            )
            fix.append(
                f"merge {a!r} and {b!r} into one trait, or rewrite their positives so each expresses something the other does not"
            )
    d.extend(rule_errors)
    if rule_errors:
        fix.append("correct the behaviour checks / phrase lists named above")
    if len(spec.examples) < c.min_examples:
        d.append(f"the persona has {len(spec.examples)} example interaction(s); the gate needs >= {c.min_examples}")
        fix.append(
            f"add {c.min_examples - len(spec.examples)} example(s) under `examples:` (a user turn and the persona's reply)"
        )
