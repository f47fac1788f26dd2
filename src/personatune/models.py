"""The one place that loads models and tokenizers: the embedded SmolLM2 GGUF, Hugging Face ids/folders, `tiny`.

Three kinds of model name (see `resolve_model`):

1. ``smollm2-135m-instruct`` (alias ``smollm2``, the default) or a path to a ``.gguf`` file. transformers can load
   a GGUF file, but it dequantizes every tensor on each load (~10-15 s for 135M parameters) and marks the
   model as quantized, so it refuses to train or save it. We therefore convert it ONCE into a plain
   safetensors checkpoint under ``$PERSONATUNE_CACHE/models/`` (default ``~/.cache/personatune``) and load
   that on every later call (<1 s). The conversion is written to a temp folder and renamed into place, so
   an interrupted or concurrent conversion never leaves a half folder that a later load would pick up.
2. A local folder with ``config.json``, or a Hugging Face id: loaded with ``from_pretrained`` (offline
   users set ``HF_HUB_OFFLINE=1`` and rely on their local Hugging Face cache).
3. ``tiny``: a 2-layer Llama with a byte-level BPE tokenizer trained in-process on an embedded corpus,
   for tests (no download, < 1 s, deterministic per seed).

Padding side is left as the checkpoint defines it (SmolLM2: right). Callers that batch prompts for
generation must pad on the left themselves (see personatune.kl); trainers (TRL) set what they need.

>>> model, tok = build_tiny_model(seed=0)                                  # doctest: +SKIP
>>> ids = encode_chat(tok, [{"role": "user", "content": "Hi!"}])           # doctest: +SKIP
>>> tok.decode(ids)                                                        # doctest: +SKIP
'<|im_start|>user\\nHi!<|im_end|>\\n<|im_start|>assistant\\n'

The pieces live in modules named after what they own, and every name is re-exported here so that
`personatune.models` stays the one import path: `model_source` (a name -> ModelSource, availability check),
`model_cache` (the GGUF conversion cache, atomic folder publishing) and `tiny_model`. This module resolves the
device and dtype, loads, saves, encodes chats and describes the environment.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from personatune.errors import ConfigError, ModelNotFoundError, RunDirError

# Re-exported: personatune.models stays the one import path for models (stages, tests, benchmarks use it).
from personatune.model_cache import (  # noqa: F401
    CONVERSION_MARKER,
    _make_temp_dir,
    _plain_copy,
    _publish_dir,
    _remove_stale_temps,
    _version,
    cache_root,
    converted_path,
    ensure_converted,
    is_converted,
    load_gguf,
)
from personatune.model_source import (  # noqa: F401
    DEFAULT_MODEL,
    NAMES_HELP,
    SMOLLM2_ALIASES,
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    TINY_NAME,
    ModelKind,
    ModelSource,
    _first_line,
    _not_found,
    check_model_available,
    resolve_model,
    smollm2_gguf_path,
)
from personatune.tiny_model import (  # noqa: F401
    CHATML_TEMPLATE,
    TINY_SPECIAL_TOKENS,
    TINY_VOCAB_SIZE,
    build_tiny_model,
    build_tiny_tokenizer,
)

log = logging.getLogger(__name__)


# --- loading -------------------------------------------------------------------------------------
def default_device() -> str:
    """'cuda' if a CUDA device is available, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device={device} but no CUDA device is available; fix: model.device=auto or cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ConfigError(f"model.device={device!r} is not a device; fix: auto, cpu, cuda or cuda:N")
    return device


