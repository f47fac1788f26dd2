"""The `eval:` section (evaluation decoding and style-variance grouping, stages 4-7) and the cross-field checks
that refuse a bad config when it loads, not when a stage starts hours later.

No model is loaded: every test only resolves configs (and one runs `personatune config` in-process).
"""

import hashlib
import json
from pathlib import Path

import pytest

from personatune.config import (
    EVAL_FROM_TEACHER,
    EvalArgs,
    TeacherArgs,
    config_keys_help,
    load_config,
    section_hash,
    to_yaml,
)
from personatune.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PERSONA = f"persona={REPO / 'examples' / 'personas' / 'captain_nova.yaml'}"
# The sections stage 4 hashed before `eval:` existed, and the same with eval added (what its cache key should use).
STAGE4_KEYS = ("gates", "seed", "data", "scorer", "model")


def refused(*overrides: str) -> str:
    """The one-line ConfigError message for a config with these overrides."""
    with pytest.raises(ConfigError) as e:
        load_config(None, [PERSONA, *overrides])
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def legacy_hash(cfg, keys: tuple[str, ...], extra: str = "") -> str:
    """section_hash as it was computed before the `eval:` section (eval absent, min_per_context under gates.evaluation)."""
    dump = cfg.model_dump(mode="json")
    ev = dump.pop("eval")
    dump["gates"]["evaluation"]["min_per_context"] = ev["min_per_context"]
    sel = {k: dump.get(k) for k in sorted(keys)}
    return hashlib.sha256((json.dumps(sel, sort_keys=True) + extra).encode()).hexdigest()[:16]


# --- the eval section ---------------------------------------------------------------------------------


def test_eval_decoding_defaults_to_data_teacher():
    cfg = load_config(None, [PERSONA])
    t = TeacherArgs()
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_new_tokens, cfg.eval.batch_size) == (
        t.temperature,
        t.top_p,
        t.max_new_tokens,
        t.batch_size,
    )
    assert cfg.eval.min_per_context == 5
    # a teacher changed by key=value or by YAML carries over to the evaluation decoding, as before `eval:` existed
    cfg = load_config(
        None,
        [
            PERSONA,
            "data.teacher.temperature=0.3",
            "data.teacher.top_p=0.5",
            "data.teacher.max_new_tokens=12",
            "data.teacher.batch_size=4",
        ],
    )
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_new_tokens, cfg.eval.batch_size) == (0.3, 0.5, 12, 4)


def test_eval_decoding_from_a_yaml_teacher(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        f"{PERSONA.replace('=', ': ', 1)}\ndata:\n  teacher:\n    temperature: 0\n    max_new_tokens: 24\n"
    )
    cfg = load_config(cfg_path)
    assert cfg.eval.temperature == 0 and cfg.eval.max_new_tokens == 24 and cfg.eval.top_p == 0.95


def test_explicit_eval_values_win(tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        f"{PERSONA.replace('=', ': ', 1)}\ndata:\n  teacher:\n    temperature: 0.9\n    max_new_tokens: 24\n"
        "eval:\n  temperature: 0.2\n  min_per_context: 3\n"
    )
    cfg = load_config(cfg_path, ["eval.batch_size=2"])
    assert (cfg.eval.temperature, cfg.eval.max_new_tokens, cfg.eval.batch_size, cfg.eval.min_per_context) == (
        0.2,
        24,
        2,
        3,
    )
    assert cfg.data.teacher.temperature == 0.9  # stage 3's decoding is untouched
    assert not hasattr(cfg.gates.evaluation, "min_per_context")  # one declaration: eval.min_per_context


def test_a_bad_eval_value_names_the_key():
    assert "eval.temperature: Input should be greater than or equal to 0 (got -1)" in refused("eval.temperature=-1")
    assert "eval.top_p:" in refused("eval.top_p=0")
    assert "eval.max_new_tokens:" in refused("eval.max_new_tokens=0")
    assert "eval.min_per_context:" in refused("eval.min_per_context=1")
    assert "eval.batch_size: expected a number, got true" in refused("eval.batch_size=yes")
    assert "eval.tempreature: unknown key; did you mean 'eval.temperature'?" in refused("eval.tempreature=0.5")
    # a bad teacher value is reported once, under its own key (eval takes only validated values)
    msg = refused("data.teacher.temperature=-1")
    assert "data.teacher.temperature:" in msg and "eval." not in msg


