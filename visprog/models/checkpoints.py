"""Where checkpoints come from: hub ids and local paths pass through, `tiny:<name>` builds a
small random model on first use (the `tiny` preset), and a failed load becomes a
`ModelLoadError` that says which checkpoint failed and how to get it."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

from visprog.errors import VisProgError

TINY_PREFIX = "tiny:"


class ModelLoadError(VisProgError):
    """A model checkpoint that could not be loaded; the message says which and how to get it."""

    def __init__(self, message: str, checkpoint: str):
        self.checkpoint = checkpoint
        super().__init__(message)


# -- where checkpoints come from -------------------------------------------------------------

def cache_dir() -> Path:
    """visprog's cache folder: `VISPROG_CACHE_DIR`, else the user cache dir + 'visprog'."""
    env = os.environ.get("VISPROG_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("visprog"))


_TINY_BUILDERS: dict[str, tuple[Callable[[Path], None], str]] = {}
_TINY_LOCK = threading.Lock()


def register_tiny(name: str, builder: Callable[[Path], None], *, version: str = "1") -> None:
    """Register how to build the tiny random model `tiny:<name>`.

    Args:
        name: the part after `tiny:`.
        builder: writes a small random model and its processor into the given (empty)
            folder with `save_pretrained`.
        version: bump when the builder changes, so stale copies in the cache are rebuilt.
    """
    _TINY_BUILDERS[name] = (builder, version)


# Places that register more tiny builders when asked (the layer that assembles the tools adds
# one that imports the tool files), so `tiny:<name>` resolves before any tool was built
# without this layer importing tools/.
_TINY_SOURCES: list[Callable[[], None]] = []


def add_tiny_source(load: Callable[[], None]) -> None:
    """Register a function that imports the files whose `register_tiny` calls may be missing."""
    if load not in _TINY_SOURCES:
        _TINY_SOURCES.append(load)


def _ensure_builders_registered(name: str) -> None:
    for load in list(_TINY_SOURCES):
        if name in _TINY_BUILDERS:
            return
        load()


def tiny_dir() -> Path:
    """Where tiny models are built: `VISPROG_TINY_DIR`, else `<cache>/tiny` (a test suite
    can share one folder of tiny models while each test gets a fresh step cache)."""
    env = os.environ.get("VISPROG_TINY_DIR")
    return Path(env).expanduser() if env else cache_dir() / "tiny"


def resolve_checkpoint(checkpoint: str) -> str:
    """What `from_pretrained` should read for a configured checkpoint.

    `tiny:<name>` is built on first use into `<cache>/tiny/<name>/` (or
    `$VISPROG_TINY_DIR/<name>/`) and that path returned;
    anything else (a local path or a hub id) is returned unchanged.

    Raises:
        ModelLoadError: an unknown `tiny:` name, or its builder failed.
    """
    if not checkpoint.startswith(TINY_PREFIX):
        return checkpoint
    name = checkpoint[len(TINY_PREFIX):]
    _ensure_builders_registered(name)
    if name not in _TINY_BUILDERS:
        known = ", ".join(TINY_PREFIX + n for n in sorted(_TINY_BUILDERS)) or "none"
        raise ModelLoadError(f"unknown tiny checkpoint {checkpoint!r}; known: {known}", checkpoint)
    builder, version = _TINY_BUILDERS[name]
    target = tiny_dir() / name
    marker = target / "visprog_tiny.json"
    with _TINY_LOCK:
        if _marker_version(marker) == version:
            return str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename, so another process never sees half a model.
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            builder(tmp)
            (tmp / "visprog_tiny.json").write_text(json.dumps({"name": name, "version": version}))
            if target.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=target.parent))
                os.replace(target, stale / name)
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:
                if _marker_version(marker) != version:  # not a concurrent build that won
                    raise
        except Exception as e:
            raise ModelLoadError(f"could not build tiny checkpoint {checkpoint!r}: {e}",
                                 checkpoint) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _marker_version(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("version")
    except (OSError, ValueError):
        return None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_path(checkpoint: str) -> bool:
    """A local folder rather than a hub id ('org/name')."""
    return (os.path.isabs(checkpoint) or checkpoint.startswith((".", "~"))
            or os.path.exists(checkpoint) or not _HUB_ID.match(checkpoint))


def load_error(checkpoint: str, exc: BaseException) -> ModelLoadError:
    """A `ModelLoadError` naming the checkpoint and the ways to get it."""
    if checkpoint.startswith(TINY_PREFIX):
        how = "the tiny models are built offline; see the error above"
    elif looks_like_path(checkpoint):
        how = ("the configured local path has no usable model; point the config at a folder "
               "written by save_pretrained, or use a hub id")
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        how = ("it is downloaded from the Hugging Face hub on first use"
               + (" but HF_HUB_OFFLINE is set" if offline else "")
               + f"; get it once with internet access (`huggingface-cli download {checkpoint}`),"
               " or set a local path in the config, or run with `--preset tiny` to try offline")
    return ModelLoadError(f"could not load model checkpoint {checkpoint!r}: "
                          f"{type(exc).__name__}: {exc}\n  how to fix: {how}", checkpoint)