def _resolve_dtype(dtype: Any, device: str) -> Any:
    """None/'auto' -> float32 on CPU, bfloat16 on GPUs that support it (else float32)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype in ("float32", "bfloat16", "float16"):
        return getattr(torch, dtype)
    raise ConfigError(f"model.dtype={dtype!r} is not supported; fix: auto, float32, bfloat16 or float16")


def native_bf16(device: str) -> bool:
    """Whether `device` multiplies bfloat16 natively: a CUDA GPU with bf16, or a CPU with AMX tiles or AVX512-BF16
    (torch's own CPU probes). Elsewhere bfloat16 is emulated, slower than float32."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def sampling_dtype(requested: str, model_args: Any) -> str:
    """The weights dtype for sampling data (stage 3's data.teacher.dtype): `requested`, or for "auto" bfloat16 where the
    configured device multiplies it natively (`native_bf16`), else model.dtype."""
    if requested != "auto":
        return requested
    return "bfloat16" if native_bf16(_resolve_device(model_args.device)) else model_args.dtype


def resolve_loadable_path(name: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """What `load_model_and_tokenizer` will actually load for `name`: a folder or a hub id.

    Stages record this so later stages reload exactly the same weights. For a GGUF name this is the
    converted checkpoint (converting first if needed).

    Raises:
        ModelNotFoundError: the name cannot be resolved, or is `tiny` (in memory only: save it with save_model).
    """
    source = resolve_model(name)
    if source.kind == "tiny":
        raise ModelNotFoundError(
            "model 'tiny' is built in memory and has no path; fix: save it with personatune.models.save_model and use that folder"
        )
    if source.kind == "gguf":
        return str(ensure_converted(source, cache_dir))
    return source.path


def load_model_and_tokenizer(
    name: str,
    *,
    dtype: Any = None,
    device: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
    for_training: bool = False,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer by name (see `resolve_model`).

    Args:
        name: model name, local folder, .gguf file or Hugging Face id.
        dtype: None/"auto" (float32 on CPU, bfloat16 on capable GPUs), "float32", "bfloat16", "float16" or a torch.dtype.
        device: None/"auto" (`default_device()`), "cpu", "cuda", "cuda:N".
        trust_remote_code: run model code shipped with a checkpoint; off unless the caller passes True.
        cache_dir: personatune cache root for converted GGUF checkpoints.
        for_training: return the model in train mode (else eval mode).

    Returns:
        (model, tokenizer). The tokenizer always has a pad token (eos if the checkpoint has none);
        padding_side is left as the checkpoint sets it: callers batching prompts pad on the left.

    Raises:
        ModelNotFoundError: the name cannot be resolved or its files cannot be loaded (one line, what was tried).
        ConfigError: bad dtype/device, or a quantized checkpoint requested for training.
    """
    device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, device)
    source = resolve_model(name)
    if source.kind == "tiny":
        model, tok = build_tiny_model(seed=0)
    else:
        path = str(ensure_converted(source, cache_dir)) if source.kind == "gguf" else source.path
        model, tok = _load_pretrained(source, path, torch_dtype, trust_remote_code)
    if for_training and getattr(model, "is_quantized", False):
        raise ConfigError(
            f"model.name={name}: the checkpoint is quantized and cannot be trained; fix: use an unquantized checkpoint"
        )
    _ensure_pad_token(model, tok)
    model = model.to(device=device, dtype=torch_dtype)
    model.train(for_training)
    return model, tok


def load_configured_model(name: str, model_args: Any, *, for_training: bool = False) -> tuple[Any, Any]:
    """`load_model_and_tokenizer(name, ...)` with the dtype, device, trust_remote_code and cache_dir of a
    run config's `model` section (personatune.config.ModelArgs): how every stage loads a model."""
    return load_model_and_tokenizer(
        name,
        dtype=model_args.dtype,
        device=model_args.device,
        trust_remote_code=model_args.trust_remote_code,
        cache_dir=model_args.cache_dir,
        for_training=for_training,
    )


def _load_pretrained(source: ModelSource, path: str, torch_dtype: Any, trust_remote_code: bool) -> tuple[Any, Any]:
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        # Hub errors (missing repo, offline mode, no network) are OSError subclasses; ValueError covers
        # folders whose config names no known architecture. The user needs the name, not the traceback.
        if Path(path).is_dir():
            raise _unloadable(path, e) from None
        raise _not_found(source.name, source.tried, _first_line(e)) from None
    except (TypeError, KeyError, AttributeError, IndexError, StrictDataclassError) as e:
        # A local folder whose config.json is JSON but not a model config (a list, a wrong type or value, a missing key).
        raise _unloadable(path, e) from None
    return model, tok


def _unloadable(path: str, e: BaseException) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model folder {path} cannot be loaded ({_first_line(e)}); fix: point model.name at a folder saved by "
        f"transformers (config.json, weights, tokenizer files), or set it to {NAMES_HELP}"
    )


def _ensure_pad_token(model: Any, tok: Any) -> None:
    """Give the tokenizer a pad token (eos when the checkpoint has none) and tell generate() about it."""
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
            model.resize_token_embeddings(len(tok))
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id


# --- saving and encoding -------------------------------------------------------------------------
def save_model(model: Any, tokenizer: Any, path: str | os.PathLike) -> Path:
    """Save model and tokenizer (chat template included) to `path`, atomically.

    Everything is written to a temp folder next to `path` and renamed into place, so `path` is either the
    old complete checkpoint or the new one. An existing `path` is replaced only if it is empty or
    looks like a model folder (has config.json).

    Args:
        model: a transformers PreTrainedModel (a PEFT model saves its adapter the same way).
        tokenizer: its tokenizer.
        path: target folder.

    Returns:
        The folder path.

    Raises:
        RunDirError: `path` is a file, a non-model folder with content, or cannot be written.
    """
    target = Path(path)
    if target.exists() and (
        not target.is_dir()
        or (
            any(target.iterdir())
            and not (target / "config.json").is_file()
            and not (target / "adapter_config.json").is_file()
        )
    ):
        raise RunDirError(
            f"refusing to save a model over {target}: it exists and is not a model folder; fix: choose a new or empty folder"
        )
    if getattr(tokenizer, "chat_template", None) is None:
        log.warning("saving tokenizer without a chat template to %s", target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _make_temp_dir(target)
    except OSError as e:
        raise RunDirError(f"cannot write {target.parent}: {_first_line(e)}; fix: choose a writable folder") from None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _publish_dir(tmp, target, keep_existing=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation rendered with the tokenizer's chat template.

    The template already writes every special token (`<|im_start|>` ... `<|im_end|>`), so the text is
    tokenized with add_special_tokens=False: tokenizers that prepend BOS on encode would otherwise
    double it.

    Args:
        tokenizer: a tokenizer with a chat template.
        messages: [{"role": "system"|"user"|"assistant", "content": str}, ...].
        add_generation_prompt: end with the assistant header so the model's reply follows.

    Returns:
        The token ids.

    Raises:
        ConfigError: the tokenizer has no chat template (a base model, not a chat model).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"model.name={getattr(tokenizer, 'name_or_path', '?')}: tokenizer has no chat template; fix: use a chat/instruct model"
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# --- environment ---------------------------------------------------------------------------------
def describe_environment(cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Versions, device, threads and where the default models were found (for `personatune env`).

    Package versions are read from metadata, so trl/peft are not imported (importing them takes seconds).

    Returns:
        A flat dict of printable values; models that are missing are described, never raised.
    """
    import torch

    from personatune.embeddings import minilm_path

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate"):
        info[pkg] = _version(pkg)
    device = default_device()
    info["device"] = device
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
    else:
        info["device_name"] = f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            info["device_name"] += "; mps available (not used by default)"
    info["torch_threads"] = torch.get_num_threads()
    try:
        source = resolve_model(DEFAULT_MODEL)
        info["smollm2_gguf"] = str(source.gguf_path)
        conv = converted_path(source, cache_dir)
        info["smollm2_converted"] = (
            str(conv) if is_converted(source, cache_dir) else f"not converted yet (will be {conv})"
        )
    except ModelNotFoundError as e:
        info["smollm2_gguf"] = f"not found: {e}"
        info["smollm2_converted"] = "n/a"
    try:
        info["minilm"] = str(minilm_path())
    except ModelNotFoundError as e:
        info["minilm"] = f"not found: {e}"
    info["cache_dir"] = str(cache_root(cache_dir))
    info["executable"] = sys.executable
    return info
