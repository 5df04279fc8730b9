"""The step cache: a step's result keyed by what it was computed from.

A key (`step_key`) hashes the tool's canonical name, its version, its settings and the
content digest of each resolved argument (image pixels, not object identity). `StepCache`
layers an in-process LRU (`MemoryCache`) over an on-disk store (`DiskCache`) that is shared
across runs and processes:

- one file per key under a fan-out subdirectory (`ab/abcdef...vpc`), written to a temp file
  in the same directory and moved into place with `os.replace`, so readers see either the
  old entry, the new one or none, never half of one, even with two processes at once;
- each file starts with a header (magic, format version, payload length, sha256 of the
  payload): a truncated or corrupted entry is detected, deleted, warned about and treated
  as a miss, so the step is simply recomputed;
- values are stored with `visprog.codec` (JSON + PNG + packed bits), never pickle;
- size-bounded: past `max_bytes`, least recently used entries (reads touch the file's
  mtime) are deleted down to 90% of the bound;
- a read-only, full or unusable directory never fails a run: it warns once and carries on
  without writing (reads keep working where they can).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import struct
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from visprog.errors import CacheWarning
from visprog.values import codec
from visprog.registry import normalize_name

__all__ = ["MISS", "CacheWarning", "CacheStats", "step_key", "MemoryCache", "DiskCache",
           "StepCache", "default_cache_dir"]

ENV_CACHE_DIR = "VISPROG_CACHE_DIR"
DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_ITEMS = 256
# Eviction goes below the bound, so that not every write past it triggers a directory scan.
EVICT_TO_FRACTION = 0.9
# Temp files older than this are leftovers of a writer that died; eviction removes them.
STALE_TEMP_SECONDS = 3600.0

_KEY_SCHEME = b"visprog-step-key/1\0"
_U64 = struct.Struct("<Q")
_KEY_RE = re.compile(r"[0-9a-f]{16,128}")


class _Miss:
    """The type of `MISS`: a lookup found nothing (a cached value may itself be None)."""

    _instance: "_Miss | None" = None

    def __new__(cls) -> "_Miss":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISS"

    def __bool__(self) -> bool:
        return False


MISS: Any = _Miss()


def default_cache_dir() -> Path:
    """Where the on-disk step cache lives: `$VISPROG_CACHE_DIR`, else the user cache dir.

    E.g. `~/.cache/visprog/steps` on Linux.
    """
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("visprog", appauthor=False)) / "steps"


def step_key(tool_name: str, version: str, settings: Mapping[str, Any],
             args: Mapping[str, Any], *, digests: Mapping[str, str] | None = None) -> str:
    """The cache key of one step: sha256 hex over everything its result depends on.

    Args:
        tool_name: the tool's name (normalised by the lenient rule, so spellings agree).
        version: the tool's implementation version.
        settings: the tool's result-changing configuration; must be JSON-serialisable.
        args: the resolved argument values by name (names match case-insensitively).
        digests: optional `codec.digest` values already computed, by argument name (as
            spelled in `args`), e.g. an input image's digest computed once per run rather
            than once per step that reads it.

    Raises:
        TypeError: settings are not JSON-serialisable, or an argument has no content hash
            (the caller then runs the step uncached).
        ValueError: two argument names differ only in case.
    """
    try:
        settings_json = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=False, allow_nan=True) if settings else "{}"
    except (TypeError, ValueError) as e:
        raise TypeError(f"tool {tool_name}: settings are not JSON-serialisable: {e}") from e
    known = digests or {}
    named: dict[str, str] = {}
    for name, value in args.items():
        key = name.lower()
        if key in named:
            raise ValueError(f"tool {tool_name}: argument {name!r} given twice")
        named[key] = known[name] if name in known else codec.digest(value)
    h = hashlib.sha256(_KEY_SCHEME)
    for part in (normalize_name(tool_name), str(version), settings_json):
        data = part.encode("utf-8", "surrogatepass")
        h.update(_U64.pack(len(data)) + data)
    h.update(_U64.pack(len(named)))
    for name in sorted(named):
        h.update(name.encode("utf-8") + b"=" + named[name].encode("ascii") + b";")
    return h.hexdigest()


# -- memory -------------------------------------------------------------------------------

class MemoryCache:
    """An in-process LRU of up to `max_items` values.

    Values are detached on the way in and on the way out (`codec.detach`: images copied,
    lists rebuilt), so neither the producer nor a later consumer can change what the cache
    holds by mutating its own object.
    """

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items = max_items
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            value = self._items.get(key, MISS)
            if value is MISS:
                return MISS
            self._items.move_to_end(key)
        return codec.detach(value)

    def put(self, key: str, value: Any, *, owned: bool = False) -> None:
        """Store `value`. `owned=True` says no one else holds it, so it isn't copied."""
        stored = value if owned else codec.detach(value)
        with self._lock:
            self._items[key] = stored
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# -- disk ---------------------------------------------------------------------------------

