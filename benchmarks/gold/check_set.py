"""Check one gold set's format and print its counts (no model needed).

    python benchmarks/gold/check_set.py benchmarks/gold/<set>

Prints problems by line number, the prompts per context, how often each trait is targeted and flipped,
and word counts of each kind against the persona's `style.words` range.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import yaml

CONTEXTS = ("casual", "technical", "emotional", "adversarial", "multi_turn", "off_topic")
KINDS = ("gold", "generic", "flipped", "babble")


def main(folder: str) -> int:
    root = Path(folder)
    persona = yaml.safe_load((root / "persona.yaml").read_text(encoding="utf-8"))
    ids = [t["id"] for t in persona["traits"]]
    exemplars = {s.strip().lower() for t in persona["traits"] for s in t["positive"] + t["negative"]}
    lo, hi = persona.get("style", {}).get("words", [20, 120])
    problems, ctx, targeted, flipped, words = [], Counter(), Counter(), Counter(), {k: [] for k in KINDS}
    seen = set()
    for n, line in enumerate((root / "responses.jsonl").read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as e:
            problems.append(f"line {n}: not JSON ({e})")
            continue
        missing = [k for k in ("id", "context", "messages", "targets", *KINDS) if k not in r]
        if missing:
            problems.append(f"line {n}: missing {missing}")
            continue
        if r["id"] in seen:
            problems.append(f"line {n}: duplicate id {r['id']}")
        seen.add(r["id"])
        if r["context"] not in CONTEXTS:
            problems.append(f"line {n}: context {r['context']!r}")
        m = r["messages"]
        if not m or m[-1].get("role") != "user":
            problems.append(f"line {n}: messages must end with a user turn")
        if r["context"] == "multi_turn" and len(m) < 3:
            problems.append(f"line {n}: multi_turn needs earlier turns")
        if not (1 <= len(r["targets"]) <= 3) or any(t not in ids for t in r["targets"]):
            problems.append(f"line {n}: targets {r['targets']} (1-3 of {ids})")
        if not isinstance(r["flipped"], dict) or r["flipped"].get("trait") not in ids or not r["flipped"].get("text"):
            problems.append(f"line {n}: flipped must be {{trait, text}} with a trait of the persona")
            continue
        ctx[r["context"]] += 1
        targeted.update(r["targets"])
        flipped[r["flipped"]["trait"]] += 1
        for k in KINDS:
            text = r[k]["text"] if k == "flipped" else r[k]
            words[k].append(len(text.split()))
            for sent in exemplars:
                if len(sent) > 25 and sent in text.lower():
                    problems.append(f"line {n}: {k} copies an exemplar: {sent!r}")
    print("problems:", len(problems))
    for p in problems:
        print("  ", p)
    print("prompts per context:", dict(ctx))
    print("targeted per trait:", {t: targeted[t] for t in ids})
    print("flipped per trait:", {t: flipped[t] for t in ids})
    for k in KINDS:
        w = words[k]
        if w:
            out = sum(1 for x in w if not lo <= x <= hi)
            print(
                f"{k:8s} words: min {min(w)} median {sorted(w)[len(w) // 2]} max {max(w)}; outside [{lo}, {hi}]: {out}"
            )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