def test_the_old_min_per_context_key_is_still_read(tmp_path):
    cfg = load_config(None, [PERSONA, "gates.evaluation.min_per_context=2"])
    assert cfg.eval.min_per_context == 2
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        f"{PERSONA.replace('=', ': ', 1)}\ngates:\n  evaluation:\n    min_per_context: 4\n    min_auroc: 0.8\n"
    )
    cfg = load_config(cfg_path)
    assert cfg.eval.min_per_context == 4 and cfg.gates.evaluation.min_auroc == 0.8
    assert (
        load_config(
            None, [PERSONA, "gates.evaluation.min_per_context=3", "eval.min_per_context=3"]
        ).eval.min_per_context
        == 3
    )
    msg = refused("gates.evaluation.min_per_context=2", "eval.min_per_context=3")
    assert (
        "gates.evaluation.min_per_context=2 and eval.min_per_context=3 name the same setting; fix: keep only eval.min_per_context"
        in msg
    )
    assert (
        "eval.min_per_context (given as gates.evaluation.min_per_context): Input should be greater than or equal to 2 (got 1)"
        in refused("gates.evaluation.min_per_context=1")
    )


def test_eval_keys_are_listed_and_documented():
    rows = {k: (doc, default) for k, doc, default in config_keys_help()}
    for key in (*EVAL_FROM_TEACHER, "min_per_context"):
        doc, _ = rows[f"eval.{key}"]
        assert doc and ("data.teacher" in doc or key == "min_per_context")
    assert "gates.evaluation.min_per_context" not in rows  # one declaration: eval.min_per_context
    assert EvalArgs().temperature is None  # unset until the run config fills it from data.teacher


def test_the_resolved_config_reloads_to_the_same_values_and_hashes(tmp_path):
    cfg = load_config(None, [PERSONA, "data.teacher.temperature=0.3", "eval.max_new_tokens=40"])
    (tmp_path / "resolved.yaml").write_text(to_yaml(cfg))
    again = load_config(tmp_path / "resolved.yaml")
    assert again.eval == cfg.eval
    assert section_hash(again, STAGE4_KEYS + ("eval",)) == section_hash(cfg, STAGE4_KEYS + ("eval",))


# --- stage cache keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides", [[], ["data.teacher.temperature=0.3", "gates.evaluation.min_per_context=2", "seed=4"]]
)
def test_a_config_without_eval_hashes_as_before_the_section_existed(overrides):
    # A run directory made before `eval:` existed keeps its finished stages: adding "eval" to a stage's hashed
    # sections changes nothing while eval only repeats data.teacher's decoding.
    cfg = load_config(None, [PERSONA, *overrides])
    for keys in (STAGE4_KEYS, ("persona", "gates"), ("model", "train", "gates", "data", "scorer", "seed")):
        assert section_hash(cfg, keys, "v3") == legacy_hash(cfg, keys, "v3")
        assert section_hash(cfg, keys + ("eval",), "v3") == legacy_hash(cfg, keys, "v3")


def test_an_eval_change_changes_the_hash_of_stages_that_read_eval():
    base = load_config(None, [PERSONA])
    keys = STAGE4_KEYS + ("eval",)
    assert section_hash(load_config(None, [PERSONA, "eval.temperature=0"]), keys) != section_hash(base, keys)
    assert section_hash(load_config(None, [PERSONA, "eval.batch_size=4"]), keys) != section_hash(base, keys)
    assert section_hash(load_config(None, [PERSONA, "eval.min_per_context=3"]), keys) != section_hash(base, keys)
    # an eval value equal to the teacher's is the same decoding: same hash
    assert section_hash(load_config(None, [PERSONA, "eval.temperature=0.8"]), keys) == section_hash(base, keys)
    # stages that do not evaluate (no "eval", no "gates") are not re-run by an eval change
    assert section_hash(load_config(None, [PERSONA, "eval.temperature=0"]), ("model", "seed")) == section_hash(
        base, ("model", "seed")
    )


# --- cross-field checks at load time -----------------------------------------------------------------------


def test_persona_gate_max_below_min_is_refused_at_load_time():
    msg = refused("gates.persona.max_traits=3")
    assert msg.endswith(
        "gates.persona: max_traits = 3 must be >= min_traits = 5; fix: raise gates.persona.max_traits or lower gates.persona.min_traits"
    )
    assert (
        load_config(
            None, [PERSONA, "gates.persona.max_traits=3", "gates.persona.min_traits=3"]
        ).gates.persona.max_traits
        == 3
    )
    # the other checks the stage-2 dataclass made, now the section's own field bounds
    assert "gates.persona.min_separability: Input should be less than or equal to 1 (got 1.5)" in refused(
        "gates.persona.min_separability=1.5"
    )
    assert "gates.persona.min_traits: Input should be greater than or equal to 1 (got 0)" in refused(
        "gates.persona.min_traits=0"
    )
    assert "gates.persona.min_examples:" in refused("gates.persona.min_examples=-1")


