"""Stage 2 — persona definition: is every trait clear and measurable?

Checks (METRICS.md; thresholds in `gates.persona`, see docs/persona-definition.md):
1. counts: 5-10 traits; each with a description, >= 3 positive and >= 3 negative exemplars;
   >= 3 example interactions. (Structure and types — style, behaviour checks, regexes — are
   validated when the file is loaded; a file that does not load is "invalid", exit code 2.)
2. separability, per trait, leave-one-out with the scorer's own trait detectors (see
   `loo_separability`): left-out positives must be detected, left-out negatives and the other traits'
   left-out positives must not; the balanced accuracy must be >= 0.8.
3. redundancy: cosine similarity between two traits' positive centroids < 0.9.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from personatune.config import PersonaGateArgs, RunConfig
from personatune.gates import GateReport, GateSpec, Measurement, check_gates
from personatune.persona import PersonaSpec, load_persona
from personatune.rundir import RunDir
from personatune.stage import StageResult

STAGE = "02_persona"


@dataclass
class TraitRow:
    """One line of the per-trait table."""

    trait: str
    n_positive: int
    n_negative: int
    separability: float | None
    nearest_trait: str | None
    nearest_similarity: float | None
    passed: bool = True


@dataclass
class PersonaGateReport:
    """The stage-2 gate: the gate results plus the per-trait table."""

    persona: str
    gate: GateReport
    table: list[TraitRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.gate.passed

    def to_dict(self) -> dict[str, Any]:
        return {"persona": self.persona, "passed": self.passed, **{k: v for k, v in self.gate.to_dict().items() if k != "passed"},
                "traits": [r.__dict__ for r in self.table]}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def loo_separability(spec: PersonaSpec, embedder: Any, seed: int = 0) -> dict[str, dict[str, float]]:
    """Leave-one-out separability per trait, measured with the scorer's own trait detectors.

    Fold j leaves out the j-th positive and the j-th negative exemplar of every trait; the detectors
    (personatune.scoring.traits.fit) are fitted on the rest and score the left-out exemplars, so every
    exemplar is judged by detectors that never saw it. For trait t:
      - recall: its left-out positives are expressed (traits[t] >= 0.5) and not violated;
      - own negatives: its left-out negatives are not expressed (traits[t] < 0.5);
      - other traits: the other traits' left-out positives are not expressed as t.
    Separability = the mean of those three rates (balanced accuracy), so a trait passes only when the
    scorer can find it, tell it from its opposite, and tell it from the persona's other traits.

    Returns:
        trait id -> {"separability", "recall", "own_negatives", "other_traits"}.
    """
    from personatune.scoring.traits import fit

    n_folds = max(max(len(t.positive), len(t.negative)) for t in spec.traits)
    hits = {t.id: {"recall": [], "own_negatives": [], "other_traits": []} for t in spec.traits}
    for j in range(n_folds):
        kept, held = [], []
        for t in spec.traits:
            kept.append(t.model_copy(update={"positive": [x for i, x in enumerate(t.positive) if i != j],
                                             "negative": [x for i, x in enumerate(t.negative) if i != j]}))
            if j < len(t.positive):
                held.append((t.id, t.positive[j], True))
            if j < len(t.negative):
                held.append((t.id, t.negative[j], False))
        det = fit(spec.model_copy(update={"traits": kept}), (), embedder=embedder, seed=seed, other_trait_weight=0.2)
        traits, violations = det.score([h[1] for h in held], embedder)
        for (owner, _, positive), tr, vi in zip(held, traits, violations):
            if positive:
                hits[owner]["recall"].append(tr[owner] >= 0.5 and vi[owner] < 0.5)
                for u in hits:
                    if u != owner:
                        hits[u]["other_traits"].append(tr[u] < 0.5)
            else:
                hits[owner]["own_negatives"].append(tr[owner] < 0.5)
    out = {}
    for t, h in hits.items():
        rates = {k: (float(np.mean(v)) if v else 0.0) for k, v in h.items()}
        rates["separability"] = float(np.mean([rates["recall"], rates["own_negatives"], rates["other_traits"]]))
        out[t] = rates
    return out


def check_persona(spec: PersonaSpec, embedder: Any, args: PersonaGateArgs | None = None, name: str = "") -> PersonaGateReport:
    """Run the stage-2 gate on a loaded persona.

    Args:
        spec: the persona.
        embedder: object with `encode(list[str]) -> (n, d)` unit vectors.
        args: thresholds (defaults: METRICS.md).
    """
    a = args or PersonaGateArgs()
    usable = [t for t in spec.traits if t.positive and t.negative]
    texts = [x for t in usable for x in (*t.positive, *t.negative)]
    emb = embedder.encode(texts) if texts else np.zeros((0, 1))
    pos, neg, k = {}, {}, 0
    for t in usable:
        pos[t.id] = emb[k : k + len(t.positive)]
        k += len(t.positive)
        neg[t.id] = emb[k : k + len(t.negative)]
        k += len(t.negative)
    enough = [t for t in spec.traits if len(t.positive) >= 2 and len(t.negative) >= 2]
    detail = loo_separability(spec.model_copy(update={"traits": enough}), embedder) if len(enough) >= 2 else {}
    sep = {t: d["separability"] for t, d in detail.items()}
    cents = {t: _unit(e.mean(0)) for t, e in pos.items()}
    nearest: dict[str, tuple[str | None, float | None]] = {}
    for t in cents:
        sims = [(u, float(cents[t] @ c)) for u, c in cents.items() if u != t]
        nearest[t] = max(sims, key=lambda x: x[1]) if sims else (None, None)
    max_pair = max((s for _, s in nearest.values() if s is not None), default=0.0)

    specs = [
        GateSpec("traits", a.min_traits, ">=", "traits", "number of core traits (lower bound)"),
        GateSpec("traits_max", a.max_traits, "<=", "traits", "number of core traits (upper bound)"),
        GateSpec("examples", a.min_examples, ">=", "example interactions", "example interactions"),
        GateSpec("max_trait_similarity", a.max_trait_similarity, "<", "cosine similarity", "the most similar pair of trait centroids"),
    ]
    measured: dict[str, Any] = {"traits": float(len(spec.traits)), "traits_max": float(len(spec.traits)),
                                "examples": float(len(spec.examples)), "max_trait_similarity": Measurement(max_pair, n=len(cents))}
    rows, diagnosis, steps = [], [], []
    for t in spec.traits:
        specs.append(GateSpec(f"positive[{t.id}]", a.min_positive, ">=", "exemplars", f"positive exemplars of {t.id}"))
        specs.append(GateSpec(f"negative[{t.id}]", a.min_negative, ">=", "exemplars", f"negative exemplars of {t.id}"))
        specs.append(GateSpec(f"separability[{t.id}]", a.min_separability, ">=", "LOO accuracy", f"leave-one-out separability of {t.id}"))
        measured[f"positive[{t.id}]"] = float(len(t.positive))
        measured[f"negative[{t.id}]"] = float(len(t.negative))
        s = sep.get(t.id)
        measured[f"separability[{t.id}]"] = Measurement(s, n=len(t.positive) + len(t.negative)) if s is not None else None
        nt, ns = nearest.get(t.id, (None, None))
        ok = (len(t.positive) >= a.min_positive and len(t.negative) >= a.min_negative and s is not None and s >= a.min_separability
              and (ns is None or ns < a.max_trait_similarity))
        rows.append(TraitRow(t.id, len(t.positive), len(t.negative), s, nt, ns, ok))
    results = check_gates(specs, measured)
    for r in results:
        if r.passed:
            continue
        m = r.metric
        if m in ("traits", "traits_max"):
            diagnosis.append(f"the persona has {len(spec.traits)} traits; {a.min_traits}-{a.max_traits} are needed")
            steps.append("merge or drop traits" if m == "traits_max" else "add core traits until there are at least " + str(a.min_traits))
        elif m == "examples":
            diagnosis.append(f"only {len(spec.examples)} example interactions")
            steps.append(f"add example interactions (at least {a.min_examples}), ideally one per context")
        elif m.startswith(("positive[", "negative[")):
            kind, t = m.split("[")
            diagnosis.append(f"trait {t[:-1]} has {int(r.value or 0)} {kind} exemplars")
            steps.append(f"write at least {int(r.threshold)} {kind} exemplars for trait {t[:-1]}")
        elif m.startswith("separability["):
            t = m[13:-1]
            nt, _ = nearest.get(t, (None, None))
            diagnosis.append(f"trait {t} is hard to tell apart (LOO accuracy {r.value if r.value is None else round(r.value, 3)}; nearest trait: {nt})")
            steps.append(f"make {t}'s exemplars more specific to it and less like {nt}'s, or sharpen its negatives")
        elif m == "max_trait_similarity":
            pair = [(t, u) for t, (u, s) in nearest.items() if s is not None and s >= a.max_trait_similarity]
            diagnosis.append("redundant traits: " + ", ".join(f"{t}~{u}" for t, u in pair))
            steps.append("merge the redundant traits into one, or rewrite one of them so it measures something else")
    return PersonaGateReport(persona=name or spec.name, gate=GateReport(STAGE, results, diagnosis, steps), table=rows)


def evaluate_persona_file(path: str | Path, embedder: Any = None, gate_config: PersonaGateArgs | None = None) -> PersonaGateReport:
    """Load a persona file and run the stage-2 gate (used by `personatune validate` and the stage).

    Raises:
        PersonaSpecError: the file is invalid (one message listing every problem with its line).
    """
    spec = load_persona(path)
    if embedder is None:
        from personatune.embeddings import Embedder

        embedder = Embedder.default()
    return check_persona(spec, embedder, gate_config, name=str(path))


def format_table(report: PersonaGateReport) -> str:
    """The per-trait table and the gate summary, for the console."""
    lines = [f"persona: {report.persona}", "",
             f"{'trait':24s} {'pos':>4s} {'neg':>4s} {'LOO acc':>8s}  {'nearest trait (cosine)':32s} ok",
             "-" * 80]
    for r in report.table:
        sep = "n/a" if r.separability is None else f"{r.separability:.3f}"
        near = "-" if r.nearest_trait is None else f"{r.nearest_trait} ({r.nearest_similarity:.3f})"
        lines.append(f"{r.trait:24s} {r.n_positive:4d} {r.n_negative:4d} {sep:>8s}  {near:32s} {'yes' if r.passed else 'NO'}")
    lines += ["", report.gate.summary()]
    return "\n".join(lines)


def run(config: RunConfig, run_dir: RunDir) -> StageResult:
    """Copy the persona into the run directory and check its gate."""
    out = run_dir.stage_dir(STAGE)
    report = evaluate_persona_file(config.persona, gate_config=config.gates.persona)
    # Later stages read this copy (through the manifest), so editing the original mid-run changes nothing.
    tmp = out / ".persona.yaml.tmp"
    shutil.copyfile(config.persona, tmp)
    tmp.replace(out / "persona.yaml")
    from personatune.rundir import atomic_write_json

    atomic_write_json(out / "traits.json", [r.__dict__ for r in report.table])
    n = len(report.table)
    return StageResult(outputs={"persona": out / "persona.yaml", "traits": out / "traits.json"}, gate=report.gate,
                       metrics={"traits": n}, message=f"{n} traits checked")
