"""List(query, max) -> TextList: up to `max` items that answer a knowledge query (SPEC 4).

Asks the planner's LLM (`ctx.llm`, see `visprog/planning/llm.py`) for a plain list, then parses the
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
from typing import Any, Mapping

from visprog.errors import ConfigError, no_llm_message
from visprog.models import ModelTool

SYSTEM_PROMPT = (
    "You answer knowledge questions with a plain list. Write each item on its own line. "
    "Write only the items: no numbering, no bullets, no introduction and no explanation.")

NO_LLM = no_llm_message("List")

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


class List(ModelTool):
    """Built on the model-tool base like the vision modules; its model is `ctx.llm`
    (checked when called, so it may be set later), one request per query since chat APIs
    take one conversation at a time."""

    name = "List"
    tasks = ("knowtag",)  # the planner's prompts that describe it
    params = {"query": "Text", "max": "Number"}
    returns = "TextList"
    doc = "Up to `max` items that answer a knowledge query, from the LLM."
    presets = {
        "default": {"temperature": 0.0, "max_tokens": 256,
                    "max_items": 100},  # the most items any call may ask for
        "tiny": {"max_tokens": 64},
    }
    draw_on = None
    uses_torch = False
    hostable = False  # it asks the caller's LLM client

    def configure(self, s: dict[str, Any]) -> dict[str, Any]:
        describe = getattr(getattr(self.ctx, "llm", None), "describe", None)
        if callable(describe):
            s["llm"] = describe()  # which model answers is part of the cache key
        return s

    @classmethod
    def describe_model(cls, settings: Mapping[str, Any]) -> str:
        llm = settings.get("llm")
        return str(llm.get("model") or "-") if isinstance(llm, Mapping) else "-"

    def cacheable(self) -> bool:
        return float(self.settings["temperature"]) == 0.0

    def preprocess(self, call: dict[str, Any]) -> tuple[str, int]:
        query = call["query"]
        if not isinstance(query, str) or not query.strip():
            raise ValueError("List: query must be a non-empty text")
        return query.strip(), _limit(call["max"], int(self.settings["max_items"]))

    def forward(self, items: list[tuple[str, int]]) -> list[str]:
        llm = getattr(self.ctx, "llm", None)
        if llm is None:
            raise ConfigError(NO_LLM)
        return [self._ask(llm, query, n) for query, n in items]

    def _ask(self, llm: Any, query: str, n: int) -> str:
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"List at most {n} items: {query}"}]
        reply = llm.chat(messages, temperature=float(self.settings["temperature"]),
                         max_tokens=int(self.settings["max_tokens"]))
        text = reply if isinstance(reply, str) else getattr(reply, "text", None)
        if not isinstance(text, str):
            raise TypeError(f"List: the LLM client returned {type(reply).__name__} without .text")
        return text

    def postprocess(self, item: tuple[str, int], text: str) -> list[str]:
        return parse_items(text, item[1])


TOOLS = [List]
