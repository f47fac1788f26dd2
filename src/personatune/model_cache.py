"""The cache of plain checkpoints converted once from GGUF files, and the atomic folder publishing it shares.

transformers can load a GGUF file, but it dequantizes every tensor on each load (~10-15 s for 135M parameters)
and marks the model as quantized, so it refuses to train or save it. `ensure_converted` therefore converts it ONCE
into a plain safetensors checkpoint under ``$PERSONATUNE_CACHE/models/`` (default ``~/.cache/personatune``), which
every later load reads (<1 s). The conversion is written to a temp folder and renamed into place
(`_publish_dir`, also used by `models.save_model`), so an interrupted or concurrent conversion never leaves a half
folder that a later load would pick up.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from personatune.errors import RunDirError
from personatune.model_source import DEFAULT_MODEL, ModelSource, _first_line, _not_found

log = logging.getLogger(__name__)

CONVERSION_MARKER = "personatune_conversion.json"  # written last; a folder without it is never loaded


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
    stem = (
        DEFAULT_MODEL
        if source.name == DEFAULT_MODEL
        else re.sub(r"[^a-z0-9]+", "-", Path(source.gguf_file or "model").stem.lower()).strip("-")
    )
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
        raise RunDirError(
            f"cannot write model cache {final.parent}: {_first_line(e)}; fix: set model.cache_dir or $PERSONATUNE_CACHE to a writable folder"
        ) from None
    try:
        log.info("converting %s to a plain checkpoint in %s (once, ~15 s)", source.gguf_path, final)
        t0 = time.perf_counter()
        gguf_model, tok = load_gguf(source)
        plain = _plain_copy(gguf_model)
        del gguf_model
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        st = source.gguf_path.stat()
        marker = {
            "source": str(source.gguf_path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "transformers": _version("transformers"),
            "seconds": round(time.perf_counter() - t0, 2),
        }
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


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
