"""Loading neural models once, sharing them between tools, and the tiny offline checkpoints.

- `ModelManager` loads each (kind, checkpoint) once, on first use, on the chosen device and
  dtype, and hands the same object to every tool that asks (Loc and Select share one
  GroundingDINO). It can list and unload what it holds.
- `resolve_checkpoint` turns a configured checkpoint into what `from_pretrained` takes:
  `tiny:<name>` builds a small random model on first use (the `tiny` preset, used by the tests
  and for trying the tools offline); local paths and hub ids pass through unchanged, so
  transformers honours `HF_HUB_OFFLINE` and its local cache.
- `load_error` turns a failed load into a `ModelLoadError` that says which checkpoint failed
  and how to get it.

torch is imported only when a model is loaded, so importing this module stays cheap.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from PIL import Image

from visprog.errors import CacheWarning, VisProgError
from visprog.values import load_image

Loader = Callable[[str, str, Any], Any]  # (path_or_id, device, dtype or None) -> model bundle

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


# transformers draws a progress bar for every model it loads or saves ("Loading weights",
# "Writing model shards"), even one that takes milliseconds. During visprog's loads and tiny
# builds its bars appear only once they have run this long: long work still shows progress,
# and downloads (the hub client's own bars) are untouched.
LOAD_BAR_DELAY_S = 2.0


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Within: transformers' progress bars show only once they have run `LOAD_BAR_DELAY_S`
    (diffusers' own per-load bar is turned off by the Replace loader)."""
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


def _ensure_builders_registered(name: str) -> None:
    """Tiny builders register when their tool module is imported; import them on demand so
    `tiny:<name>` resolves even before any tool was built."""
    if name in _TINY_BUILDERS:
        return
    from importlib import import_module

    from visprog.tools import MODEL_MODULES

    for mod in MODEL_MODULES.values():
        try:
            import_module(f"visprog.tools.{mod}")
        except ImportError:  # a module whose optional dependency is missing
            continue
        if name in _TINY_BUILDERS:
            return


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
        target = _tiny_home() / name
        marker = target / "visprog_tiny.json"
        if _marker_version(marker) == version:
            return str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename, so another process never sees half a model.
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            with quiet_loading():
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


# -- the manager -----------------------------------------------------------------------------

def _modules_in(obj: Any) -> list[Any]:
    """The torch modules inside a loaded bundle (a model, a tuple/dict of parts, a pipeline)."""
    import torch

    found: list[Any] = []
    seen: set[int] = set()

    def walk(o: Any, depth: int) -> None:
        if id(o) in seen or depth > 2:
            return
        seen.add(id(o))
        if isinstance(o, torch.nn.Module):
            found.append(o)
        elif isinstance(o, (tuple, list)):
            for v in o:
                walk(v, depth + 1)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(getattr(o, "components", None), dict):  # diffusers pipelines
            walk(o.components, depth + 1)
        elif hasattr(o, "__dict__") and depth < 2:
            for v in vars(o).values():
                walk(v, depth + 1)

    walk(obj, 0)
    return found


def _nbytes(modules: Iterable[Any]) -> int:
    total = 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            total += t.numel() * t.element_size()
    return total


def pick_device(device: str | None = None) -> str:
    """'cuda' if available, then 'mps', then 'cpu'; an explicit device ('auto' = None) wins."""
    if device and device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class ModelManager:
    """Loads models lazily, once per (kind, checkpoint), and shares them.

    Args:
        device: "cuda", "cuda:1", "mps", "cpu", or None/"auto" to pick the best available.
        half: load in float16 on CUDA (None or True: yes; False: no). Ignored elsewhere.

    Example:
        >>> mm = ModelManager(device="cpu")
        >>> model, processor = mm.get("clip", "tiny:clip", load_clip)  # doctest: +SKIP
    """

    def __init__(self, device: str | None = None, half: bool | None = None):
        self._device_arg = device
        self._device: str | None = None
        self._half = half
        self._models: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.RLock()
        self.events: list[dict[str, Any]] = []

    @property
    def device(self) -> str:
        if self._device is None:  # resolved on first use: it imports torch
            self._device = pick_device(self._device_arg)
        return self._device

    def dtype(self, half: bool | None = None) -> Any:
        """The dtype loaders should use: float16 on CUDA unless `half` is False, else None
        (float32). Half precision is never used on CPU or MPS, whatever `half` says."""
        want = self._half if half is None else half
        if want is False or not self.device.startswith("cuda"):
            return None
        import torch

        return torch.float16

    def get(self, kind: str, checkpoint: str, loader: Loader, *, half: bool | None = None) -> Any:
        """The model bundle for (kind, checkpoint), loading it with `loader` the first time.

        Args:
            kind: what the loader makes ("grounding_dino", "sam", ...); tools asking for the
                same kind and checkpoint get the same object.
            checkpoint: as configured (`tiny:<name>`, a local path or a hub id).
            loader: `loader(path_or_id, device, dtype)` returning the bundle (a model, or a
                tuple of model and processor).
            half: False for models that must stay in float32 even on CUDA.

        Raises:
            ModelLoadError: the checkpoint is missing or could not be loaded.
        """
        resolved = resolve_checkpoint(checkpoint)
        key = (kind, resolved)
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                return entry["bundle"]
            if looks_like_path(resolved):
                if not os.path.exists(os.path.expanduser(resolved)):
                    raise load_error(checkpoint, FileNotFoundError(f"no such folder: {resolved}"))
            else:
                hub_unreachable()  # no network: load from the local cache, or fail at once
            dtype = self.dtype(half)
            t0 = time.perf_counter()
            try:
                with quiet_loading():
                    bundle = loader(os.path.expanduser(resolved) if looks_like_path(resolved)
                                    else resolved, self.device, dtype)
            except ModelLoadError:
                raise
            except Exception as e:  # from_pretrained raises OSError, ValueError, HF errors...
                raise load_error(checkpoint, e) from e
            modules = _modules_in(bundle)
            for m in modules:
                m.eval()
            seconds = time.perf_counter() - t0
            self._models[key] = {"kind": kind, "checkpoint": checkpoint, "path": resolved,
                                 "device": self.device, "dtype": str(dtype or "float32"),
                                 "bytes": _nbytes(modules), "load_seconds": seconds,
                                 "bundle": bundle}
            self.events.append({"event": "load", "kind": kind, "checkpoint": checkpoint,
                                "seconds": seconds})
            return bundle

    def loaded(self) -> list[dict[str, Any]]:
        """What is loaded: kind, checkpoint, device, dtype, bytes, load_seconds."""
        with self._lock:
            return [{k: v for k, v in e.items() if k not in ("bundle", "path")}
                    for e in self._models.values()]

    def unload(self, kind: str | None = None, checkpoint: str | None = None) -> int:
        """Drop the matching models (all when no filter) and free their memory.

        Returns:
            how many models were unloaded.
        """
        with self._lock:
            keys = [k for k, e in self._models.items()
                    if (kind is None or e["kind"] == kind)
                    and (checkpoint is None or checkpoint in (e["checkpoint"], e["path"]))]
            for k in keys:
                e = self._models.pop(k)
                t0 = time.perf_counter()
                del e["bundle"]
                self.events.append({"event": "unload", "kind": e["kind"],
                                    "checkpoint": e["checkpoint"],
                                    "seconds": time.perf_counter() - t0})
        if keys:
            import gc

            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return len(keys)


