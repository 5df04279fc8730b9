"""List(query, max) -> TextList: up to `max` items that answer a knowledge query (SPEC 4).

Asks the planner's LLM (`ctx.llm`, see `visprog/llm.py`) for a plain list, then parses the
reply leniently, since models decorate lists however they like: one item per line, or one
comma/semicolon-separated line; numbering ("1.", "2)", "(3)"), bullets ("-", "*", "•"),
markdown bold, quotes, code fences, a trailing full stop and a leading "Here are ...:"
line are removed; items are de-duplicated (case-insensitively, first spelling kept) and cut
to `max`.

Caching: with `temperature = 0` (the default) the answer is taken as a function of the query
and the model, so the tool is cacheable and the client's `describe()` (backend, model,
server) is part of its settings, hence of the cache key. With a temperature above 0 it is a
sampling module and never cached.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from visprog.errors import ConfigError
from visprog.registry import Tool, tool

VERSION = "1"

DEFAULTS: dict[str, Any] = {
    "temperature": 0.0,
    "max_tokens": 256,
    "max_items": 100,  # the most items any call may ask for
}

SYSTEM_PROMPT = (
    "You answer knowledge questions with a plain list. Write each item on its own line. "
    "Write only the items: no numbering, no bullets, no introduction and no explanation.")

NO_LLM = ("List needs an LLM: set VISPROG_LLM_MODEL (with OPENAI_API_KEY, and OPENAI_BASE_URL "
          "for a server other than OpenAI) or VISPROG_LLM_PATH for a local model, or configure "
          "[llm] in your config file")

_FENCE = re.compile(r"^```[\w-]*\s*$")
# bullets, "1." "2)" "(3)" "4:" and "a)" (not "A." which starts names like "A. Lincoln")
_MARKER = re.compile(r"^\s*(?:[-*•·–—+>]+|\(?\d{1,3}[.):](?=\s|$)|\(?[a-z]\)(?=\s))\s*")
_PREAMBLE = re.compile(r"^(here|sure|certainly|okay|ok)\b.*:\s*$|^.*:\s*$", re.IGNORECASE)


def clean_item(text: str) -> str:
    """'  2) **Blue**. ' -> 'Blue'."""
    item = text.strip()
    while True:  # "1. - foo" has two markers
        stripped = _MARKER.sub("", item, count=1).strip()
        if stripped == item:
            break
        item = stripped
    item = item.replace("**", "").replace("__", "").strip()
    item = item.strip("\"'`“”‘’").strip()
    return item.rstrip(".;,").strip()


def parse_items(text: str, limit: int) -> list[str]:
    """The items of an LLM's list reply, cleaned, de-duplicated, at most `limit`.

    Example:
        >>> parse_items("Here are some:\\n1. Red\\n2. Green\\n3. red", 5)
        ['Red', 'Green']
        >>> parse_items("apples, pears; plums.", 2)
        ['apples', 'pears']
    """
    lines = [ln for ln in text.replace("\r", "").split("\n")
             if ln.strip() and not _FENCE.match(ln.strip())]
    if len(lines) > 1 and _PREAMBLE.match(lines[0].strip()):
        lines = lines[1:]
    if len(lines) == 1:  # one line: a comma or semicolon separated list
        text_line = lines[0].strip()
        if ":" in text_line and "," in text_line.split(":", 1)[1]:
            text_line = text_line.split(":", 1)[1]  # "Colors: red, green" -> "red, green"
        lines = re.split(r"[,;]", text_line)
    items: list[str] = []
    seen: set[str] = set()
    for ln in lines:
        item = clean_item(ln)
        key = " ".join(item.lower().split())
        if item and key not in seen:
            seen.add(key)
            items.append(item)
        if len(items) >= limit:
            break
    return items


def _limit(value: Any, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"List: max must be a number, got {type(value).__name__}")
    if value != value or value < 1:  # NaN or below one
        raise ValueError(f"List: max must be at least 1, got {value}")
    if value != int(value):
        raise ValueError(f"List: max must be a whole number, got {value}")
    return min(int(value), cap)


def build(settings: dict[str, Any], ctx: Any) -> Tool:
    """The List tool, asking `ctx.llm` (checked when called, so it may be set later)."""
    s = {**DEFAULTS, **settings}
    client = getattr(ctx, "llm", None)
    describe = getattr(client, "describe", None)
    if callable(describe):
        s["llm"] = describe()  # which model answers is part of the cache key

    def ask(query: str, max: Any) -> list[str]:  # noqa: A002 (SPEC name)
        if not isinstance(query, str) or not query.strip():
            raise ValueError("List: query must be a non-empty text")
        n = _limit(max, int(s["max_items"]))
        llm = getattr(ctx, "llm", None)
        if llm is None:
            raise ConfigError(NO_LLM)
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"List at most {n} items: {query.strip()}"}]
        reply = llm.chat(messages, temperature=float(s["temperature"]),
                         max_tokens=int(s["max_tokens"]))
        text = reply if isinstance(reply, str) else getattr(reply, "text", None)
        if not isinstance(text, str):
            raise TypeError(f"List: the LLM client returned {type(reply).__name__} without .text")
        return parse_items(text, n)

    @tool("List", params={"query": "Text", "max": "Number"}, returns="TextList",
          version=VERSION, settings=s, cacheable=float(s["temperature"]) == 0.0, draw_on=None)
    def list_items(query: str, max: Any) -> list[str]:  # noqa: A002 (SPEC name)
        """Up to `max` items that answer a knowledge query, from the LLM."""
        return ask(query, max)

    # one request per query: chat APIs take one conversation at a time
    return replace(list_items, hostable=False,  # it asks the caller's LLM client
                   batch_fn=lambda calls: [ask(c["query"], c["max"]) for c in calls])