def test_an_openai_teacher_without_a_server_is_refused_at_load_time():
    msg = refused("data.teacher.backend=openai", "data.teacher.model=m")
    assert "data.teacher: backend=openai needs base_url and model; set data.teacher.base_url=" in msg
    assert "data.teacher: backend=openai" in refused(
        "data.teacher.backend=openai", "data.teacher.base_url=http://127.0.0.1:8000/v1"
    )
    cfg = load_config(
        None,
        [
            PERSONA,
            "data.teacher.backend=openai",
            "data.teacher.model=m",
            "data.teacher.base_url=http://127.0.0.1:8000/v1",
        ],
    )
    assert cfg.data.teacher.backend == "openai"


def test_sdft_with_full_fine_tuning_is_refused_at_load_time():
    msg = refused("train.algorithm=sdft", "train.peft=full")
    assert "train.algorithm=sdft with train.peft=full" in msg and "fix: set train.peft=lora" in msg
    load_config(None, [PERSONA, "train.algorithm=sdft"])  # lora (the default) is fine
    load_config(None, [PERSONA, "train.algorithm=dpo", "train.peft=full"])  # other recipes may fully fine-tune


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_an_online_batch_that_splits_a_group_is_refused_at_load_time(algo):
    msg = refused(f"train.algorithm={algo}", "train.per_device_batch_size=3", "train.num_generations=2")
    assert "train.per_device_batch_size x train.grad_accum = 3 must be a multiple of train.num_generations=2" in msg
    load_config(
        None,
        [
            PERSONA,
            f"train.algorithm={algo}",
            "train.per_device_batch_size=3",
            "train.grad_accum=2",
            "train.num_generations=2",
        ],
    )
    # DPO has no groups: the same batch is fine
    load_config(None, [PERSONA, "train.algorithm=dpo", "train.per_device_batch_size=3", "train.num_generations=2"])


def test_a_dpo_weight_per_loss_is_checked_at_load_time():
    assert "dpo_loss_weights has 1 entries for 2 dpo_loss entries" in refused(
        "train.dpo_loss=[sigmoid, sft]", "train.dpo_loss_weights=[1.0]"
    )


def test_reference_samples_as_sft_source_need_the_sft_or_gkd_recipe():
    msg = refused("train.algorithm=dpo", "train.sft_source=reference")
    assert "sft_source='reference' applies to algorithm='sft' or 'gkd' only, not 'dpo'" in msg
    assert "fix: set train.algorithm=gkd (or sft)" in msg
    for algo in ("sft", "gkd"):
        args = load_config(None, [PERSONA, f"train.algorithm={algo}", "train.sft_source=reference"]).train
        assert (args.algorithm, args.sft_source, args.reference_samples) == (algo, "reference", 4)


def test_capability_anchors_need_the_reference_samples():
    msg = refused("train.algorithm=sft", "train.anchor_samples=2")
    assert "anchor_samples=2 needs sft_source='reference'" in msg and "fix: set train.sft_source=reference" in msg
    args = load_config(None, [PERSONA, "train.algorithm=sft", "train.sft_source=reference", "train.anchor_samples=2"])
    assert (args.train.anchor_samples, load_config(None, [PERSONA]).train.anchor_samples) == (2, 0)


def test_a_misspelled_device_is_refused_at_load_time():
    assert "model.device: not a device; fix: auto, cpu, cuda, cuda:N or mps (got 'gpu')" in refused("model.device=gpu")
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_config(None, [PERSONA, f"model.device={ok}"]).model.device == ok


def test_every_problem_is_listed_at_once():
    msg = refused("gates.persona.max_traits=3", "train.algorithm=sdft", "train.peft=full", "eval.top_p=2")
    # section checks and field checks together; a whole-config check runs once the sections are valid
    assert "gates.persona: max_traits = 3" in msg and "eval.top_p:" in msg


def test_the_config_command_refuses_a_bad_config_with_one_line(capsys):
    from personatune.cli import main

    code = main(
        ["config", str(REPO / "examples" / "tiny.yaml"), "train.algorithm=grpo", "train.per_device_batch_size=3"]
    )
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "must be a multiple of train.num_generations=4" in lines[0]


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_the_examples_load(example):
    cfg = load_config(example)
    assert (
        cfg.eval.temperature == cfg.data.teacher.temperature
        and cfg.eval.max_new_tokens == cfg.data.teacher.max_new_tokens
    )