# magic, format version, payload length, sha256 of the payload
_FILE_HEADER = struct.Struct("<4sHQ32s")
_FILE_MAGIC = b"VPSC"
FILE_FORMAT_VERSION = 2  # 2: values in the one codec's tree (VPC2); older entries are misses
_SUFFIX = ".vpc"
_TEMP_PREFIX = ".tmp-"


class DiskCache:
    """Encoded values, one file per key, under `directory`, at most about `max_bytes`.

    Never raises for file-system trouble: a failed write warns once and turns writing off
    for this instance; a failed or corrupt read is a miss. Safe for several processes at
    once: writes are atomic renames and every file operation tolerates the file vanishing.
    The size bound is kept by each writing process from its own running total, re-measured
    whenever it evicts, so concurrent writers can overshoot it briefly.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.writable = True
        self.errors = 0
        self._read_warned = False
        self._total: int | None = None  # bytes on disk, measured lazily on first write
        self._lock = threading.Lock()

    # -- paths --------------------------------------------------------------------------
    def path_for(self, key: str) -> Path:
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"cache keys are lowercase hex digests, got {key!r}")
        return self.directory / key[:2] / (key[2:] + _SUFFIX)

    # -- read ---------------------------------------------------------------------------
    def get(self, key: str) -> Any:
        """The stored value, or MISS (absent, unreadable, corrupt or of an older format)."""
        path = self.path_for(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return MISS
        except OSError as e:
            self._read_failed(path, e)
            return MISS
        payload, problem = _unwrap(data)
        if payload is None:
            if problem != "old format":
                self._error(f"corrupt cache entry {path} ({problem}); deleted, will recompute")
            _remove(path)
            return MISS
        try:
            value = codec.decode(payload)
        except ValueError as e:
            self._error(f"undecodable cache entry {path} ({e}); deleted, will recompute")
            _remove(path)
            return MISS
        try:
            os.utime(path)  # mark as recently used for LRU eviction
        except OSError:
            pass  # read-only store or entry evicted meanwhile: the value is still good
        return value

    def __contains__(self, key: str) -> bool:
        return self.path_for(key).is_file()

    # -- write --------------------------------------------------------------------------
    def put(self, key: str, value: Any) -> bool:
        """Encode and store `value`; True if it was written.

        Raises:
            TypeError: the codec can't encode this value (nothing is written).
        """
        return self.put_bytes(key, codec.encode(value))

    def put_bytes(self, key: str, payload: bytes) -> bool:
        """Store an already encoded value; True if it was written."""
        path = self.path_for(key)
        if not self.writable:
            return False
        data = _FILE_HEADER.pack(_FILE_MAGIC, FILE_FORMAT_VERSION, len(payload),
                                 hashlib.sha256(payload).digest()) + payload
        if len(data) > self.max_bytes * EVICT_TO_FRACTION:
            return False  # would evict everything else and then itself
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=_SUFFIX)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            tmp = None
        except OSError as e:
            self._disable_writes(e)
            return False
        finally:
            if tmp is not None:
                _remove(Path(tmp))
        with self._lock:
            if self._total is not None:
                self._total += len(data)
            over = self._total is None or self._total > self.max_bytes
        if over:
            self.evict()
        return True

    def _disable_writes(self, e: OSError) -> None:
        with self._lock:
            if not self.writable:
                return
            self.writable = False
            self.errors += 1
        why = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"
               }.get(e.errno, str(e))
        warnings.warn(f"step cache: can't write to {self.directory} ({why}); carrying on "
                      "without writing to the disk cache", CacheWarning, stacklevel=3)

    def _read_failed(self, path: Path, e: OSError) -> None:
        with self._lock:
            self.errors += 1
            first = not self._read_warned
            self._read_warned = True
        if first:  # an unreadable store would otherwise warn on every step
            warnings.warn(f"step cache: can't read {path} ({e}); treating unreadable "
                          "entries as misses", CacheWarning, stacklevel=3)

    def _error(self, message: str) -> None:
        with self._lock:
            self.errors += 1
        warnings.warn("step cache: " + message, CacheWarning, stacklevel=3)

    # -- size ---------------------------------------------------------------------------
    def entries(self) -> Iterator[tuple[Path, int, float]]:
        """(path, size, mtime) of every entry file; files that vanish are skipped."""
        try:
            subdirs = list(os.scandir(self.directory))
        except OSError:
            return
        now = time.time()
        for sub in subdirs:
            if len(sub.name) != 2 or not _is_dir(sub):
                continue
            try:
                files = list(os.scandir(sub.path))
            except OSError:
                continue
            for f in files:
                try:
                    st = f.stat(follow_symlinks=False)
                except OSError:
                    continue
                if f.name.startswith(_TEMP_PREFIX):
                    if now - st.st_mtime > STALE_TEMP_SECONDS:
                        _remove(Path(f.path))
                    continue
                if f.name.endswith(_SUFFIX) and f.is_file(follow_symlinks=False):
                    yield Path(f.path), st.st_size, st.st_mtime

    def size(self) -> int:
        """Bytes held by entries now (a fresh scan)."""
        return sum(size for _, size, _ in self.entries())

    def evict(self, target: int | None = None) -> int:
        """Delete least recently used entries until at most `target` bytes remain
        (default 90% of `max_bytes`, when over `max_bytes`). Returns the bytes freed."""
        found = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in found)
        if target is None:
            target = total if total <= self.max_bytes else int(self.max_bytes * EVICT_TO_FRACTION)
        freed = 0
        for path, size, _ in found:
            if total - freed <= target:
                break
            if _remove(path):
                freed += size
            else:
                freed += size if not path.exists() else 0
        with self._lock:
            self._total = total - freed
        return freed

    def clear(self) -> None:
        """Delete every entry (only files this cache writes; other files are left alone)."""
        for path, _, _ in list(self.entries()):
            _remove(path)
        try:
            for sub in os.scandir(self.directory):
                if len(sub.name) == 2 and _is_dir(sub):
                    try:
                        os.rmdir(sub.path)
                    except OSError:
                        pass  # not empty (someone else's file, or a writer right now)
        except OSError:
            pass
        with self._lock:
            self._total = None


def _unwrap(data: bytes) -> tuple[bytes | None, str]:
    """The payload of a file's bytes, or (None, what is wrong with them)."""
    if len(data) < _FILE_HEADER.size:
        return None, "truncated header"
    magic, version, length, checksum = _FILE_HEADER.unpack_from(data)
    if magic != _FILE_MAGIC:
        return None, "bad magic"
    if version != FILE_FORMAT_VERSION:
        return None, "old format"
    payload = data[_FILE_HEADER.size:]
    if len(payload) != length:
        return None, f"length {len(payload)}, header says {length}"
    if hashlib.sha256(payload).digest() != checksum:
        return None, "checksum mismatch"
    return payload, ""


