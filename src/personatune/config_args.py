"""The sections of the run config, one `XArgs` per component (model, gates, data, teacher, scorer, judge, iterations,
eval; `train:` is `training.args.TrainArgs`), each field with a one-line doc, unit and range.

`config.RunConfig` nests them and re-exports every name here; import them from `personatune.config`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from personatune.config_section import ConfigSection

# Largest data.heldout_fraction: at least a quarter of the prompts stays for training.
MAX_HELDOUT_FRACTION = 0.75


class _Section(ConfigSection):
    """Strict keys and values (config_section.py): no `yes` for a number, finite floats, no NUL bytes."""


class ModelArgs(_Section):
    """Which model to train, and how to load it."""

    name: str = Field(
        "smollm2-135m-instruct",
        description="model: 'smollm2-135m-instruct' (embedded GGUF default), 'tiny' (in-process test model), a Hugging Face id, or a local path",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = float32 on CPU, bfloat16 on GPUs that support it"
    )
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N', 'mps'")
    trust_remote_code: bool = Field(
        False, description="allow model code from the checkpoint to run; off unless you trust the source"
    )
    cache_dir: str | None = Field(
        None, description="where converted checkpoints are cached; default $PERSONATUNE_CACHE or ~/.cache/personatune"
    )

    @field_validator("device")
    @classmethod
    def _a_device(cls, value: str) -> str:
        # The spelling is checked when the config loads; whether CUDA exists is checked when a model loads (models.py).
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("not a device; fix: auto, cpu, cuda, cuda:N or mps")
        return value


class PersonaGateArgs(_Section):
    """Stage-2 gate thresholds (METRICS.md)."""

    min_traits: int = Field(5, ge=1, description="fewest core traits allowed (count)")
    max_traits: int = Field(10, ge=1, description="most core traits allowed (count)")
    min_positive: int = Field(3, ge=1, description="fewest positive exemplars per trait (count)")
    min_negative: int = Field(3, ge=1, description="fewest negative exemplars per trait (count)")
    min_separability: float = Field(
        0.8,
        ge=0,
        le=1,
        description="leave-one-out AUROC each trait must reach: the instrument orders its held-out positives above its held-out negatives (0-1)",
    )
    max_trait_similarity: float = Field(
        0.9,
        ge=0,
        le=1,
        description="cosine similarity bound between two traits' exemplar centroids; above it they are redundant (0-1)",
    )
    min_examples: int = Field(3, ge=0, description="fewest example interactions (count)")

    @model_validator(mode="after")
    def _max_not_below_min(self) -> "PersonaGateArgs":
        if self.max_traits < self.min_traits:
            raise ValueError(
                f"max_traits = {self.max_traits} must be >= min_traits = {self.min_traits}; "
                f"fix: raise gates.persona.max_traits or lower gates.persona.min_traits"
            )
        return self


class DataGateArgs(_Section):
    """Stage-3 gate thresholds (METRICS.md)."""

    chosen_consistency: float = Field(
        0.85, ge=0, le=1, description="consistency rate the chosen responses must reach (fraction)"
    )
    chosen_on_task: float = Field(
        0.85,
        ge=0,
        le=1,
        description="on-task rate the chosen responses must reach: share with on_task >= 0.5, i.e. "
        "that address the user's request (fraction)",
    )
    rejected_inconsistency: float = Field(
        0.85, ge=0, le=1, description="share of rejected responses that must be inconsistent (fraction)"
    )
    min_prompts_per_trait: int = Field(20, ge=1, description="prompts that must target each trait (count)")
    min_contexts_per_trait: int = Field(3, ge=1, description="distinct contexts each trait must be targeted in (count)")
    min_pairs_per_violated_trait: int = Field(
        20, ge=1, description="pairs whose rejected response violates each trait (count)"
    )


class EvalGateArgs(_Section):
    """Stage-4 gate thresholds (METRICS.md)."""

    min_auroc: float = Field(0.90, ge=0, le=1, description="per-trait detector AUROC on held-out data (0-1)")
    adherence: float = Field(
        0.90, ge=0, le=1, description="trait adherence of held-out chosen responses, overall and per context (fraction)"
    )
    max_style_variance: float = Field(
        0.15, ge=0, description="style variance across contexts must stay below this (relative std, unitless)"
    )
    min_auroc_per_side: int = Field(
        30,
        ge=1,
        description="held-out responses each side of a trait's AUROC (expressed, trait-flipped) needs "
        "before the gate decides; fewer: inconclusive (count per side, METRICS.md 'Evidence')",
    )
    min_style_variance_n: int = Field(
        30,
        ge=1,
        description="responses in qualifying context groups a style-variance gate (stages 4 and 5) needs "
        "before it decides; fewer: inconclusive (count)",
    )


class OptimGateArgs(_Section):
    """Stage-5/6 gate thresholds (METRICS.md)."""

    max_kl: float = Field(
        0.1,
        ge=0,
        description="drift KL: mean per-token KL(policy(.|x) || stage-1 baseline(.|persona context, x)) on held-out prompts (nats/token)",
    )
    consistency: float = Field(0.85, ge=0, le=1, description="consistency rate of the policy's own samples (fraction)")
    adherence: float = Field(0.90, ge=0, le=1, description="trait adherence of the policy's own samples (fraction)")
    max_style_variance: float = Field(
        0.15, ge=0, description="style variance of the policy's samples (relative std, unitless)"
    )
    min_on_task_retention: float = Field(
        0.95,
        ge=0,
        le=1,
        description="on-task rate of the policy's samples / that of the stage-1 baseline "
        "without a system prompt, same held-out prompts and decoding (ratio)",
    )


class FinalGateArgs(_Section):
    """Stage-7 gate thresholds (METRICS.md)."""

    min_retention: float = Field(0.95, ge=0, description="capability-suite score of final / baseline (ratio)")
    min_improvement: float = Field(
        0.0,
        description="lower end of the bootstrap 95% interval of consistency(final) - consistency(baseline) must exceed this (fraction)",
    )
    min_on_task_retention: float = Field(
        0.95,
        ge=0,
        le=1,
        description="on-task rate of the final model / that of the baseline, both without a "
        "system prompt, same held-out prompts and decoding (ratio)",
    )


class GateArgs(_Section):
    """Every gate threshold, one section per stage."""

    persona: PersonaGateArgs = Field(default_factory=PersonaGateArgs)
    data: DataGateArgs = Field(default_factory=DataGateArgs)
    evaluation: EvalGateArgs = Field(default_factory=EvalGateArgs)
    optimization: OptimGateArgs = Field(default_factory=OptimGateArgs)
    final: FinalGateArgs = Field(default_factory=FinalGateArgs)
    rate_half_width: float = Field(
        0.06,
        gt=0,
        le=1,
        description="widest 95% interval half-width a rate gate may decide on (fraction): a rate "
        "with threshold p needs ceil(1.96^2 p(1-p) / width^2) samples, fewer are inconclusive (137 at 0.85, 97 at 0.90; "
        "METRICS.md 'Evidence'; gates.rate_min_n)",
    )


class SFTArgs(_Section):
    """Stage 1: optional supervised fine-tuning of the base model."""

    dataset: str | None = Field(
        None,
        description="general chat data with a `messages` column: a local .json/.jsonl file or a Hugging Face dataset id; None = no SFT, the base model is the baseline",
    )
    split: str = Field("train", description="dataset split to use (hub datasets)")
    max_examples: int | None = Field(None, ge=1, description="cap on general examples used (count)")
    persona_mix: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of the SFT mix taken from the persona's example interactions (fraction; 0.7 = 70/30 persona/general)",
    )
    peft: Literal["lora", "full"] = Field(
        "lora", description="LoRA adapters (merged after training) or full fine-tuning"
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate")
    epochs: float = Field(1.0, gt=0, description="passes over the mix")
    batch_size: int = Field(4, ge=1, description="sequences per device step")
    max_length: int = Field(512, ge=16, description="tokens per sequence (longer ones are truncated)")
    capability: bool = Field(True, description="score the built-in capability suite and perplexity of the baseline")


class LmEvalArgs(_Section):
    """Optional lm-evaluation-harness tasks, scored on the baseline (stage 1) and the final model (stage 7).

    Needs `lm_eval` (`pip install 'personatune[lmeval]'`); without it, or when a task's data cannot be
    loaded (offline), the task is skipped with a one-line reason and the run goes on.
    """

    tasks: list[str] = Field(
        default_factory=list,
        description="lm-eval task names (its registry, or tasks defined in `include_path`); empty = off",
    )
    include_path: str | None = Field(
        None,
        description="folder of extra lm-eval task YAML files, e.g. tasks with local data (relative to the config file's folder or the working directory)",
    )
    limit: int | None = Field(100, ge=1, description="examples per task (count); None = the whole test split")
    num_fewshot: int | None = Field(
        None, ge=0, description="few-shot examples per prompt; None = each task's own default"
    )
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    apply_chat_template: bool = Field(
        False, description="wrap prompts in the model's chat template (lm-eval's --apply_chat_template)"
    )
    bootstrap_iters: int = Field(
        1000, ge=0, description="bootstrap resamples for the standard error of non-mean metrics (0 = no standard error)"
    )


class TeacherArgs(_Section):
    """Who writes the stage-3 responses."""

    backend: Literal["hf", "openai"] = Field(
        "hf",
        description="'hf': in-process generation with `model` (or model.name); 'openai': an OpenAI-compatible server (vLLM, Ollama, llama.cpp server)",
    )
    model: str | None = Field(
        None, description="hf: model name/path (default: the baseline model); openai: the served model's name"
    )
    base_url: str | None = Field(
        None, description="openai: server URL, e.g. http://127.0.0.1:8000/v1 (vLLM), http://127.0.0.1:11434/v1 (Ollama)"
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="openai: environment variable holding the API key (never logged)"
    )
    concurrency: int = Field(8, ge=1, description="openai: requests in flight at once (count)")
    max_retries: int = Field(5, ge=0, description="openai: retries per request, with exponential backoff (count)")
    batch_size: int = Field(16, ge=1, description="hf: sequences generated together (count)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="hf: the stage-3 models' weights dtype; auto = bfloat16 where the device multiplies it natively (a CPU with AMX or AVX512-BF16, a CUDA GPU with bf16), else model.dtype",
    )
    max_new_tokens: int = Field(80, ge=1, description="tokens generated per response (count)")
    temperature: float = Field(0.8, ge=0, description="sampling temperature for persona responses (0 = greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass (0-1]")

    @model_validator(mode="after")
    def _openai_needs_server(self) -> "TeacherArgs":
        # Checked when the config loads, not when stage 3 starts after the baseline has been built.
        if self.backend == "openai" and (not self.base_url or not self.model):
            raise ValueError(
                "backend=openai needs base_url and model; set data.teacher.base_url=http://HOST:PORT/v1 and data.teacher.model=NAME"
            )
        return self


class DataArgs(_Section):
    """Stage 3: scenarios, responses, contrast."""

    teacher: TeacherArgs = Field(default_factory=TeacherArgs)
    contexts: list[str] = Field(
        default_factory=lambda: ["casual", "technical", "emotional", "adversarial", "multi_turn", "off_topic"],
        description="prompt-bank contexts to use",
    )
    targets_per_prompt: int = Field(2, ge=1, description="traits each prompt targets (count)")
    heldout_fraction: float = Field(
        0.2,
        ge=0.05,
        le=MAX_HELDOUT_FRACTION,
        description="share of prompts per context kept for evaluation only (fraction); stages 5-7 score every "
        "held-out prompt, so their rate gates need as many as rate_min_n (137 at 0.85)",
    )
    max_prompt_similarity: float = Field(
        0.92, gt=0, le=1, description="cosine similarity above which prompts are near-duplicates (0-1)"
    )
    best_of: int = Field(
        4,
        ge=1,
        description="candidates sampled per prompt; one consistent candidate is kept as chosen, see `select` (count)",
    )
    best_of_first: int | None = Field(
        None,
        ge=1,
        description="candidates sampled first per prompt; the other best_of - best_of_first only for prompts with no "
        "consistent, on-task candidate among them (the same prompts are kept, fewer candidates are sampled); None or "
        ">= best_of = all best_of at once (count)",
    )
    select: Literal["adherent_voice", "typical_voice", "max_consistency"] = Field(
        "adherent_voice",
        description="which consistent candidate becomes chosen: adherent_voice = among those with the fewest traits that do not adhere (a "
        "targeted trait not expressed, or any trait violated: METRICS.md trait adherence), the one nearest the typical voice; typical_voice = "
        "the one whose style features are nearest the mean of all consistent training-split candidates (a voice that holds across "
        "contexts); max_consistency = the highest consistency score",
    )
    contrast: list[Literal["baseline", "trait_flipped", "style_broken"]] = Field(
        default_factory=lambda: ["baseline", "trait_flipped", "style_broken"],
        description="kinds of rejected responses to build",
    )
    contrast_best_of: int = Field(
        3,
        ge=1,
        description="tries per contrast response: a rejected response the scorer finds consistent is sampled again, up to "
        "this many times, and the first inconsistent one is kept (rejection sampling on the rejected side; 1 = no retry) (count)",
    )
    few_shot: bool = Field(True, description="render the persona's example interactions as few-shot turns")
    focus_targets: bool = Field(
        True,
        description="remind the teacher, in its system prompt, of the traits each prompt targets (with one positive exemplar each); measured to raise a small teacher's yield",
    )
    max_prompts: int | None = Field(None, ge=1, description="cap on scenarios (for quick runs); None = all")
    expand_per_trait: int = Field(
        0,
        ge=0,
        description="new user prompts the teacher writes per (trait, context) on top of the built-in bank, near-duplicates dropped (count); 0 = bank only",
    )


class JudgeArgs(_Section):
    """An optional LLM judge whose trait probabilities are mixed with the detectors' (scoring/judges.py).

    Rule: p = (1 - weight) * p_detector + weight * p_judge, for P(expressed) and P(violated) alike
    (docs/persona-evaluation.md, "Judges"). Used by every scorer the pipeline builds (stages 3-7).
    """

    backend: Literal["none", "hf", "openai"] = Field(
        "none",
        description="'none': detectors only; 'hf': an in-process transformers model "
        "(`model`, default model.name); 'openai': an OpenAI-compatible server (vLLM, Ollama, llama.cpp server)",
    )
    model: str | None = Field(
        None, description="hf: model name/path (default: model.name); openai: the served model's name (required)"
    )
    base_url: str | None = Field(
        None, description="openai: server URL ending in /v1, e.g. http://127.0.0.1:8000/v1 (required)"
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="openai: environment variable holding the API key (never logged)"
    )
    concurrency: int = Field(8, ge=1, description="openai: requests in flight at once (count)")
    max_retries: int = Field(5, ge=0, description="openai: retries per request, with exponential backoff (count)")
    batch_size: int = Field(16, ge=1, description="hf: questions per forward pass (count)")
    exemplars: int = Field(
        2, ge=0, description="positive and negative exemplars per trait shown in the rubric (each, count)"
    )
    weight: float = Field(
        0.5, ge=0, le=1, description="the judge's share of each trait probability (0-1); the detectors get 1 - weight"
    )

    @model_validator(mode="after")
    def _openai_needs_server(self) -> "JudgeArgs":
        if self.backend == "openai" and (not self.base_url or not self.model):
            raise ValueError(
                "backend=openai needs base_url and model; set scorer.judge.base_url=http://HOST:PORT/v1 and scorer.judge.model=NAME"
            )
        return self


class ScorerArgs(_Section):
    """The scorer every stage uses: the persona instrument (scoring/instrument.py), optionally with an LLM judge."""

    judge: JudgeArgs = Field(
        default_factory=JudgeArgs, description="optional LLM judge mixed into the trait probabilities (default: none)"
    )


class IterationArgs(_Section):
    """Stage 6: expert iteration — rounds of on-policy sampling, keeping answers consistent and on task, and training on them."""

    algorithm: Literal["dpo", "sft", "gkd"] = Field(
        "dpo",
        description="what a round trains on its kept answers: 'dpo' (best kept answer vs the worst "
        "sample, reference log-probs from the persona-prompted baseline), 'sft' "
        "(distillation on the kept answers) or 'gkd' (the kept answers with the persona-prompted baseline's "
        "whole next-token distribution as target, as train.algorithm=gkd)",
    )

    rounds: int = Field(1, ge=0, description="round budget after stage 5 (count); 0 = stage 6 keeps the stage-5 model")
    samples_per_prompt: int = Field(
        4, ge=2, description="responses sampled per training prompt from the current policy (count, >= 2)"
    )
    min_margin: float = Field(
        0.2, ge=0, le=1, description="a new pair needs consistency(best) - consistency(worst) >= this (0-1)"
    )
    max_prompts: int | None = Field(
        None, ge=1, description="cap on training prompts sampled per round (count); None = all stage-3 training prompts"
    )
    max_steps: int | None = Field(
        None, ge=1, description="optimizer steps per round (count); None = train.max_steps / train.epochs"
    )
    min_improvement: float = Field(
        0.0,
        ge=0,
        description="a round must raise held-out consistency by more than this over the best so far, else stop (fraction)",
    )
    stop_margin: float = Field(
        0.05,
        ge=0,
        description="stop early when every stage-5 gate passes with this much room (consistency >= gate + margin, KL <= max_kl - margin*max_kl) (fraction)",
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature for the round's candidates")


class EvalArgs(_Section):
    """How stages 4-7 sample the models they evaluate, and how style variance groups the samples.

    Stage 4 samples the baseline, stages 5-6 the policy, stage 7 the baseline and the final model: all on the
    stage-3 held-out prompts, with no system prompt and this decoding, so their persona figures compare like
    with like. A decoding key left unset takes data.teacher's value (what every evaluation used before this
    section existed), so a config without `eval:` evaluates, and hashes for the stage cache, exactly as before.
    """

    temperature: float | None = Field(
        None,
        ge=0,
        description="sampling temperature of evaluation samples (>= 0, 0 = greedy); unset = data.teacher.temperature",
    )
    top_p: float | None = Field(
        None, gt=0, le=1, description="nucleus sampling mass of evaluation samples ((0, 1]); unset = data.teacher.top_p"
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="tokens generated per evaluation response (count, >= 1); unset = data.teacher.max_new_tokens",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="sequences generated together when stages 4 and 7 sample (count, >= 1); unset = data.teacher.batch_size; "
        "stages 5-6 use train.eval_batch_size",
    )
    min_per_context: int = Field(
        5,
        ge=2,
        description="responses a context group needs to count in style variance, in every stage that measures it "
        "(4-7) (count, >= 2); formerly gates.evaluation.min_per_context, which is still read",
    )


# The eval keys that, left unset, take data.teacher's value.
EVAL_FROM_TEACHER = ("temperature", "top_p", "max_new_tokens", "batch_size")
