"""Generated programs cached on disk, so the same question is not planned twice.

The key is everything that decides what the LLM is asked and how it samples: the backend's
`describe()` (backend, model, base URL), `PROMPT_VERSION`, the task, the question, the
example selection, the sampling settings and a digest of the messages themselves (which
covers the module descriptions, so registering a new module misses the old entries).

One JSON file per key, `<dir>/ab/abcdef....json`, written to a temp file in the same
directory and moved into place with `os.replace`, so a reader sees a whole entry or none.
The stored key is compared on read; a corrupt or mismatched file is a miss. A directory
that can't be written warns once and the planner carries on without caching.

Location: `$VISPROG_CACHE_DIR/programs`, else the user cache dir (`~/.cache/visprog/programs`
on Linux).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from visprog.errors import CacheWarning

ENV_CACHE_DIR = "VISPROG_CACHE_DIR"
_FORMAT = 1


def default_program_cache_dir() -> Path:
    """`$VISPROG_CACHE_DIR/programs`, else `<user cache dir>/visprog/programs`."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser() / "programs"
    import platformdirs

    return Path(platformdirs.user_cache_dir("visprog", appauthor=False)) / "programs"


def program_key(fields: Mapping[str, Any]) -> str:
    """A stable digest of the key fields (JSON with sorted keys)."""
    blob = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ProgramCache:
    """Program texts by key fields.

    Args:
        directory: where entries live; default `default_program_cache_dir()`.

    Attributes:
        hits, misses, writes: counters for this instance.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None):
        self.directory = Path(directory) if directory is not None else default_program_cache_dir()
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._writable = True

    def path_for(self, fields: Mapping[str, Any]) -> Path:
        key = program_key(fields)
        return self.directory / key[:2] / f"{key}.json"

    def get(self, fields: Mapping[str, Any]) -> list[str] | None:
        """The cached program texts for these fields, or None."""
        path = self.path_for(fields)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            same = data.get("format") == _FORMAT and data.get("key") == _jsonable(fields)
            texts = data.get("texts")
            if same and isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
                self.hits += 1
                return list(texts)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError):
            pass  # unreadable or corrupt: a miss; the next put replaces it
        self.misses += 1
        return None

    def put(self, fields: Mapping[str, Any], texts: list[str]) -> bool:
        """Store program texts; False (with one warning) when the directory can't be written."""
        if not self._writable:
            return False
        path = self.path_for(fields)
        entry = {"format": _FORMAT, "key": _jsonable(fields), "texts": list(texts),
                 "created": time.time()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(entry, f, ensure_ascii=False, indent=1)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            self._writable = False
            warnings.warn(f"program cache {self.directory} is not writable ({e}); "
                          f"planning goes on without caching", CacheWarning, stacklevel=2)
            return False
        self.writes += 1
        return True

    def clear(self) -> int:
        """Delete every entry; returns how many."""
        n = 0
        for p in self.directory.glob("??/*.json"):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n


def _jsonable(fields: Mapping[str, Any]) -> Any:
    """The fields as they read back from JSON (so a stored key compares equal)."""
    return json.loads(json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str))
