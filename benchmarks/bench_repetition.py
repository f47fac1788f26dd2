"""The loop check behind `on_task` (scoring/repetition.py), measured on hand-written and on model-written answers.

Prints:
1. for every hand-written answer set (benchmarks/gold/*, benchmarks/scorer_corpus/*, and any --sets folder of
   the same format): per answer kind, the largest repetition share and how many answers the repetition factor
   would lower (it must be none: a human answer is not a loop);
2. for every --samples file of a run (a JSON list of {prompt, response, on_task} such as
   05_optimization/samples.json, or a JSONL of {messages, on_task} such as 05_optimization/reference_sft.jsonl):
   how many stored answers the factor lowers and how many were on task (on_task >= 0.5) without it and are
   off task with it, with those answers printed to be read. The stored on_task is the relevance model alone
   when the file was written before the factor existed; the new value is that times the factor.

Run:
    python benchmarks/bench_repetition.py --samples runs/quickstart/05_optimization/samples.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def hand_written(folders: list[Path]) -> None:
    from personatune.persona import load_persona
    from personatune.scoring.gold import load_gold
    from personatune.scoring.repetition import repetition_factor, repetition_share

    total = lowered_all = 0
    for folder in folders:
        spec = load_persona(folder / "persona.yaml")
        items, problems = load_gold(folder / "responses.jsonl", spec.trait_ids)
        for pr in problems:
            print(f"  skipped {folder.name} line {pr['line']}: {pr['reason']}")
        shares: dict[str, list[float]] = {}
        for it in items:
            for kind, text in it.answers.items():
                shares.setdefault(kind, []).append(repetition_share(text))
        parts = []
        for kind, xs in shares.items():
            low = sum(repetition_factor(x) < 1.0 for x in xs)
            total += len(xs)
            lowered_all += low
            parts.append(f"{kind} max {max(xs):.2f} lowered {low}/{len(xs)}")
        print(f"{folder.parent.name}/{folder.name}: " + "; ".join(parts))
    print(f"hand-written answers: {total}, on_task lowered by the repetition factor: {lowered_all}")


def _rows(path: Path) -> list[tuple[str, str, float | None]]:
    text = path.read_text(encoding="utf-8")
    items = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
    from personatune.scoring.scorer import last_user_turn

    rows = []
    for it in items:
        if "messages" in it:
            prompt, response = last_user_turn(it["messages"]), it["messages"][-1]["content"]
        else:
            prompt, response = it["prompt"], it["response"]
        rows.append((prompt, response, it.get("on_task")))
    return rows


def model_samples(path: Path, show: int) -> None:
    from personatune.scoring.repetition import repetition_factor, repetition_share

    rows = _rows(path)
    lowered = flipped = on_before = on_after = 0
    shown = 0
    for prompt, response, p in rows:
        f = repetition_factor(repetition_share(response))
        lowered += f < 1.0
        if p is None:
            continue
        on_before += p >= 0.5
        on_after += p * f >= 0.5
        if p >= 0.5 > p * f:
            flipped += 1
            if shown < show:
                shown += 1
                print(f"    [{repetition_share(response):.2f}] {prompt[:60]!r} -> {response[:160]!r}")
    n = len(rows)
    print(
        f"{path}: {n} answers; lowered by the repetition factor {lowered} ({lowered / max(n, 1):.3f}); "
        f"on task {on_before} -> {on_after} (off task now: {flipped})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="*", default=[], help="extra folders with responses.jsonl (gold-set format)")
    ap.add_argument("--samples", nargs="*", default=[], help="a run's samples.json / *.jsonl with on_task")
    ap.add_argument("--show", type=int, default=12, help="answers to print per samples file")
    a = ap.parse_args()
    folders = sorted((REPO / "benchmarks" / "gold").glob("*/responses.jsonl"))
    folders += sorted((REPO / "benchmarks" / "scorer_corpus").glob("*/responses.jsonl"))
    from personatune.errors import PersonatuneError

    try:
        hand_written([f.parent for f in folders] + [Path(s) for s in a.sets])
        for s in a.samples:
            model_samples(Path(s), a.show)
    except PersonatuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as e:
        print(
            f"error: cannot read {e!s:.200}; fix: pass a samples.json list of {{prompt, response, on_task}} or a "
            "JSONL of {messages, on_task}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
