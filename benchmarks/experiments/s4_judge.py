"""Stage 4's gate on a finished run, re-measured with the cross-encoder judge mixed into the evaluator (no stage re-run).

Stage 4 fits the evaluator on the training split and gates on the held-out split (stages/s4_evaluation.py). A judge in
the run's config would change stage 3's key too, so `--from 4` would sample stage 3 again (~50 min on 2 cores); this
replays stage 4's measurement on the run's own stage-3 files instead: the same evaluator fit
(`labelled_examples`), the same held-out examples (`heldout_auroc`), the same adherence, style variance and
consistency, for each judge weight given (0 = the instrument alone, as the run's stage 4 measured it).

Run: python benchmarks/experiments/s4_judge.py --run RUN_DIR --cross-encoder DIR [--weights 0 0.5] [--class-probs]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from personatune.config_args import EvalArgs
from personatune.persona import load_persona
from personatune.rundir import RunDir
from personatune.scoring.aggregate import consistency_rate, style_variance, trait_adherence
from personatune.scoring.instrument import Instrument
from personatune.scoring.scorer import Scorer
from personatune.scoring.traits import fit
from personatune.stage3_rows import SFT_NEEDS, STAGE3_FIX, read_stage3
from personatune.stages.s4_evaluation import heldout_auroc, labelled_examples, with_flip_on_task


class Memo:
    """A judge that remembers its answers per (text), so several weights cost one judging pass."""

    def __init__(self, judge) -> None:
        self.judge_, self.seen = judge, {}

    def judge(self, persona, texts, prompts=None):
        todo = [t for t in dict.fromkeys(texts) if t not in self.seen]
        if todo:
            self.seen.update(zip(todo, self.judge_.judge(persona, todo)))
        return [self.seen[t] for t in texts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run folder with stages 2 and 3 done (RUN_DIR/NAME)")
    ap.add_argument("--cross-encoder", metavar="DIR", required=True, help="weights of cross_encoder.py --save DIR")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5])
    ap.add_argument("--class-probs", action="store_true", help="mix P(e), P(v) instead of the margin form")
    args = ap.parse_args()
    rd = RunDir(Path(args.run))
    spec = load_persona(rd.output_path("02_persona", "persona"))
    d3 = {s: rd.output_path("03_consistency_data", s) for s in ("train", "heldout")}
    sft = {s: read_stage3(d / "sft.jsonl", "sft", STAGE3_FIX, spec.trait_ids, SFT_NEEDS) for s, d in d3.items()}
    tr_pairs, ho_pairs = with_flip_on_task(
        spec, *(read_stage3(d3[s] / "pairs.jsonl", "pairs", STAGE3_FIX, spec.trait_ids) for s in ("train", "heldout"))
    )
    from cross_encoder_judge import CrossEncoderJudge  # this folder

    inst = Instrument.default()
    profile = fit(spec, labelled_examples(spec, sft["train"], tr_pairs), instrument=inst)
    memo = Memo(CrossEncoderJudge(args.cross_encoder, margin=not args.class_probs))
    ho = sft["heldout"]
    print(f"{args.run}: {len(ho)} held-out chosen answers, {len(ho_pairs)} held-out pairs")
    for w in args.weights:
        t0 = time.perf_counter()
        scorer = Scorer(spec, instrument=inst, profile=profile, judge=memo if w else None, judge_weight=w)
        aucs, _ = heldout_auroc(scorer, spec, ho, ho_pairs)
        recs = scorer.score(
            [r["messages"][-1]["content"] for r in ho],
            prompts=[r["messages"][:-1] for r in ho],
            contexts=[r["context"] for r in ho],
            targets=[r["targets"] for r in ho],
        )
        adh = trait_adherence(recs)
        sv = style_variance(recs, min_per_context=EvalArgs().min_per_context).value
        per = ", ".join(f"{t} {a['auroc']:.3f}" for t, a in aucs.items() if a["auroc"] is not None)
        low = min(a["auroc"] for a in aucs.values() if a["auroc"] is not None)
        ctx = min(m.value for m in adh.per_context.values())
        print(
            f"judge weight {w}: per-trait AUROC {per} (lowest {low:.3f}); adherence {adh.overall.value:.3f} "
            f"(lowest context {ctx:.3f}); style variance {sv:.3f}; consistent {consistency_rate(recs).value:.3f} "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )


if __name__ == "__main__":
    main()
