"""The run config: typed, documented, strict.

Precedence (lowest to highest): field defaults < the YAML file < `key=value` overrides on the
command line (dotted paths, values parsed as YAML scalars: `model.name=tiny`, `seed=3`).
Unknown keys are errors with a "did you mean"; so are keys given twice, `yes`/`no` for a number, an
infinite float, and a file past the limits of personatune.limits (size, nesting, alias expansion).
Every problem is reported at once in one `ConfigError`. The resolved config is written into the run
directory before any work.

>>> cfg = load_config(None, ["persona=examples/personas/captain_nova.yaml", "model.name=tiny"])
>>> cfg.model.name
'tiny'
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from personatune import limits
from personatune.config_args import (
    EVAL_FROM_TEACHER as EVAL_FROM_TEACHER,
)
from personatune.config_args import (
    DataArgs as DataArgs,
)
from personatune.config_args import (
    DataGateArgs as DataGateArgs,
)
from personatune.config_args import (
    EvalArgs as EvalArgs,
)
from personatune.config_args import (
    EvalGateArgs as EvalGateArgs,
)
from personatune.config_args import (
    FinalGateArgs as FinalGateArgs,
)
from personatune.config_args import (
    GateArgs as GateArgs,
)
from personatune.config_args import (
    IterationArgs as IterationArgs,
)
from personatune.config_args import (
    JudgeArgs as JudgeArgs,
)
from personatune.config_args import (
    LmEvalArgs as LmEvalArgs,
)
from personatune.config_args import (
    ModelArgs as ModelArgs,
)
from personatune.config_args import (
    OptimGateArgs as OptimGateArgs,
)
from personatune.config_args import (
    PersonaGateArgs as PersonaGateArgs,
)
from personatune.config_args import (
    ScorerArgs as ScorerArgs,
)
from personatune.config_args import (
    SFTArgs as SFTArgs,
)
from personatune.config_args import (
    TeacherArgs as TeacherArgs,
)
from personatune.config_args import (  # re-exported: the sections are imported from personatune.config
    _Section as _Section,
)
from personatune.errors import ConfigError
from personatune.training import TrainArgs
from personatune.training.args import online_batch_problem, sdft_peft_problem
from personatune.yaml_input import YamlLimitError, duplicate_keys, load_bounded


class RunConfig(_Section):
    """A whole run. See examples/quickstart.yaml."""

    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="run name; the run directory is <run_dir>/<name>"
    )
    run_dir: str = Field("runs", description="parent folder of run directories")
    persona: str = Field(
        ..., description="path to the persona YAML file (relative to the config file's folder or the working directory)"
    )
    seed: int = Field(0, ge=0, le=limits.SEED_MAX, description=f"global random seed (0-{limits.SEED_MAX})")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's own choice")
    model: ModelArgs = Field(default_factory=ModelArgs)
    sft: SFTArgs = Field(default_factory=SFTArgs)
    lm_eval: LmEvalArgs = Field(default_factory=LmEvalArgs)
    data: DataArgs = Field(default_factory=DataArgs)
    scorer: ScorerArgs = Field(default_factory=ScorerArgs)
    train: TrainArgs = Field(default_factory=TrainArgs)
    iterations: IterationArgs = Field(default_factory=IterationArgs)
    gates: GateArgs = Field(default_factory=GateArgs)
    eval: EvalArgs = Field(
        default_factory=EvalArgs,
        description="evaluation decoding and style-variance grouping, stages 4-7 (default: data.teacher's decoding)",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        # gates.evaluation.min_per_context moved to eval.min_per_context; configs written before still load.
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("gates"), dict)
            or not isinstance(data["gates"].get("evaluation"), dict)
        ):
            return data
        old_gate = data["gates"]["evaluation"]
        if "min_per_context" not in old_gate:
            return data
        gate = dict(old_gate)
        value = gate.pop("min_per_context")
        ev = data.get("eval")
        if ev is None:
            ev = {}
        if isinstance(ev, dict):
            if "min_per_context" in ev and ev["min_per_context"] != value:
                raise ValueError(
                    f"gates.evaluation.min_per_context={limits.short_repr(value)} and eval.min_per_context={limits.short_repr(ev['min_per_context'])} "
                    "name the same setting; fix: keep only eval.min_per_context"
                )
            ev = {**ev, "min_per_context": ev.get("min_per_context", value)}
        return {**data, "gates": {**data["gates"], "evaluation": gate}, "eval": ev}

    @model_validator(mode="after")
    def _eval_defaults(self) -> "RunConfig":
        # Unset evaluation decoding follows data.teacher: the decoding stages 4-7 used before `eval:` existed.
        for key in EVAL_FROM_TEACHER:
            if getattr(self.eval, key) is None:
                setattr(self.eval, key, getattr(self.data.teacher, key))
        return self

    @model_validator(mode="after")
    def _kl_term_while_drift_gate(self) -> "RunConfig":
        # Checked when the config loads: a trainer whose KL term is off while the drift-KL gate exists would train
        # with nothing holding it near the reference (TRL's GRPO default beta is 0). SFT/SDFT need no beta: their
        # loss is itself a divergence to the persona-prompted baseline.
        max_kl = self.gates.optimization.max_kl
        uses_beta = self.train.algorithm in ("dpo", "grpo", "rloo") or (
            self.iterations.rounds > 0 and self.iterations.algorithm == "dpo"
        )
        if uses_beta and max_kl is not None and math.isfinite(max_kl) and not self.train.beta > 0:
            raise ValueError(
                f"train.beta={self.train.beta!r}: train.algorithm={self.train.algorithm} (or iterations.algorithm=dpo) has no KL term at "
                f"beta 0 while the drift-KL gate gates.optimization.max_kl={max_kl:g} exists; fix: set train.beta=0.1 (DPO) or "
                f"0.04 (GRPO/RLOO), or use train.algorithm=sdft or sft (distillation to the persona-prompted baseline)"
            )
        return self

    @model_validator(mode="after")
    def _sdft_needs_lora(self) -> "RunConfig":
        # TRL's SDFT reloads its teacher from the model's path under full fine-tuning, not the stage-1 baseline in memory.
        problem = sdft_peft_problem(self.train) if self.train.algorithm == "sdft" else None
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _online_batch_holds_whole_groups(self) -> "RunConfig":
        # GRPO/RLOO compare each prompt's completions together: a batch must hold whole groups.
        problem = online_batch_problem(self.train) if self.train.algorithm in ("grpo", "rloo") else None
        if problem:
            raise ValueError(problem)
        return self


def _dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _dotted_keys(ann, path + ".")
    return keys


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Turn `a.b=value` strings into a nested dict. Returns (dict, problems)."""
    out: dict[str, Any] = {}
    problems = []
    for o in overrides:
        if "=" not in o:
            problems.append(f"override {o!r}: expected key=value (e.g. model.name=tiny)")
            continue
        k, v = o.split("=", 1)
        try:
            val = load_bounded(v)[0] if v != "" else ""
        except YamlLimitError as e:
            problems.append(f"override {k.strip()}: {e.message}; fix: {e.fix}")
            continue
        except yaml.YAMLError:
            val = v
        _set_dotted(out, k.strip(), val)
    return out, problems


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# Keys that moved: new path -> the old spelling, still read (RunConfig._moved_keys).
MOVED_KEYS = {"eval.min_per_context": "gates.evaluation.min_per_context"}


