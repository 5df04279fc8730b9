"""The critic: the LLM reads a question, its program and the run's trace summary, and says
whether the program answers the question. A "no" with its reason feeds a repair.

Any chat client works: the verdict is one line, "yes" or "no: <reason>", read leniently from
free text. A backend that can constrain its output to a grammar (`constrain_grammar(text)`:
the local constrained model; an OpenAI-compatible server in grammar mode) is held to
`VERDICT_GRAMMAR`, so even a small local model gives a verdict that reads.
"""
from __future__ import annotations

from typing import Any, Sequence

from visprog.planning.chat import deadline
from visprog.planning.prompts import critic_messages
from visprog.traces.events import Verdict  # a trace records verdicts (repair and vote events)

# One line: "yes", or "no: " and a short reason. Plain Lark (vLLM's guided_grammar reads it,
# and so does llguidance); the newline ends it, which is how a local sampler knows to stop.
MAX_REASON = 160
VERDICT_GRAMMAR = (
    'start: ("yes" | "no: " REASON) "\\n"\n'
    f'REASON: /[^\\n]{{1,{MAX_REASON}}}/\n'
)


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
        deadline_s: seconds one verdict's requests may take together, retries included (the
            planner's `deadline_s`); None: no limit.
    """

    def __init__(self, llm: Any, *, max_tokens: int = 64, seed: int | None = 0,
                 deadline_s: float | None = None):
        self.llm = llm
        self.max_tokens = int(max_tokens)
        self.seed = seed
        self.deadline_s = deadline_s
        constrain = getattr(llm, "constrain_grammar", None)
        self._client = (constrain(VERDICT_GRAMMAR) if constrain is not None else None) or llm

    def judge(self, question: str, program: str, summary: Sequence[str],
              answer: str) -> Verdict:
        """The verdict on one run.

        Raises:
            LLMError: the LLM could not be reached within the deadline.
        """
        with deadline(self.deadline_s):
            reply = self._client.chat(critic_messages(question, program, summary, answer),
                                      temperature=0.0, max_tokens=self.max_tokens, n=1,
                                      seed=self.seed)
        verdict = read_verdict(reply.text)
        verdict.usage = dict(reply.usage)
        return verdict
