"""Shared pytest fixtures: keep this small and generic."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path_factory, monkeypatch):
    """Point the on-disk caches at a fresh temporary folder for every test.

    Why: no test may read or write the user's real cache directory, and tests must not see
    each other's cached step results.
    """
    cache_dir = tmp_path_factory.mktemp("visprog-cache")
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(cache_dir))
    return cache_dir
