"""Where checkpoints come from: hub ids and local paths pass through, `tiny:<name>` builds a
small random model on first use (the `tiny` preset), and a failed load becomes a
`ModelLoadError` that says which checkpoint failed and how to get it."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from visprog.errors import CacheWarning, ModelLoadError

TINY_PREFIX = "tiny:"


# -- where checkpoints come from -------------------------------------------------------------

def cache_dir() -> Path:
    """visprog's cache folder: `VISPROG_CACHE_DIR`, else the user cache dir + 'visprog'."""
    env = os.environ.get("VISPROG_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("visprog"))


# transformers draws a progress bar for every model it loads or saves ("Loading weights",
# "Writing model shards"), even one that takes milliseconds. During visprog's loads and tiny
# builds its bars appear only once they have run this long: long work still shows progress,
# and downloads (the hub client's own bars) are untouched.
LOAD_BAR_DELAY_S = 2.0


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Within: transformers' progress bars show only once they have run `LOAD_BAR_DELAY_S`
    (diffusers' own per-load bar is turned off by the Replace loader), and what the libraries
    say that no user can act on goes to visprog's log (`library_logs`: building a tiny
    model provokes it too)."""
    from visprog.models.library_logs import route_library_logs

    route_library_logs()
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        transformers_logging = None
    set_hook = getattr(transformers_logging, "set_tqdm_hook", None)  # transformers 5
    if set_hook is None:
        yield
        return

    def delayed(factory: Any, args: tuple, kwargs: dict) -> Any:
        kwargs = {**kwargs, "delay": max(float(kwargs.get("delay") or 0), LOAD_BAR_DELAY_S)}
        return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)

    previous = set_hook(delayed)
    try:
        yield
    finally:
        set_hook(previous)


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


_FALLBACK_WARNED: set[str] = set()


def _usable_dir(folder: Path) -> str | None:
    """None if files can be made in `folder` (created if need be), else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
        return None
    except OSError as e:
        return e.strerror or str(e)


def _tiny_home() -> Path:
    """`tiny_dir()`, or a folder under the system's temporary folder when that one can't be
    used (a cache folder that is a file, or not writable): the tiny models are inputs a run
    needs, so their place must not fail it. Warns once per unusable folder."""
    home = tiny_dir()
    why = _usable_dir(home)
    if why is None:
        return home
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    fallback = Path(tempfile.gettempdir()) / f"visprog-tiny-{uid}"
    if str(home) not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(str(home))
        warnings.warn(f"can't build tiny models in {home} ({why}); building them in "
                      f"{fallback} instead", CacheWarning, stacklevel=4)
    return fallback


def resolve_checkpoint(checkpoint: str) -> str:
    """What `from_pretrained` should read for a configured checkpoint.

    `tiny:<name>` is built on first use into `<cache>/tiny/<name>/` (or
    `$VISPROG_TINY_DIR/<name>/`, or a folder under the system's temporary folder when that
    one can't be used) and that path returned;
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
        target = _tiny_home() / name
        marker = target / "visprog_tiny.json"
        if _marker_version(marker) == version:
            return str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        # One builder at a time across processes: several runs started at once on an empty
        # folder would otherwise each build, and one would move away the folder another has
        # just resolved and is loading.
        with file_lock(target.parent / f".{name}.lock"):
            if _marker_version(marker) == version:  # another process built it meanwhile
                return str(target)
            _build_tiny(name, version, builder, target, checkpoint)
    return str(target)


def _build_tiny(name: str, version: str, builder: Callable[[Path], None], target: Path,
                checkpoint: str) -> None:
    # Build beside the target and rename, so no reader ever sees half a model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        with quiet_loading():
            builder(tmp)
        (tmp / "visprog_tiny.json").write_text(json.dumps({"name": name, "version": version}))
        if target.exists():  # a copy of an older version
            stale = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=target.parent))
            os.replace(target, stale / name)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, target)
    except Exception as e:
        raise ModelLoadError(f"could not build tiny checkpoint {checkpoint!r}: {e}",
                             checkpoint) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if need be) across processes; released when
    the block ends or the process dies. Where the platform has no file locks it only
    serialises the threads of this process (the callers hold a thread lock too)."""
    with open(path, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # Windows
            try:
                import msvcrt
            except ImportError:
                yield
                return
            fh.seek(0)
            while True:
                try:
                    msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after ten seconds: keep waiting
                    continue
            try:
                yield
            finally:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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


# How long the one check of a process that the Hugging Face hub can be reached may take.
HUB_PROBE_TIMEOUT_S = 3.0
_HUB_REACHABLE: dict[str, bool] = {}  # endpoint -> answered the check (once per process)


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants
        return constants.ENDPOINT
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hub_offline_set() -> bool:
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_unreachable() -> bool:
    """Whether hub checkpoints must come from the local cache: HF_HUB_OFFLINE is set, or
    the hub did not take a connection (tried once per process, `HUB_PROBE_TIMEOUT_S` at
    most). Then the hub client is put in offline mode for the rest of the process: without
    a network it would retry each file for minutes before failing, and with offline mode a
    checkpoint already in the cache still loads."""
    if _hub_offline_set():
        return True
    endpoint = _hub_endpoint()
    if endpoint not in _HUB_REACHABLE:
        url = urllib.parse.urlsplit(endpoint)
        try:
            port = url.port or (443 if url.scheme == "https" else 80)
            with socket.create_connection((url.hostname or "", port), HUB_PROBE_TIMEOUT_S):
                _HUB_REACHABLE[endpoint] = True
        except (OSError, ValueError):
            _HUB_REACHABLE[endpoint] = False
    if _HUB_REACHABLE[endpoint]:
        return False
    try:
        from huggingface_hub import constants
        constants.HF_HUB_OFFLINE = True  # read by the hub client and transformers per call
    except ImportError:
        pass
    return True


def load_error(checkpoint: str, exc: BaseException) -> ModelLoadError:
    """A `ModelLoadError` naming the checkpoint and the ways to get it."""
    if checkpoint.startswith(TINY_PREFIX):
        how = "the tiny models are built offline; see the error above"
    elif looks_like_path(checkpoint):
        how = ("the configured local path has no usable model; point the config at a folder "
               "written by save_pretrained, or use a hub id")
    else:
        endpoint = _hub_endpoint()
        why = ("" if not _hub_offline_set() else
               f" but {endpoint} can't be reached (no network?), so only checkpoints already "
               "in the local cache load" if _HUB_REACHABLE.get(endpoint) is False else
               " but HF_HUB_OFFLINE is set")
        how = ("it is downloaded from the Hugging Face hub on first use" + why
               + f"; get it once with internet access (`huggingface-cli download {checkpoint}`)"
               ", then HF_HUB_OFFLINE=1 uses the cached copy; or set a local path in the "
               "config, or run with `--preset tiny` to try offline")
    return ModelLoadError(f"could not load model checkpoint {checkpoint!r}: "
                          f"{type(exc).__name__}: {exc}\n  how to fix: {how}", checkpoint)
