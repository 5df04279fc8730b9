"""The critic: the LLM reads a question, its program and the run's trace summary, and says
whether the program answers the question. A "no" with its reason feeds a repair.

Any chat client works: the verdict is one line, "yes" or "no: <reason>", read leniently from
free text. A backend that can constrain its output to a grammar (`constrain_grammar(text)`:
the local constrained model; an OpenAI-compatible server in grammar mode) is held to
`VERDICT_GRAMMAR`, so even a small local model gives a verdict that reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from visprog.planning.prompts import critic_messages

# One line: "yes", or "no: " and a short reason. Plain Lark (vLLM's guided_grammar reads it,
# and so does llguidance); the newline ends it, which is how a local sampler knows to stop.
MAX_REASON = 160
VERDICT_GRAMMAR = (
    'start: ("yes" | "no: " REASON) "\\n"\n'
    f'REASON: /[^\\n]{{1,{MAX_REASON}}}/\n'
)


@dataclass
class Verdict:
    """What the critic said: `ok` (the program answers the question), its reason for a
    "no", the raw reply, and its token usage. `clear` is False when the reply was neither
    a yes nor a no (then `ok` is True: an unreadable critic does not force a repair)."""

    ok: bool
    reason: str = ""
    reply: str = ""
    clear: bool = True
    usage: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "reply": self.reply,
                "clear": self.clear, "usage": dict(self.usage)}


def read_verdict(reply: str) -> Verdict:
    """A verdict from a reply: its first line, "yes..." or "no[:,.] reason"."""
    line = next((x.strip() for x in reply.splitlines() if x.strip()), "")
    head = line.lower().lstrip("*\"'`").strip()
    for word in ("yes", "no"):
        if head == word or (head.startswith(word) and not head[len(word)].isalnum()):
            rest = line.lstrip("*\"'`").strip()[len(word):].lstrip(" :,.-*\"'`").strip()
            return Verdict(word == "yes", "" if word == "yes" else rest, reply)
    return Verdict(True, "", reply, clear=False)


class Critic:
    """Asks an LLM whether a run answers its question.

    Args:
        llm: any chat client (`visprog.planning.chat`).
        max_tokens: per verdict.
        seed: sampling seed (verdicts are asked at temperature 0).
    """

    def __init__(self, llm: Any, *, max_tokens: int = 64, seed: int | None = 0):
        self.llm = llm
        self.max_tokens = int(max_tokens)
        self.seed = seed
        constrain = getattr(llm, "constrain_grammar", None)
        self._client = (constrain(VERDICT_GRAMMAR) if constrain is not None else None) or llm

    def judge(self, question: str, program: str, summary: Sequence[str],
              answer: str) -> Verdict:
        """The verdict on one run.

        Raises:
            LLMError: the LLM could not be reached.
        """
        reply = self._client.chat(critic_messages(question, program, summary, answer),
                                  temperature=0.0, max_tokens=self.max_tokens, n=1,
                                  seed=self.seed)
        verdict = read_verdict(reply.text)
        verdict.usage = dict(reply.usage)
        return verdict
