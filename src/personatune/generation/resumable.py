"""Resumable generation: jobs already recorded in an append-only JSONL file are not generated again.

Every finished chunk is appended to the file (flushed and fsynced), keyed by a hash of the conversation and the
sampling parameters, so an interrupted stage-3 run picks up where it stopped instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from personatune.rundir import jsonl_lines


def _job_key(conv: list[dict[str, str]], params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([conv, params], sort_keys=True).encode()).hexdigest()[:24]


def _load_generations(path: Path) -> dict[str, list[str]]:
    done: dict[str, list[str]] = {}
    if not path.exists():
        return done
    for line in jsonl_lines(path.read_text(encoding="utf-8")):
        try:
            row = json.loads(line)
            done[row["key"]] = row["outputs"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a crash: that job is simply generated again
    return done


def _system(conv: list[dict[str, str]]) -> str:
    return conv[0]["content"] if conv and conv[0].get("role") == "system" else ""


def _chunks(idx: list[int], chunk: int, jobs: list | None) -> list[list[int]]:
    """Runs of at most `chunk` consecutive jobs; with `jobs`, a run also ends where the system prompt changes. HFBackend
    cuts its batch there anyway (the shared prefix would be lost), so a call that spans two system prompts decodes two
    small batches; ending the call at the change lets each decode loop hold one whole group (docs/benchmarks.md,
    "Best-of-4 in two rounds")."""
    out: list[list[int]] = []
    cur: list[int] = []
    for i in idx:
        if cur and (len(cur) >= chunk or (jobs is not None and _system(jobs[i][0]) != _system(jobs[cur[0]][0]))):
            out.append(cur)
            cur = []
        cur.append(i)
    return out + [cur] if cur else out


def generate_resumable(
    backend: Any,
    jobs: list[tuple[list[dict[str, str]], dict[str, Any]]],
    path: Path,
    chunk: int,
    echo=print,
    label: str = "generated",
    group_contexts: bool = True,
) -> list[list[str]]:
    """Run generation jobs, skipping those already recorded in `path`, appending each finished chunk.

    Args:
        backend: a GenerationBackend (`generate(conversations, max_new_tokens=, temperature=, top_p=, n=, seed=)`).
        jobs: (conversation, params) pairs; params: max_new_tokens, temperature, top_p, n, seed.
        path: the append-only JSONL record of finished jobs.
        chunk: jobs per backend call at most (jobs with equal params are grouped; with group_contexts a call also ends
            where the system prompt changes).
        echo: where progress lines go: one when work starts, then one per chunk with the rate and ETA.
        label: names the step in those lines (e.g. "contrast (teacher)").
        group_contexts: order jobs by their context (every message but the last: the persona system prompt,
            few-shot turns, earlier turns of a multi-turn scenario; stable), so jobs with the same system prompt
            are neighbours and a chunk's prompts share a long token prefix that HFBackend prefills once
            (benchmarks/bench_teacher.py).

    Returns:
        Per job, its list of n completions.
    """
    done = _load_generations(path)
    keys = [_job_key(c, p) for c, p in jobs]
    todo = [i for i, k in enumerate(keys) if k not in done]
    if todo and len(todo) < len(jobs):
        echo(f"  resuming generation: {len(jobs) - len(todo)} of {len(jobs)} jobs already done")
    groups: dict[str, list[int]] = {}
    for i in todo:
        groups.setdefault(json.dumps(jobs[i][1], sort_keys=True), []).append(i)
    if group_contexts:
        for pkey, idx in groups.items():
            groups[pkey] = sorted(idx, key=lambda i: json.dumps(jobs[i][0][:-1], sort_keys=True))
    if todo:
        echo(f"  {label}: {len(todo)} jobs to generate, {chunk} per batch (ETA after the first batch)")
    t0, n_done = time.time(), 0
    with open(path, "a", encoding="utf-8") as f:
        for pkey, idx in groups.items():
            params = json.loads(pkey)
            for part in _chunks(idx, chunk, jobs if group_contexts else None):
                outs = backend.generate([jobs[i][0] for i in part], **params)
                for i, o in zip(part, outs):
                    done[keys[i]] = list(o)
                    f.write(json.dumps({"key": keys[i], "outputs": list(o)}) + "\n")
                f.flush()
                os.fsync(f.fileno())
                n_done += len(part)
                rate = n_done / max(time.time() - t0, 1e-9)
                echo(
                    f"  {label} {n_done}/{len(todo)} jobs ({rate:.2f} jobs/s, ETA {(len(todo) - n_done) / max(rate, 1e-9):.0f}s)"
                )
    return [done[k] for k in keys]