def _remove(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


# -- layered ------------------------------------------------------------------------------

@dataclass
class CacheStats:
    """Counts since the cache was made (or since `reset`)."""

    hits: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    writes: int = 0          # values written to disk
    memory_only: int = 0     # values the codec can't encode, kept in memory only
    errors: int = 0          # corrupt entries and failed reads/writes

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class StepCache:
    """What the interpreter uses: memory first, then disk (a disk hit is promoted).

    Args:
        memory: keep an in-process LRU.
        disk_dir: directory of the on-disk store; None for none, True for
            `default_cache_dir()`.
        max_bytes: size bound of the on-disk store.
        enabled: False makes every `get` a miss and every `put` a no-op (caching off for
            a run without changing the interpreter's code path).
        max_items: size of the in-memory LRU.

    Values returned are never shared with the cache: images are copies (see `MemoryCache`),
    and disk values are freshly decoded.
    """

    def __init__(self, memory: bool = True, disk_dir: str | os.PathLike[str] | bool | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, enabled: bool = True,
                 max_items: int = DEFAULT_MAX_ITEMS):
        self.enabled = enabled
        self.memory = MemoryCache(max_items) if memory else None
        if disk_dir is True:
            disk_dir = default_cache_dir()
        self.disk = DiskCache(disk_dir, max_bytes) if disk_dir not in (None, False) else None
        self._stats = CacheStats()
        self._lock = threading.Lock()

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            s = CacheStats(**self._stats.to_dict())
        if self.disk is not None:
            s.errors += self.disk.errors
        return s

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, n in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + n)

    def get(self, key: str) -> Any:
        """The cached value for `key`, or MISS."""
        if not self.enabled:
            return MISS
        if self.memory is not None:
            value = self.memory.get(key)
            if value is not MISS:
                self._count(hits=1, memory_hits=1)
                return value
        if self.disk is not None:
            value = self.disk.get(key)
            if value is not MISS:
                if self.memory is not None:
                    self.memory.put(key, value)
                self._count(hits=1, disk_hits=1)
                return value
        self._count(misses=1)
        return MISS

    def put(self, key: str, value: Any) -> None:
        """Remember `value` under `key`. Never raises for values or file-system trouble:
        what the codec can't encode stays in memory only; a failing disk is skipped."""
        if not self.enabled:
            return
        if self.memory is not None:
            self.memory.put(key, value)
        if self.disk is None:
            return
        try:
            payload = codec.encode(value)
        except TypeError:
            self._count(memory_only=1)
            return
        if self.disk.put_bytes(key, payload):
            self._count(writes=1)

    def clear(self) -> None:
        """Forget everything, in memory and on disk."""
        if self.memory is not None:
            self.memory.clear()
        if self.disk is not None:
            self.disk.clear()

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = CacheStats()
        if self.disk is not None:
            self.disk.errors = 0

    def __repr__(self) -> str:
        where = f"disk={str(self.disk.directory)!r}" if self.disk else "disk=None"
        return f"StepCache(enabled={self.enabled}, memory={self.memory is not None}, {where})"