def _has_path(data: Any, path: str) -> bool:
    """True when the nested dict `data` holds the dotted key `path`."""
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _given_as(data: dict[str, Any]) -> dict[str, str]:
    """For each moved key given under its old spelling only: new path -> how an error names it."""
    return {
        new: f"{new} (given as {old})"
        for new, old in MOVED_KEYS.items()
        if _has_path(data, old) and not _has_path(data, new)
    }


def _format_validation(
    err: ValidationError, known: list[str], source: str, given_as: dict[str, str] | None = None
) -> list[str]:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        path = (given_as or {}).get(path, path)
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(
                f"{path}: unknown key{hint} (every valid key, with its default and meaning: `personatune config --keys`)"
            )
        elif e["type"] == "missing":
            lines.append(f"{path}: required but missing; add `{path}: ...` to {source} or pass {path}=...")
        else:
            msg = str(e["msg"]).removeprefix("Value error, ")
            # A cross-field check names its own keys and values: of the whole config (no path), or of one section
            # (the section's path; its input, the whole section, would only repeat the config back).
            if not path:
                lines.append(msg)
            elif isinstance(e.get("input"), dict) and e["type"] == "value_error":
                lines.append(f"{path}: {msg}")
            else:
                lines.append(f"{path}: {msg} (got {limits.short_repr(e.get('input'))})")
    return lines


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Resolve a run config: defaults < YAML file < key=value overrides.

    Relative `persona` and `lm_eval.include_path` paths are resolved against the config file's folder
    first, then the working directory.

    Raises:
        ConfigError: listing every problem (unreadable file, unknown key with a suggestion, bad value).
    """
    data: dict[str, Any] = {}
    problems: list[str] = []
    source = "the config"
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        source = str(p)
        if "\x00" in source or not p.is_file():
            what = "is a folder, not a file" if "\x00" not in source and p.is_dir() else "not found"
            raise ConfigError(
                f"config file {limits.short_repr(source)} {what}; fix: pass an existing YAML file, e.g. examples/quickstart.yaml"
            )
        try:
            size = p.stat().st_size
            if size > limits.CONFIG_MAX_BYTES:
                raise ConfigError(
                    f"config file {p} has {size:,} bytes, more than the limit of {limits.CONFIG_MAX_BYTES:,} "
                    "(personatune.limits.CONFIG_MAX_BYTES); fix: a run config needs a few dozen lines (examples/quickstart.yaml)"
                )
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start}); fix: save it as UTF-8") from None
        except OSError as e:
            raise ConfigError(f"config file {p} cannot be read ({e.strerror}); fix: check its permissions") from None
        try:
            loaded, node = load_bounded(text)
        except YamlLimitError as e:
            raise ConfigError(f"{p} line {e.line}: {e.message}; fix: {e.fix}") from None
        except yaml.reader.ReaderError as e:
            line = text.count("\n", 0, max(0, e.position)) + 1
            raise ConfigError(
                f"{p} line {line}: a character YAML does not allow (NUL or another control character); fix: delete it"
            ) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(
                f"{p}{where}: not valid YAML ({limits.shorten(str(getattr(e, 'problem', None) or e), 200)}); fix the syntax there"
            ) from None
        # SafeLoader keeps the last of two equal keys; in a run config that silently drops a setting.
        for parent, key, first, second in duplicate_keys(node):
            where = f"{parent}.{key}" if parent else key
            problems.append(
                f"{where}: given twice (lines {first} and {second}); only one value can count, fix: delete one of them"
            )
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys (got {type(loaded).__name__})")
        data = loaded
        base_dir = p.resolve().parent
    over, override_problems = parse_overrides(overrides or [])
    problems += override_problems
    data = _merge(data, over)
    known = _dotted_keys(RunConfig)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        problems += _format_validation(e, known, source, _given_as(data))
        cfg = None
    if problems or cfg is None:
        raise ConfigError(f"invalid config ({source}): " + "; ".join(problems))
    persona = Path(cfg.persona)
    if not persona.is_absolute():
        cand = base_dir / persona
        if not cand.exists() and (Path.cwd() / persona).exists():
            cand = Path.cwd() / persona
        cfg.persona = str(cand.resolve())
    inc = cfg.lm_eval.include_path
    if inc and not Path(inc).is_absolute():
        cand = base_dir / inc
        if not cand.exists() and (Path.cwd() / inc).exists():
            cand = Path.cwd() / inc
        cfg.lm_eval.include_path = str(cand.resolve())
    return cfg


def config_keys_help() -> list[tuple[str, str, Any]]:
    """(dotted key, description, default) for every config field, for `personatune config --keys`."""
    rows: list[tuple[str, str, Any]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            else:
                default = None if f.is_required() else f.get_default(call_default_factory=True)
                rows.append((f"{prefix}{name}", f.description or "", "(required)" if f.is_required() else default))

    walk(RunConfig, "")
    return rows


def _hashed_layout(cfg: RunConfig) -> dict[str, Any]:
    """The config as the stage cache hashes it: the layout from before the `eval:` section, plus what eval changes.

    eval.min_per_context is hashed where it lived before (gates.evaluation), and eval's decoding only where it
    differs from data.teacher's; a config that sets nothing under `eval:` therefore hashes as it did before the
    section existed, and a run directory made then keeps its finished stages.
    """
    dump = cfg.model_dump(mode="json")
    ev = dump.pop("eval")
    dump["gates"]["evaluation"]["min_per_context"] = ev.pop("min_per_context")
    changed = {k: v for k, v in ev.items() if v != dump["data"]["teacher"][k]}
    if changed:
        dump["eval"] = changed
    return dump


def section_hash(cfg: RunConfig, keys: tuple[str, ...], extra: str = "") -> str:
    """A stable hash of the given top-level config sections (used to decide if a stage must re-run).

    A section absent from `_hashed_layout` (an `eval:` equal to data.teacher's decoding) adds nothing to the hash.
    """
    dump = _hashed_layout(cfg)
    sel = {k: dump[k] for k in sorted(keys) if k in dump}
    blob = json.dumps(sel, sort_keys=True) + extra
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
