"""Shared pytest fixtures: keep this small and generic."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    """One folder for the tiny random models of the whole session: each is built once."""
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path_factory, tiny_models_dir, monkeypatch):
    """Point the on-disk caches at a fresh temporary folder for every test.

    Why: no test may read or write the user's real cache directory, and tests must not see
    each other's cached step results. The tiny models are the exception: they are inputs,
    not results, so they are shared (VISPROG_TINY_DIR) and built once per session.
    """
    cache_dir = tmp_path_factory.mktemp("visprog-cache")
    monkeypatch.setenv("VISPROG_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("VISPROG_TINY_DIR", str(tiny_models_dir))
    return cache_dir


@pytest.fixture
def no_llm_env(monkeypatch):
    """The test sees only the LLM settings it makes itself (use with `usefixtures`)."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VISPROG_LLM_MODEL", "VISPROG_LLM_BACKEND",
                 "VISPROG_LLM_PATH", "VISPROG_LLM_IMAGES"):
        monkeypatch.delenv(name, raising=False)
