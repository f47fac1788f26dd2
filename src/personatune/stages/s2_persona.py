"""Stage 2 — persona definition: copy the persona file into the run and check it against the stage-2 gate.

The gate (5-10 traits with exemplars; each trait measurable by the instrument, leave-one-out; no two traits
redundant; rules that parse; >= 3 example interactions) is personatune.persona_gate, with its measurements in
personatune.persona_measures (METRICS.md, docs/persona-definition.md). Its names are re-exported here.

Output of `run`: `02_persona/persona.yaml` (the exact file the later stages read),
`02_persona/persona_report.json` (the full report: per-trait table, similarities, confusions) and
`02_persona/persona_report.txt` (the same as a table).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

# Re-exported: `personatune validate` (cli.py) and tests reach the gate through this module.
from personatune.persona_gate import (  # noqa: F401
    STAGE,
    PersonaGateConfig,
    PersonaGateReport,
    TraitCheck,
    _fmt,
    check_persona,
    evaluate_persona_file,
    format_table,
)
from personatune.persona_measures import centroid_similarity, loo_separability  # noqa: F401

if TYPE_CHECKING:
    from personatune.config import RunConfig
    from personatune.rundir import RunDir
    from personatune.stage import StageResult


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
    gate_config = PersonaGateConfig.from_args(config.gates.persona)
    report = evaluate_persona_file(config.persona, gate_config=gate_config)
    # Later stages read this copy, so editing the original during a run cannot change what they see.
    atomic_write_text(out / "persona.yaml", Path(config.persona).read_text(encoding="utf-8"))
    atomic_write_json(out / "persona_report.json", report.to_dict())
    atomic_write_text(out / "persona_report.txt", format_table(report) + "\n")
    accs = [r.loo_auroc for r in report.traits if r.loo_auroc is not None]
    sims = [r.nearest_similarity for r in report.traits if r.nearest_similarity is not None]
    metrics = {"traits": len(report.traits), "min_separability": min(accs) if accs else None,
               "max_trait_similarity": max(sims) if sims else None,
               "examples": next(int(r.value) for r in report.gate.results if r.metric == "example_interactions")}
    msg = (f"{metrics['traits']} traits, lowest LOO AUROC {_fmt(metrics['min_separability'])}, "
           f"highest trait similarity {_fmt(metrics['max_trait_similarity'])}")
    return StageResult(outputs={"persona": out / "persona.yaml", "report": out / "persona_report.json"}, gate=report.gate, metrics=metrics, message=msg)
