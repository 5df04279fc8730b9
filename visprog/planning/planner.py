"""The planner: an LLM writes the program, which is cleaned, parsed, checked and repaired.

    >>> planner = Planner(llm, registry, task="gqa")            # doctest: +SKIP
    >>> plan = planner.plan("How many cats are on the bed?")    # doctest: +SKIP
    >>> print(plan.text)                                        # doctest: +SKIP

Each attempt: ask the LLM, clean its reply (code fences, prose around the program, labels,
numbering), parse it with the language's grammar and check it against the registry. On
errors the LLM is asked again with the numbered errors, up to `attempts` times; an LLM that
never writes a valid program gives a `PlanningError` listing every attempt and its errors.

Voting: `plan_k` samples k programs (temperature > 0); the planning loop
(`visprog.planning.loop`) runs them and selects one.

After a run: `revise` asks for a corrected program given feedback on how the last one ran
(`visprog.planning.loop` writes it: the error or the checks' findings and a trace summary).

Every LLM request of a plan or a revision runs inside the planner's deadline (`deadline_s`).

Agent mode (`visprog.planning.loop`): `agent_messages` is the chat a question starts from, and
`write_rounds` writes the next round of several programs at once: each round is one or more
steps, cleaned, parsed and checked against the program so far (its variables and their
types), and repaired with its errors like a plan.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from visprog.language.checker import check, defined_types
from visprog.errors import (Diagnostic, LLMError, ParseError, PlanningError, VisProgError,
                            no_llm_message)
from visprog.planning.chat import ChatCall, add_usage, chat_many, deadline
from visprog.language.parser import parse
from visprog.language.program import Program
from visprog.planning.program_cache import ProgramCache
from visprog.planning.prompts import (PROMPT_VERSION, TaskSpec, build_agent_messages,
                                      build_messages, load_agent_examples, load_examples,
                                      repair_message, select_examples, task_spec)
from visprog.traces.events import PlanAttempt, PlanCacheHit


# The total time one plan's LLM requests may take (the first reply, the repairs, every retry
# and its wait): a server that accepts connections and never answers ends planning here
# instead of after (retries + 1) x timeout per request.
DEFAULT_DEADLINE_S = 120.0


@dataclass
class Attempt:
    """One try: what the LLM said, the program text cleaned from it, its errors, its cost."""

    reply: str
    text: str
    diagnostics: list[Diagnostic]
    usage: dict[str, int] = field(default_factory=dict)
    program: Program | None = None

    @property
    def ok(self) -> bool:
        return self.program is not None and not self.diagnostics

    def event(self, index: int, question: str, task: str) -> PlanAttempt:
        """This try as a trace event."""
        return PlanAttempt(index, question, task, self.reply, self.text, self.ok,
                           list(self.diagnostics), dict(self.usage))


def attempt_events(attempts: Sequence[Attempt], question: str, task: str) -> list[PlanAttempt]:
    """Tries as `plan_attempt` trace events, numbered in order."""
    return [a.event(i, question, task) for i, a in enumerate(attempts)]


@dataclass
class Plan:
    """A valid program and how it was obtained.

    Attributes:
        program: the parsed, checked program.
        text: its source.
        attempts: every try, the last one valid (empty for a cache hit).
        cached: whether it came from the program cache (no LLM call).
        question, task: what was planned.
    """

    program: Program
    text: str
    attempts: list[Attempt] = field(default_factory=list)
    cached: bool = False
    question: str = ""
    task: str = ""

    @property
    def usage(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for a in self.attempts:
            add_usage(total, a.usage)
        return total

    def events(self) -> list[PlanAttempt | PlanCacheHit]:
        """Trace events saying how the program was obtained: each try, or the cache hit."""
        if self.cached:
            return [PlanCacheHit(self.question, self.task, self.text)]
        return attempt_events(self.attempts, self.question, self.task)


@dataclass
class RoundRequest:
    """What agent mode asks of `Planner.write_rounds` for one program: the chat so far (it
    ends with the question or the last observation), the program so far (None before the
    first round), the inputs' types, and the seconds its requests may take (None: no
    deadline of its own)."""

    question: str
    messages: list[dict[str, Any]]
    prefix: Program | None = None
    inputs: Mapping[str, str] | None = None
    deadline_s: float | None = None


@dataclass
class RoundWrite:
    """A round as the planner wrote it: the plan (its `program` is the whole program so far
    with the new steps; its `text` the new steps), or the error that stopped it (a
    `PlanningError`, or the LLM's failure), every reply judged, and the seconds spent."""

    plan: Plan | None
    attempts: list[Attempt]
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def calls(self) -> int:
        """The LLM requests made (the replies, and a request that failed)."""
        return len(self.attempts) + (self.error is not None and not isinstance(
            self.error, PlanningError))


# The module after which a round written under a grammar may end (the planner looks).
ROUND_ENDS = ("Look",)


# --------------------------------------------------------------------------- cleaning


def _looks_like_step(line: str) -> bool:
    """`NAME=...` with an identifier before the first '=' (a cheap test, not a parse)."""
    head, sep, _ = line.partition("=")
    return bool(sep) and head.strip().isidentifier()


def _strip_prefix(line: str) -> str:
    """Drop list numbering ('1.', '2)', '-', 'Step 3:') and labels ('Program:') before a step."""
    s = line.strip()
    for _ in range(4):  # e.g. "Step 1: Program: X=..." peels off in turns
        if s.startswith("`") and s.endswith("`") and len(s) > 1:
            s = s.strip("`").strip()  # inline code
        if _looks_like_step(s):
            return s
        words = s.split(None, 1)
        if len(words) < 2:
            return s
        first, rest = words
        if first.rstrip(".):").lstrip("(").isdigit() or first in ("-", "*", "+", "•"):
            s = rest.strip()
        elif first.lower() == "step" and rest.split(None, 1)[0].rstrip(".):").isdigit():
            s = rest.split(None, 1)[1].strip() if len(rest.split(None, 1)) > 1 else ""
        elif ":" in s and "=" not in s.split(":", 1)[0] and "(" not in s.split(":", 1)[0] \
                and _looks_like_step(s.split(":", 1)[1]):
            s = s.split(":", 1)[1].strip()
        else:
            return s
    return s


def _fenced_block(lines: list[str]) -> list[str] | None:
    """The lines of the first ``` block that holds a step, else of the first block."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        if line.strip().startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    if current:  # an unclosed fence: take what follows it
        blocks.append(current)
    for block in blocks:
        if any(_looks_like_step(_strip_prefix(x)) for x in block):
            return block
    return blocks[0] if blocks else None


def clean_reply(reply: str) -> str:
    """The program part of an LLM reply.

    A line filter, not a parser (the grammar is the only parser): take the first code block
    if there is one; drop numbering and labels in front of steps; drop prose lines before
    the first step and after the last; between steps drop only lines that can't be part of
    a step (no '=', '(' or ')'), so a malformed step still reaches the parser and its error
    goes back to the LLM.
    """
    lines = reply.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = _fenced_block(lines) or lines
    lines = [_strip_prefix(x) if _strip_prefix(x) != x.strip() else x.rstrip() for x in lines]
    steps = [i for i, x in enumerate(lines) if _looks_like_step(x)]
    if not steps:
        return "\n".join(x for x in lines if x.strip()).strip()
    first, last = steps[0], steps[-1]
    while first > 0 and lines[first - 1].strip().startswith("#"):
        first -= 1  # a comment heading the program belongs to it
    # A call may continue on the lines after its step (the language allows it).
    while last + 1 < len(lines) and _continues_call(lines[first:last + 1]):
        last += 1
    kept = []
    for x in lines[first:last + 1]:
        s = x.strip()
        if not s or s.startswith("#") or "=" in s or "(" in s or ")" in s or "]" in s:
            kept.append(x.rstrip())
    return "\n".join(kept).strip()


def messages_digest(messages: Sequence[Mapping[str, Any]]) -> str:
    """A digest of a chat for cache keys: its JSON, an image part's image as a digest of its
    mode, size and pixels (a chat of text alone hashes as its plain JSON, as before images)."""
    def image(value: Any) -> Any:
        tobytes = getattr(value, "tobytes", None)
        if tobytes is None:
            raise TypeError(f"a chat message holds a {type(value).__name__}, which has no "
                            f"stable form for a cache key")
        return {"image": hashlib.sha256(tobytes()).hexdigest(), "mode": value.mode,
                "size": list(value.size)}

    text = json.dumps(list(messages), sort_keys=True, default=image)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _one_round(example: Any) -> Any:
    """A one-shot example as an agent-mode example written in one round."""
    from visprog.planning.prompts import AgentExample, AgentRound
    return AgentExample(example.question, (AgentRound(example.program),))


def _continues_call(lines: list[str]) -> bool:
    """Whether more '(' / '[' are open than closed (outside quotes) in these lines."""
    depth, quote = 0, ""
    for line in lines:
        escaped = False
        for c in line:
            if quote:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == quote:
                    quote = ""
            elif c in "'\"":
                quote = c
            elif c == "#":
                break
            elif c in "([":
                depth += 1
            elif c in ")]":
                depth -= 1
        quote = ""
    return depth > 0


# --------------------------------------------------------------------------- planner


class Planner:
    """Writes programs for questions of one task.

    Args:
        llm: a chat client (`visprog.llm`).
        registry: the tools programs may call.
        task: "gqa", "nlvr", "imgedit", "knowtag" or a `TaskSpec`.
        attempts: tries per program (the first plus repairs).
        examples: "all" or how many in-context examples to show.
        select: how to choose them when fewer than all: "similar" or "random".
        seed: for random example choice and for sampling.
        cache: True (the default on-disk program cache), False/None, or a `ProgramCache`.
        temperature: for `plan` (0: the most likely program).
        max_tokens: per reply.
        examples_path: a TOML file of examples to use instead of the task's own.
        deadline_s: seconds all LLM requests of one plan may take together (None: no
            limit); past it planning ends with an `LLMError` that says so.
    """

    def __init__(self, llm: Any, registry: Any, *, task: str | TaskSpec = "gqa",
                 attempts: int = 3, examples: int | str = "all", select: str = "similar",
                 seed: int | None = 0, cache: Any = True, temperature: float = 0.0,
                 max_tokens: int = 512, examples_path: str | None = None,
                 deadline_s: float | None = DEFAULT_DEADLINE_S):
        if llm is None:
            raise LLMError(no_llm_message("planning"))
        self.llm = llm
        self.registry = registry
        self.task = task_spec(task)
        self.attempts = max(1, int(attempts))
        self.examples = examples
        self.select = select
        self.seed = seed
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.deadline_s = None if deadline_s is None else float(deadline_s)
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"deadline_s must be positive (or None), got {deadline_s!r}")
        self._examples = load_examples(self.task.name if examples_path is None else "custom",
                                       examples_path)
        self._examples_path = examples_path
        self._agent_examples: list[Any] | None = None  # loaded when agent mode asks
        self.cache = ProgramCache() if cache is True else (cache or None)

    # ------------------------------------------------------------------ public

    def messages(self, question: str, inputs: Mapping[str, str] | None = None) -> list[dict]:
        """The chat the LLM is first sent for `question`."""
        chosen = select_examples(self._examples, question, self.examples, how=self.select,
                                 seed=self.seed)
        return build_messages(self.registry, self.task, question, chosen, inputs)

    def plan(self, question: str, inputs: Mapping[str, str] | None = None) -> Plan:
        """One valid program for `question`.

        Args:
            question: the question, statement or instruction.
            inputs: input variable -> type; by default the task's (e.g. IMAGE: Image).

        Raises:
            PlanningError: no valid program within `attempts` tries.
            LLMError: the LLM could not be reached.
        """
        return self._plan_many(question, 1, self.temperature, inputs)[0]

    def plan_k(self, question: str, k: int, *, temperature: float = 0.7,
               inputs: Mapping[str, str] | None = None) -> list[Plan]:
        """Up to k valid programs sampled at `temperature` (for voting). Each invalid sample
        is repaired on its own; samples that stay invalid are left out.

        Raises:
            PlanningError: none of the samples became valid.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self._plan_many(question, k, temperature, inputs)

    def revise(self, question: str, program: str, feedback: str,
               inputs: Mapping[str, str] | None = None) -> Plan:
        """A corrected program after a run went wrong: the LLM sees the first chat, the
        program it wrote and `feedback` (the error or findings and the trace summary), and
        its reply is judged and repaired like any other (parse and check errors).

        Raises:
            PlanningError: no valid program within `attempts` tries.
            LLMError: the LLM could not be reached.
        """
        inputs = dict(inputs or self.task.inputs)
        convo = self.messages(question, inputs) + [
            {"role": "assistant", "content": program}, {"role": "user", "content": feedback}]
        constrain = getattr(self.llm, "constrain_to", None)
        llm = (constrain(self.registry, inputs) if constrain is not None else None) or self.llm
        with deadline(self.deadline_s):
            reply = llm.chat(convo, temperature=self.temperature, max_tokens=self.max_tokens,
                             n=1, seed=self.seed)
            attempts = self._repair(llm, convo, reply.text, dict(reply.usage),
                                    self.temperature, inputs)
        if not attempts[-1].ok:
            raise PlanningError(question, attempts)
        return Plan(attempts[-1].program, attempts[-1].text, attempts,  # type: ignore[arg-type]
                    question=question, task=self.task.name)

    def remember(self, question: str, text: str,
                 inputs: Mapping[str, str] | None = None) -> None:
        """Store `text` as the program for `question` in the program cache (after a repair:
        the next plan of this question starts from the program that worked)."""
        if self.cache is None:
            return
        inputs = dict(inputs or self.task.inputs)
        messages = self.messages(question, inputs)
        self.cache.put(self._cache_key(question, inputs, messages, 1, self.temperature), [text])

    # ------------------------------------------------------------------ agent mode

    def agent_messages(self, question: str, inputs: Mapping[str, str] | None = None
                       ) -> list[dict[str, Any]]:
        """The chat agent mode starts from for `question` (system, example rounds, the
        question). A planner given `examples_path` shows those examples, one round each."""
        if self._agent_examples is None:
            self._agent_examples = (load_agent_examples(self.task) if self._examples_path is None
                                    else [_one_round(e) for e in self._examples])
        chosen = select_examples(self._agent_examples, question, self.examples, how=self.select,
                                 seed=self.seed)
        return build_agent_messages(self.registry, self.task, question, chosen,
                                    dict(inputs or self.task.inputs))

    def judge_round(self, raw: str, prefix: Program | None,
                    inputs: Mapping[str, str] | None = None,
                    usage: Mapping[str, int] | None = None) -> Attempt:
        """Clean, parse and check one reply as the next steps of `prefix`: the new steps
        must parse on their own and the whole program must check; errors are numbered by
        the lines of the reply. The attempt's `text` is the new steps, its `program` the
        whole program."""
        if prefix is None:
            return self.judge(raw, inputs, usage)
        text = clean_reply(raw)
        usage = dict(usage or {})
        if not text.strip():
            return Attempt(raw, text, [Diagnostic(
                1, 1, "", "the reply contains no steps",
                "reply with the next steps, one NAME=Module(arg=value) per line")], usage)
        try:
            parse(text)
            whole = parse(prefix.source.rstrip("\n") + "\n" + text)
        except ParseError as e:
            return Attempt(raw, text, list(e.diagnostics), usage)
        offset = len(prefix.source.rstrip("\n").split("\n"))
        problems = [dataclasses.replace(d, line=d.line - offset) if d.line > offset else d
                    for d in check(whole, self.registry, dict(inputs or self.task.inputs))]
        return Attempt(raw, text, problems, usage, whole)

    def write_rounds(self, requests: Sequence[RoundRequest]) -> list[RoundWrite]:
        """The next round of each request, the LLM requests of all of them sent together
        (`chat_many`): first every reply, then every repair of the replies that don't parse
        or check, and so on, up to `attempts` replies each. A request whose LLM fails gets
        that error; its others go on."""
        rounds = [RoundWrite(None, []) for _ in requests]
        chats, clients, inputs = [], [], []
        for r in requests:
            bound = dict(r.inputs or self.task.inputs)
            inputs.append(bound)
            clients.append(self._round_client(r.prefix, bound))
            chats.append(list(r.messages))
        todo = list(range(len(requests)))
        tries = 0
        while todo:
            seed = None if self.seed is None else self.seed + tries
            calls = chat_many([ChatCall(clients[i], chats[i], requests[i].deadline_s)
                               for i in todo], temperature=self.temperature,
                              max_tokens=self.max_tokens, n=1, seed=seed)
            tries += 1
            again = []
            for i, call in zip(todo, calls):
                out = rounds[i]
                out.seconds += call.seconds
                if call.error is not None or call.reply is None:
                    out.error = call.error or VisProgError("the LLM gave no reply")
                    continue
                attempt = self.judge_round(call.reply.text, requests[i].prefix, inputs[i],
                                           call.reply.usage)
                out.attempts.append(attempt)
                if attempt.ok:
                    out.plan = Plan(attempt.program, attempt.text, out.attempts,  # type: ignore[arg-type]
                                    question=requests[i].question, task=self.task.name)
                elif len(out.attempts) < self.attempts:
                    chats[i] += [{"role": "assistant", "content": attempt.reply},
                                 {"role": "user", "content": repair_message(attempt.diagnostics)}]
                    again.append(i)
                else:
                    out.error = PlanningError(requests[i].question, out.attempts)
            todo = again
        return rounds

    def _round_client(self, prefix: Program | None, inputs: Mapping[str, str]) -> Any:
        """The client a round is written with: constrained (when the backend can) to the
        variables defined so far, a round that may end after a Look."""
        constrain = getattr(self.llm, "constrain_to", None)
        if constrain is None:
            return self.llm
        env: Mapping[str, Any] = inputs
        if prefix is not None:
            env = {k: v for k, v in defined_types(prefix, self.registry, inputs).items() if v}
        view = constrain(self.registry, env) or self.llm
        if hasattr(view, "round_ends"):
            view.round_ends = ROUND_ENDS
        return view

    # ------------------------------------------------------------------ internals

    def _plan_many(self, question: str, k: int, temperature: float,
                   inputs: Mapping[str, str] | None) -> list[Plan]:
        inputs = dict(inputs or self.task.inputs)
        messages = self.messages(question, inputs)
        key = self._cache_key(question, inputs, messages, k, temperature)
        if self.cache is not None:
            texts = self.cache.get(key)
            if texts is not None:
                plans = [self._cached_plan(question, t, inputs) for t in texts]
                if all(p is not None for p in plans):
                    return plans  # type: ignore[return-value]
        # A backend that can constrain its output to programs gives a client that does.
        constrain = getattr(self.llm, "constrain_to", None)
        llm = (constrain(self.registry, inputs) if constrain is not None else None) or self.llm
        plans: list[Plan] = []
        failed: list[Attempt] = []
        with deadline(self.deadline_s):
            reply = llm.chat(messages, temperature=temperature, max_tokens=self.max_tokens,
                             n=k, seed=self.seed)
            texts = reply.texts or [reply.text]
            for i, raw in enumerate(texts[:k]):
                # The first reply's usage covers all k samples; count it once.
                usage = dict(reply.usage) if i == 0 else {}
                attempts = self._repair(llm, messages, raw, usage, temperature, inputs)
                if attempts[-1].ok:
                    plans.append(Plan(attempts[-1].program, attempts[-1].text,  # type: ignore[arg-type]
                                      attempts, question=question, task=self.task.name))
                else:
                    failed.extend(attempts)
        if not plans:
            raise PlanningError(question, failed)
        if self.cache is not None:
            self.cache.put(key, [p.text for p in plans])
        return plans

    def _repair(self, llm: Any, messages: list[dict], raw: str, usage: dict[str, int],
                temperature: float, inputs: Mapping[str, str]) -> list[Attempt]:
        """Judge a reply; while it is invalid and tries remain, ask again with its errors."""
        attempts = [self.judge(raw, inputs, usage)]
        convo = list(messages)
        while not attempts[-1].ok and len(attempts) < self.attempts:
            convo += [{"role": "assistant", "content": attempts[-1].reply},
                      {"role": "user", "content": repair_message(attempts[-1].diagnostics)}]
            seed = None if self.seed is None else self.seed + len(attempts)
            reply = llm.chat(convo, temperature=temperature, max_tokens=self.max_tokens,
                             n=1, seed=seed)
            attempts.append(self.judge(reply.text, inputs, reply.usage))
        return attempts

    def judge(self, raw: str, inputs: Mapping[str, str] | None = None,
              usage: Mapping[str, int] | None = None) -> Attempt:
        """Clean, parse and check one reply."""
        text = clean_reply(raw)
        usage = dict(usage or {})
        if not text.strip():
            return Attempt(raw, text, [Diagnostic(
                1, 1, "", "the reply contains no program",
                "reply with program lines like NAME=Module(arg=value)")], usage)
        try:
            program = parse(text)
        except ParseError as e:
            return Attempt(raw, text, list(e.diagnostics), usage)
        problems = check(program, self.registry, dict(inputs or self.task.inputs))
        return Attempt(raw, text, problems, usage, program)

    def _cached_plan(self, question: str, text: str, inputs: Mapping[str, str]) -> Plan | None:
        attempt = self.judge(text, inputs)
        if not attempt.ok:
            return None  # e.g. a module was removed since: plan afresh
        return Plan(attempt.program, text, [], cached=True,  # type: ignore[arg-type]
                    question=question, task=self.task.name)

    def _cache_key(self, question: str, inputs: Mapping[str, str], messages: list[dict],
                   k: int, temperature: float) -> dict[str, Any]:
        digest = messages_digest(messages)
        return {"llm": self.llm.describe(), "prompt_version": PROMPT_VERSION,
                "task": self.task.name, "question": question, "inputs": dict(inputs),
                "examples": self.examples, "select": self.select, "seed": self.seed,
                "temperature": temperature, "max_tokens": self.max_tokens, "k": k,
                "attempts": self.attempts, "messages": digest}