_DEFAULT: ModelManager | None = None
_DEFAULT_LOCK = threading.Lock()


def default_manager() -> ModelManager:
    """The process-wide manager, made on first use (device auto, half on CUDA)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = ModelManager()
        return _DEFAULT


def manager_of(ctx: Any) -> ModelManager:
    """The manager a tool should use: `ctx.models`, else the process-wide one."""
    return getattr(ctx, "models", None) or default_manager()


# -- helpers shared by the model tools -------------------------------------------------------

# The most elongated image a model's processor is given. Processors resize by the short side
# up to a cap on the long one (ViLT's real checkpoint: 384 and 640, in multiples of 32), so a
# strip like a CropLeftOf at the image's edge (1 pixel wide) would be resized to zero pixels
# and fail inside the library. Thinner images are padded, black on the right or at the bottom,
# to this; their own pixels keep their coordinates, and the tools clip boxes and crop masks
# back to the image's size.
MODEL_MAX_ASPECT = 10.0


def rgb_image(image: Any) -> Image.Image:
    """A step's image argument as RGB: the interpreter passes RGB images; anything else
    (another mode, an array) goes through `load_image`."""
    if isinstance(image, Image.Image) and image.mode == "RGB":
        return image
    return load_image(image)


def model_image(image: Image.Image) -> Image.Image:
    """`image`, padded (its pixels at the top left) when its long side is more than
    `MODEL_MAX_ASPECT` times the short one; else `image` itself."""
    w, h = image.size
    pw, ph = max(w, math.ceil(h / MODEL_MAX_ASPECT)), max(h, math.ceil(w / MODEL_MAX_ASPECT))
    if (pw, ph) == (w, h):
        return image
    canvas = Image.new("RGB", (pw, ph))
    canvas.paste(image.convert("RGB"), (0, 0))
    return canvas


def to_model_inputs(inputs: Any, device: str, dtype: Any = None) -> dict[str, Any]:
    """Processor outputs moved to the model's device; floating tensors cast to its dtype."""
    import torch

    out = {}
    for k, v in dict(inputs).items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def model_dtype(model: Any) -> Any:
    """The dtype of a model's first floating parameter."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def tiny_bert_tokenizer(words: Iterable[str], *, extra_special: Iterable[str] = ()) -> Any:
    """A BERT WordPiece tokenizer over a small vocabulary (special tokens, characters, words).

    transformers 5 takes the vocabulary as `vocab=` (a dict); `vocab_file=` is silently
    ignored there and every token becomes [UNK].
    """
    from transformers import BertTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-")
    tokens = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *extra_special] + chars
              + ["##" + c for c in chars[:36]] + sorted(set(words)))
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def tiny_clip_tokenizer(words: Iterable[str]) -> Any:
    """A CLIP BPE tokenizer over a small vocabulary: characters plus merges that rebuild
    each word. transformers 5 wants `merges` as a list of tuples."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []

    def add(t: str) -> None:
        vocab.setdefault(t, len(vocab))

    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-":
        add(c)
        add(c + "</w>")
    for w in words:
        syms = list(w[:-1]) + [w[-1] + "</w>"]
        cur = syms[0]
        for s in syms[1:]:
            if (cur, s) not in merges:
                merges.append((cur, s))
            cur += s
            add(cur)
    for t in ("<|startoftext|>", "<|endoftext|>"):
        add(t)
    return CLIPTokenizer(vocab=vocab, merges=merges)
