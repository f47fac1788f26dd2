"""One way to build a scorer: every stage, `score`, `fit`, `serve` and `monitor` call these two functions.

- `build_scorer`: from a persona, optionally a fitted evaluator folder or labelled examples, and a judge.
- `scorer_for_run`: the scorer a pipeline stage uses — the stage-4 evaluator when it exists (else the
  persona-only profile), with the run's configured judge (`scorer.judge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personatune.persona import PersonaSpec
from personatune.scoring.scorer import DEFAULT_JUDGE_WEIGHT, Judge, Scorer


def build_scorer(
    spec: PersonaSpec,
    evaluator_dir: str | Path | None = None,
    examples: Sequence[dict[str, Any]] = (),
    judge: Judge | None = None,
    judge_weight: float | None = None,
) -> Scorer:
    """A scorer for `spec`.

    Args:
        spec: the persona.
        evaluator_dir: a folder written by `Scorer.save` (stage 4 or `personatune fit`); None: fit from the persona.
        examples: labelled examples for the profile ({text, trait, label}); ignored with `evaluator_dir`.
        judge: optional LLM judge mixed into the trait probabilities.
        judge_weight: the judge's weight (None: the evaluator's saved weight, else DEFAULT_JUDGE_WEIGHT).

    Raises:
        DataError: the evaluator folder is unreadable or belongs to another persona; an example is malformed.
    """
    from personatune.scoring.instrument import Instrument
    from personatune.scoring.traits import fit

    inst = Instrument.default()
    if evaluator_dir is not None:
        return Scorer.from_evaluator_dir(spec, evaluator_dir, instrument=inst, judge=judge, judge_weight=judge_weight)
    profile = fit(spec, examples, instrument=inst)
    return Scorer(
        spec,
        instrument=inst,
        profile=profile,
        judge=judge,
        judge_weight=DEFAULT_JUDGE_WEIGHT if judge_weight is None else judge_weight,
    )


def scorer_for_run(
    config: Any, run_dir: Any, spec: PersonaSpec, use_evaluator: bool = True, examples: Sequence[dict[str, Any]] = ()
) -> tuple[Scorer, str]:
    """(scorer, one-line description) for a pipeline stage.

    Args:
        config: the RunConfig (its `scorer.judge` section).
        run_dir: the RunDir (the stage-4 evaluator is looked up through its manifest).
        spec: the persona.
        use_evaluator: use the stage-4 evaluator when the run has one (stages 5-7); False: the persona-only
            profile (stage 3), or one fitted on `examples` (stage 4).
        examples: labelled examples for a new profile (stage 4).
    """
    from personatune.rundir import RunDirError
    from personatune.scoring.judges import run_judge

    judge = run_judge(config, run_dir.root)
    j = config.scorer.judge
    with_judge = f" + {j.backend} judge (weight {j.weight})" if judge is not None else ""
    if use_evaluator:
        try:
            path = run_dir.output_path("04_evaluation", "evaluator")
        except RunDirError:
            return build_scorer(
                spec, judge=judge, judge_weight=j.weight
            ), "persona only (stage 4 evaluator not found)" + with_judge
        return (
            build_scorer(spec, evaluator_dir=path, judge=judge, judge_weight=j.weight),
            f"stage-4 evaluator {Path(path).relative_to(run_dir.root)}{with_judge}",
        )
    what = f"profile fitted on {len(examples)} labelled examples" if examples else "persona only"
    return build_scorer(spec, examples=examples, judge=judge, judge_weight=j.weight), what + with_judge
