"""``model.path`` as a local directory or a Hugging Face hub id (``Qwen/Qwen2.5-1.5B-Instruct``).

A hub id is resolved through the Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``,
else ``~/.cache/huggingface/hub``) as transformers and TRL do: the cached snapshot first;
then, unless ``HF_HUB_OFFLINE`` is set, a download. An id that is neither cached nor
fetchable is a one-line error naming the id and what to do, raised before any work.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# org/name, each part letters, digits, '-', '_', '.'; a local path that does not exist and
# has this shape is tried as a hub id (the error then says both were tried).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE = {"1", "true", "yes", "on"}


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` has the shape of a hub model id and names no local path."""
    return bool(_HUB_ID.fullmatch(spec)) and not Path(spec).expanduser().exists()


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_model_path(spec: str | Path) -> Path:
    """The local directory of ``spec``: the path itself, or a hub id's cached (or, when not
    offline, downloaded) snapshot. ValueError with one line when a hub id cannot be had."""
    if isinstance(spec, Path) or not is_hub_id(spec):
        return Path(spec).expanduser()
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(spec, cache_dir=cache, local_files_only=True))
    except Exception:  # not in the cache (LocalEntryNotFoundError and friends)
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    if offline:
        raise ValueError(f"{spec!r} is neither a local directory nor in the Hugging Face cache ({cache}), and "
                         "HF_HUB_OFFLINE is set; download it first (`hf download " + spec + "`) or give a local "
                         "checkpoint directory")
    try:
        return Path(snapshot_download(spec, cache_dir=cache, etag_timeout=10))
    except Exception as err:
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"{spec!r} is neither a local directory nor in the Hugging Face cache ({cache}), and "
                         f"fetching it failed ({type(err).__name__}: {reason}); download it on a machine with "
                         "network (`hf download " + spec + "`) or give a local checkpoint directory") from None
