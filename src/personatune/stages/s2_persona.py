"""Stage 2 — persona definition: copy the persona file into the run and check it against the stage-2 gate.

The gate (5-10 traits with exemplars; each trait measurable by the instrument, leave-one-pair-out; no two traits
redundant; rules that parse; >= 3 example interactions) is personatune.persona_gate, with its measurements in
personatune.persona_measures (METRICS.md, docs/persona-definition.md); their names are re-exported here. This
module holds the stage's entry points: `evaluate_persona_file` (what `personatune validate` runs), `format_table`
and `run`.

>>> report = evaluate_persona_file("examples/personas/captain_nova.yaml")   # doctest: +SKIP
>>> report.passed, report.traits[0].loo_auroc                              # doctest: +SKIP
(True, 1.0)

Output of `run`: `02_persona/persona.yaml` (the exact file the later stages read),
`02_persona/persona_report.json` (the full report: per-trait table, similarities, confusions) and
`02_persona/persona_report.txt` (the same as a table).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from personatune.persona import load_persona

# Re-exported: tests reach the gate through this module.
from personatune.persona_gate import (  # noqa: F401
    STAGE,
    PersonaGateReport,
    TraitCheck,
    check_persona,
)
from personatune.persona_measures import centroid_similarity, loo_separability  # noqa: F401

if TYPE_CHECKING:
    from personatune.config import PersonaGateArgs, RunConfig
    from personatune.rundir import RunDir
    from personatune.stage import StageResult


# --- entry points ------------------------------------------------------------------------------------


def evaluate_persona_file(
    path: str | Path, instrument: Any = None, gate_config: "PersonaGateArgs | None" = None
) -> PersonaGateReport:
    """Load a persona file and check it against the stage-2 gate (what `personatune validate` runs).

    Args:
        path: the persona YAML file.
        instrument: the persona instrument (default: the shipped one, `Instrument.default()`).
        gate_config: thresholds (default: METRICS.md values).

    Returns:
        The report; `report.passed` decides exit 0 (pass) or 1 (failed gate).

    Raises:
        PersonaSpecError: the file is missing or invalid (exit 2), listing every problem with path and line.
        ModelNotFoundError: no instrument was given and MiniLM or the instrument weights are not installed.
    """
    spec = load_persona(path)
    if instrument is None:
        from personatune.scoring.instrument import Instrument

        instrument = Instrument.default()
    return check_persona(spec, instrument, gate_config, source=str(path))


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def format_table(report: PersonaGateReport) -> str:
    """The human view: per-trait table, gate lines, diagnosis and fixes, warnings.

    Args:
        report: a stage-2 report.

    Returns:
        Multi-line text for the console.
    """
    head = f"persona: {report.persona}" + (f"  ({report.source})" if report.source else "")
    wid = max([5] + [len(r.id) for r in report.traits])
    nid = max([13] + [len(r.nearest_trait or "") + 9 for r in report.traits])
    lines = [
        head,
        "",
        f"{'trait':<{wid}}  #pos  #neg  LOO AUROC  acc (pos/neg)     {'nearest trait (cos)':<{nid}}  result",
    ]
    for r in report.traits:
        near = f"{r.nearest_trait} ({r.nearest_similarity:.2f})" if r.nearest_trait else "-"
        loo = f"{_fmt(r.loo_accuracy)} ({_fmt(r.loo_positive)}/{_fmt(r.loo_negative)})"
        res = "PASS" if r.passed else "FAIL: " + ", ".join(r.problems)
        lines.append(
            f"{r.id:<{wid}}  {r.n_positive:>4}  {r.n_negative:>4}  {_fmt(r.loo_auroc):<9}  {loo:<16}  {near:<{nid}}  {res}"
        )
    lines += ["", report.gate.summary()]
    lines += [f"  warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def run(config: "RunConfig", run_dir: "RunDir") -> "StageResult":
    """Stage 2: copy the persona file into the run, check it, write the report.

    Args:
        config: the run config (`persona`, `gates.persona`).
        run_dir: the run directory.

    Returns:
        Outputs `persona` (02_persona/persona.yaml, what later stages read) and `report`
        (02_persona/persona_report.json), the gate, and headline metrics.

    Raises:
        PersonaSpecError: the persona file is missing or invalid.
    """
    from personatune.rundir import atomic_write_json, atomic_write_text
    from personatune.stage import StageResult

    out = run_dir.stage_dir(STAGE)
    gate_config = config.gates.persona
    report = evaluate_persona_file(config.persona, gate_config=gate_config)
    # Later stages read this copy, so editing the original during a run cannot change what they see.
    atomic_write_text(out / "persona.yaml", Path(config.persona).read_text(encoding="utf-8"))
    atomic_write_json(out / "persona_report.json", report.to_dict())
    atomic_write_text(out / "persona_report.txt", format_table(report) + "\n")
    accs = [r.loo_auroc for r in report.traits if r.loo_auroc is not None]
    sims = [r.nearest_similarity for r in report.traits if r.nearest_similarity is not None]
    metrics = {
        "traits": len(report.traits),
        "min_separability": min(accs) if accs else None,
        "max_trait_similarity": max(sims) if sims else None,
        "examples": next(int(r.value) for r in report.gate.results if r.metric == "example_interactions"),
    }
    msg = (
        f"{metrics['traits']} traits, lowest LOO AUROC {_fmt(metrics['min_separability'])}, "
        f"highest trait similarity {_fmt(metrics['max_trait_similarity'])}"
    )
    return StageResult(
        outputs={"persona": out / "persona.yaml", "report": out / "persona_report.json"},
        gate=report.gate,
        metrics=metrics,
        message=msg,
    )
