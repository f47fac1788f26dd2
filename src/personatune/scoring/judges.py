"""LLM judges: per response and per trait, P(expressed) and P(violated) from a language model.

Both judges ask the same rubric (`rubric_messages`), built from the persona and the trait's own
description, its `inverse` when given, and a few of its positive and negative exemplars — two
Yes/No questions per (response, trait):

1. "Does the reply express the trait?"            -> P(expressed) = P(Yes)
2. "Does the reply go against (contradict) it?"   -> P(violated)  = P(Yes)

P(Yes) is the softmax-normalised probability mass of the answer tokens at the first answer
position: `P(Yes) = sum p(yes-tokens) / (sum p(yes-tokens) + sum p(no-tokens))`, where the
yes-tokens are every spelling of the answer ("Yes", " yes", "YES", ...) and likewise for no.
Two separate questions (not one three-way question) because Yes/No are single tokens in every
tokenizer and each probability then stands on its own.

- `HFJudge` reads those probabilities straight from the model's next-token logits: one forward
  pass per question, batched, left-padded, length-sorted; nothing is sampled.
- `OpenAIJudge` asks an OpenAI-compatible server at temperature 0 with `logprobs=True,
  top_logprobs=k` and applies the same formula to the returned alternatives. Where the server
  gives no logprobs (or rejects the option, or neither answer is among the top k), it falls back
  to the sampled answer text: "Yes..." -> 1.0, "No..." -> 0.0. An answer that is neither is
  undetermined: counted in `stats["undetermined"]`, logged, and that trait is left out of that
  text's dict, so the scorer falls back to its embedding detectors for it.

A judge returns, per text, `{trait_id: (p_expressed, p_violated)}`, the shape the scorer's
`Judge` protocol (scoring/scorer.py) expects.

>>> judge = HFJudge(model, tokenizer)                             # doctest: +SKIP
>>> judge.judge(persona, ["Ooh, let's try it, what could go wrong?"], ["Shall we test the new tool?"])  # doctest: +SKIP
[{'curious': (0.81, 0.07), 'cautious': (0.12, 0.64), ...}]
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Literal

from personatune.generation.cache import ResponseCache
from personatune.generation.hf import encode_chat
from personatune.generation.openai_compat import ChatRequest, OpenAIBackend
from personatune.persona import PersonaSpec, Trait

log = logging.getLogger(__name__)

Question = Literal["expressed", "violated"]
QUESTIONS: tuple[Question, Question] = ("expressed", "violated")

# Responses longer than this are cut before judging (characters): bounds prompt length and cost.
MAX_RESPONSE_CHARS = 2000
YES, NO = "yes", "no"
_SPELLINGS = ("{w}", " {w}", "{W}", " {W}", "{WU}", " {WU}")

SYSTEM_PROMPT = (
    "You are a careful, strict evaluator of a chatbot's persona. You read one reply and answer one "
    "question about it with exactly one word: Yes or No."
)


def rubric_messages(
    persona: PersonaSpec, trait: Trait, text: str, prompt: str | None, question: Question, exemplars: int = 2
) -> list[dict[str, str]]:
    """The judge's chat messages for one (reply, trait, question).

    Args:
        persona: the persona spec (name and summary set the scene).
        trait: the trait judged; its description, inverse and first `exemplars` positive and
            negative utterances form the rubric.
        text: the reply to judge (cut to MAX_RESPONSE_CHARS).
        prompt: the user message the reply answers, or None.
        question: "expressed" or "violated".
        exemplars: how many positive and negative exemplars to show (each).

    Returns:
        A system and a user message.
    """
    lines = [
        f"Persona: {persona.name}. {persona.summary.strip()}",
        "",
        f'Trait "{trait.id}": {trait.description.strip()}',
    ]
    if trait.inverse:
        lines.append(f"The opposite of this trait: {trait.inverse.strip()}")
    if exemplars and trait.positive:
        lines += ["Replies that express this trait, for example:"] + [f'- "{u}"' for u in trait.positive[:exemplars]]
    if exemplars and trait.negative:
        lines += ["Replies that go against this trait, for example:"] + [f'- "{u}"' for u in trait.negative[:exemplars]]
    lines.append("")
    if prompt:
        lines.append(f'The user said: "{prompt.strip()}"')
    body = text.strip()
    if len(body) > MAX_RESPONSE_CHARS:
        body = body[:MAX_RESPONSE_CHARS] + " [...]"
    lines += ["The reply to judge:", '"""', body, '"""', ""]
    if question == "expressed":
        lines.append(f'Question: does the reply clearly express the trait "{trait.id}"?')
    else:
        lines.append(f'Question: does the reply go against the trait "{trait.id}", i.e. show its opposite?')
    lines.append("Answer with one word: Yes or No.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def _questions(
    persona: PersonaSpec, texts: list[str], prompts: list[str | None] | None, exemplars: int
) -> list[tuple[int, str, Question, list[dict[str, str]]]]:
    if prompts is not None and len(prompts) != len(texts):
        from personatune.errors import DataError

        raise DataError(f"judge: got {len(texts)} texts but {len(prompts)} prompts; pass one prompt (or None) per text")
    out = []
    for i, text in enumerate(texts):
        p = prompts[i] if prompts is not None else None
        for trait in persona.traits:
            for q in QUESTIONS:
                out.append((i, trait.id, q, rubric_messages(persona, trait, text, p, q, exemplars)))
    return out


def _assemble(
    persona: PersonaSpec, n_texts: int, qs: list[tuple[int, str, Question, Any]], probs: list[float | None]
) -> list[dict[str, tuple[float, float]]]:
    """Per text {trait: (P(expressed), P(violated))}; a trait with an undetermined answer is left out."""
    got: dict[tuple[int, str, str], float | None] = {(i, t, q): p for (i, t, q, _), p in zip(qs, probs)}
    out = []
    for i in range(n_texts):
        d = {}
        for t in persona.trait_ids:
            e, v = got[(i, t, "expressed")], got[(i, t, "violated")]
            if e is not None and v is not None:
                d[t] = (e, v)
        out.append(d)
    return out


def _norm(token: str) -> str:
    return re.sub(r"[^a-z]", "", token.lower())


def yes_probability(alternatives: list[tuple[str, float]] | list[list[Any]]) -> float | None:
    """P(Yes) from one position's top alternatives [(token, logprob), ...], or None if neither answer is there.

    Every spelling counts ("Yes", " yes", "YES", "**Yes"); mass is renormalised over yes + no.

    >>> round(yes_probability([("Yes", math.log(0.6)), (" yes", math.log(0.1)), ("No", math.log(0.2))]), 4)
    0.7778
    """
    yes = no = 0.0
    for tok, lp in alternatives:
        w = _norm(str(tok))
        if w == YES:
            yes += math.exp(float(lp))
        elif w == NO:
            no += math.exp(float(lp))
    if yes + no <= 0.0:
        return None
    return yes / (yes + no)


def answer_from_text(text: str) -> float | None:
    """1.0 for an answer starting with yes, 0.0 for no, None otherwise (punctuation and markup skipped)."""
    m = re.search(r"[a-z]+", text.lower())
    if m is None:
        return None
    return {YES: 1.0, NO: 0.0}.get(m.group(0))


class OpenAIJudge:
    """Judge with a model behind an OpenAI-compatible server (see generation/openai_compat.py).

    Args:
        base_url: server URL ending in /v1.
        model: model name on that server.
        top_logprobs: alternatives to ask for per token (1-20).
        exemplars: positive and negative exemplars per trait in the rubric (each).
        **backend_kw: the connection options, passed to OpenAIBackend with its defaults: api_key_env
            (environment variable with the API key, never logged; "OPENAI_API_KEY"), concurrency (requests in
            flight at once; 8), max_retries (retries per request; 5), timeout (per-request timeout in seconds;
            60.0), cache (a ResponseCache so re-judging the same texts costs nothing; None for no cache).

    Raises:
        BackendError: bad connection parameters (see OpenAIBackend).
        TypeError: an option OpenAIBackend does not take.
    """

    # The connection options are OpenAIBackend's own, forwarded as they are: one list of them, one set of defaults.
    def __init__(
        self, base_url: str, model: str, *, top_logprobs: int = 10, exemplars: int = 2, **backend_kw: Any
    ) -> None:
        self.backend = OpenAIBackend(base_url, model, **backend_kw)
        self.top_logprobs = max(1, min(20, int(top_logprobs)))
        self.exemplars = exemplars
        self.stats = {"logprobs": 0, "text": 0, "undetermined": 0}

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.backend!r})"

    def judge(
        self, persona: PersonaSpec, texts: list[str], prompts: list[str | None] | None = None
    ) -> list[dict[str, tuple[float, float]]]:
        """Per text, per trait id: (P(expressed), P(violated)), each in [0, 1].

        A trait whose answer was neither Yes nor No (no usable logprobs either) is missing from that
        text's dict; the scorer then uses its detectors for it.

        Raises:
            BackendError: the server cannot be reached or rejects the requests (after retries).
            DataError: prompts and texts differ in length.
        """
        qs = _questions(persona, texts, prompts, self.exemplars)
        # max_tokens=3: room for a leading whitespace token before the answer in the text fallback.
        reqs = [ChatRequest(messages=m, max_tokens=3, temperature=0.0, top_logprobs=self.top_logprobs) for *_, m in qs]
        probs = [self._prob(r) for r in self.backend.complete(reqs)]
        undetermined = sum(p is None for p in probs)
        if undetermined:
            log.warning(
                "judge %s: %d of %d answers were neither Yes nor No; those traits are left to the detectors",
                self.backend.model,
                undetermined,
                len(probs),
            )
        return _assemble(persona, len(texts), qs, probs)

    def _prob(self, res: dict[str, Any]) -> float | None:
        for alternatives in res.get("logprobs") or []:
            p = yes_probability(alternatives)
            if p is not None:
                self.stats["logprobs"] += 1
                return p
        p = answer_from_text(res.get("text", ""))
        if p is not None:
            self.stats["text"] += 1
            return p
        self.stats["undetermined"] += 1
        return None


class HFJudge:
    """Judge with an in-process transformers model: P(Yes) read from next-token logits.

    Args:
        model: a causal LM (the SmolLM2 default, or any chat model).
        tokenizer: its tokenizer, with a chat template.
        batch_size: questions per forward pass (>= 1).
        exemplars: positive and negative exemplars per trait in the rubric (each).

    Raises:
        BackendError: the tokenizer cannot spell "Yes"/"No" as tokens, or batch_size < 1.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, exemplars: int = 2) -> None:
        from personatune.generation import BackendError

        if not isinstance(batch_size, int) or batch_size < 1:
            raise BackendError(f"batch_size={batch_size!r} must be an integer >= 1")
        self.model, self.tokenizer, self.batch_size, self.exemplars = model, tokenizer, batch_size, exemplars
        yes, no = self._answer_ids("yes"), self._answer_ids("no")
        # A token that starts both answers (e.g. a bare space) says nothing about which one follows.
        self.yes_ids, self.no_ids = sorted(set(yes) - set(no)), sorted(set(no) - set(yes))
        if not self.yes_ids or not self.no_ids:
            raise BackendError(
                "HFJudge: the tokenizer has no distinct tokens for 'Yes' and 'No'; use another judge model"
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)  # padded positions are masked, the id only fills space

    def _answer_ids(self, word: str) -> list[int]:
        """Ids of single-token spellings of the answer; first tokens of the spellings if none is single.

        Every chat model's tokenizer has single tokens for Yes/No; the first-token fallback (an
        approximation: "N" also starts "Never") only serves tiny test tokenizers.
        """
        spellings = [s.format(w=word.capitalize(), W=word, WU=word.upper()) for s in _SPELLINGS]
        enc = [self.tokenizer(s, add_special_tokens=False)["input_ids"] for s in spellings]
        single = sorted({e[0] for e in enc if len(e) == 1})
        return single or sorted({e[0] for e in enc if e})

    def judge(
        self, persona: PersonaSpec, texts: list[str], prompts: list[str | None] | None = None
    ) -> list[dict[str, tuple[float, float]]]:
        """Per text, per trait id: (P(expressed), P(violated)), each in [0, 1].

        Raises:
            DataError: prompts and texts differ in length.
            PersonatuneError: the tokenizer has no chat template (ConfigError from personatune.models).
        """
        qs = _questions(persona, texts, prompts, self.exemplars)
        return _assemble(persona, len(texts), qs, self.yes_probabilities([m for *_, m in qs]))

    def yes_probabilities(self, conversations: list[list[dict[str, str]]]) -> list[float]:
        """P(Yes) at the first answer position of each conversation (renormalised over yes + no tokens)."""
        import torch

        encoded = [encode_chat(self.tokenizer, c, add_generation_prompt=True) for c in conversations]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        device = next(self.model.parameters()).device
        yes = torch.tensor(self.yes_ids, device=device)
        no = torch.tensor(self.no_ids, device=device)
        out = [0.0] * len(encoded)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    width = max(len(encoded[i]) for i in idx)
                    ids = torch.tensor(
                        [[self.pad_id] * (width - len(encoded[i])) + encoded[i] for i in idx], device=device
                    )
                    mask = torch.tensor(
                        [[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=device
                    )
                    # Left padding: positions must count real tokens only, or padded rows see shifted positions.
                    pos = (mask.cumsum(-1) - 1).clamp(min=0)
                    logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[
                        :, -1, :
                    ]
                    logp = torch.log_softmax(logits.float(), dim=-1)
                    p_yes = torch.logsumexp(logp[:, yes], dim=-1)
                    p_no = torch.logsumexp(logp[:, no], dim=-1)
                    # yes / (yes + no) computed in log space: stable when both masses are tiny.
                    p = torch.sigmoid(p_yes - p_no).tolist()
                    for j, i in enumerate(idx):
                        out[i] = float(p[j])
        finally:
            self.model.train(was_training)
        return out


def build_judge(
    args: Any, *, default_model: str | None = None, model_args: Any = None, cache_dir: Any = None
) -> Any | None:
    """The judge a `config.JudgeArgs` describes (`scorer.judge` in a run config, `--judge` in the CLI), or None.

    Args:
        args: a JudgeArgs (backend none | hf | openai, model, base_url, ...).
        default_model: hf: the model used when `args.model` is unset (the run's model.name).
        model_args: hf: a config.ModelArgs (dtype, device) for loading; None = library defaults.
        cache_dir: openai: folder of the response cache (re-judging the same texts costs nothing); None = no cache.

    Returns:
        An HFJudge, an OpenAIJudge, or None for backend "none".

    Raises:
        ModelNotFoundError / ConfigError: the hf model cannot be loaded (one-line message with the fix).
        BackendError: bad openai connection parameters.
    """
    if args.backend == "none":
        return None
    if args.backend == "openai":
        cache = ResponseCache(cache_dir) if cache_dir is not None else None
        return OpenAIJudge(
            args.base_url,
            args.model,
            api_key_env=args.api_key_env,
            concurrency=args.concurrency,
            max_retries=args.max_retries,
            cache=cache,
            exemplars=args.exemplars,
        )
    from personatune import models

    name = args.model or default_model or models.DEFAULT_MODEL
    if model_args is not None:
        model, tok = models.load_configured_model(name, model_args)
    else:
        model, tok = models.load_model_and_tokenizer(name)
    return HFJudge(model, tok, batch_size=args.batch_size, exemplars=args.exemplars)


def run_judge(config: Any, run_root: Any) -> Any | None:
    """The judge a run config's `scorer.judge` asks for (hf default model: the run's model.name), or None.

    OpenAI answers are cached in RUN_DIR/judge_cache/, shared by the stages (they run one at a time).
    """
    from pathlib import Path

    return build_judge(
        config.scorer.judge,
        default_model=config.model.name,
        model_args=config.model,
        cache_dir=Path(run_root) / "judge_cache",
    )
