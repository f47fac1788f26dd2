"""The built-in capability suite and held-out perplexity: "no capability regression", measured.

Items (data/capability_suite.yaml, written for this project) have checkable answers: arithmetic,
facts and instruction following. Every model is scored the same way: the same items, greedy
decoding, the model's own chat template, no system prompt added, the same checks. Retention =
candidate score / baseline score on the same items; a task also fails when it drops by more than
its own 95% interval (Wilson interval of the baseline's accuracy on that task).

Optional lm-evaluation-harness tasks (the `lm_eval` config section) are scored by personatune.lm_harness;
see docs/sft-preparation.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from personatune.scoring.aggregate import wilson_ci


@dataclass
class Item:
    task: str
    question: str
    answers: list[str] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)


def load_suite() -> tuple[list[Item], list[str]]:
    """(items, perplexity texts) of the built-in suite."""
    raw = _read("capability_suite.yaml")
    return _items(raw), list(raw["perplexity_text"])


def load_anchors() -> list[Item]:
    """The capability anchors (data/capability_anchors.yaml): checkable training prompts, disjoint from the suite."""
    return _items(_read("capability_anchors.yaml"))


def _read(name: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files("personatune.data").joinpath(name).read_text(encoding="utf-8"))


def _items(raw: dict[str, Any]) -> list[Item]:
    return [
        Item(task, it["q"], [str(a) for a in it.get("answers", [])], it.get("check", {}))
        for task in ("arithmetic", "facts", "instructions")
        for it in raw.get(task, [])
    ]


def is_correct(item: Item, reply: str) -> bool:
    """Whether a reply passes the item's check (documented in the module docstring of the YAML)."""
    text = reply.strip()
    if item.answers:
        return any(_mentions(a, text, whole_word=a[0].isdigit()) for a in item.answers)
    c = item.check
    if "regex" in c and not re.search(c["regex"], text, flags=re.IGNORECASE | re.MULTILINE):
        return False
    if "max_words" in c and len(text.split()) > int(c["max_words"]):
        return False
    return True


def _mentions(answer: str, text: str, whole_word: bool) -> bool:
    """`answer` occurs in `text` (case-insensitive); `whole_word`: not inside a word or a decimal number."""
    pat = rf"(?<![\w.]){re.escape(answer)}(?!\w|\.\d)" if whole_word else re.escape(answer)
    return re.search(pat, text, flags=re.IGNORECASE) is not None


def is_anchor_correct(item: Item, reply: str) -> bool:
    """The stricter check used to *keep training data* (the capability anchors, stages/reference_sft.py): an answer
    counts only as a whole word (not "ice" in "Nice"), and for a numeric answer the reply's last number must be one of
    the answers (the last-number rule of lm-eval's GSM8K "flexible-extract"), so "6 + 9 = 15 ... 15 + 15 = 20" is
    dropped. Items without answers use their `check` as in `is_correct`."""
    if not item.answers:
        return is_correct(item, reply)
    text = reply.strip()
    if not any(_mentions(a, text, whole_word=True) for a in item.answers):
        return False
    numeric = [a for a in item.answers if re.fullmatch(r"\d+(\.\d+)?", a)]
    if numeric:  # the last number stated (digits, or one of the item's number words) must be an answer
        words = "".join(rf"|\b{re.escape(a)}\b" for a in item.answers if a not in numeric)
        found = re.findall(r"\d+(?:\.\d+)?" + words, text, flags=re.IGNORECASE)
        return bool(found) and found[-1].lower() in {a.lower() for a in item.answers}
    return True


def score_suite(backend: Any, items: list[Item] | None = None, max_new_tokens: int = 48) -> dict[str, Any]:
    """Run the suite with greedy decoding through a GenerationBackend.

    Returns:
        {"score": overall accuracy, "n": items, "tasks": {task: {"accuracy", "n", "ci"}}, "replies": [...]}
    """
    if items is None:
        items, _ = load_suite()
    convs = [[{"role": "user", "content": it.question}] for it in items]
    replies = [
        r[0] for r in backend.generate(convs, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, n=1, seed=0)
    ]
    ok = [is_correct(it, r) for it, r in zip(items, replies)]
    tasks: dict[str, Any] = {}
    for task in dict.fromkeys(it.task for it in items):
        idx = [i for i, it in enumerate(items) if it.task == task]
        k = sum(ok[i] for i in idx)
        tasks[task] = {"accuracy": k / len(idx), "n": len(idx), "correct": k, "ci": wilson_ci(k, len(idx))}
    return {
        "score": sum(ok) / len(ok),
        "n": len(ok),
        "tasks": tasks,
        "replies": [
            {"task": it.task, "question": it.question, "reply": r, "correct": c} for it, r, c in zip(items, replies, ok)
        ],
    }


def retention(candidate: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Capability retention of a candidate against the baseline (both from `score_suite` on the same items).

    Returns:
        {"retention": ratio (nan when the baseline scores 0), "task_drops": {task: {"drop", "allowed", "ok"}}, "all_tasks_ok": bool}
    """
    ratio = candidate["score"] / baseline["score"] if baseline["score"] > 0 else float("nan")
    drops = {}
    for task, b in baseline["tasks"].items():
        c = candidate["tasks"].get(task, {"accuracy": 0.0})
        allowed = b["accuracy"] - b["ci"][0]  # the baseline's own 95% interval, below its estimate
        drop = b["accuracy"] - c["accuracy"]
        drops[task] = {
            "baseline": b["accuracy"],
            "candidate": c["accuracy"],
            "drop": drop,
            "allowed": allowed,
            "ok": drop <= allowed + 1e-12,
        }
    return {"retention": ratio, "task_drops": drops, "all_tasks_ok": all(d["ok"] for d in drops.values())}


def perplexity(model: Any, tokenizer: Any, texts: list[str] | None = None) -> dict[str, float]:
    """Token-weighted perplexity of plain general text (no chat template), exp(mean NLL in nats/token)."""
    import torch

    if texts is None:
        _, texts = load_suite()
    device = next(model.parameters()).device
    nll, n = 0.0, 0
    with torch.inference_mode():
        for t in texts:
            ids = tokenizer(t, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
            if ids.shape[1] < 2:
                continue
            out = model(input_ids=ids, labels=ids)
            k = ids.shape[1] - 1
            nll += float(out.loss) * k
            n += k
    return {
        "perplexity": math.exp(nll / n) if n else float("nan"),
        "nll_per_token": nll / n if n else float("nan"),
        "tokens": n,
    }
