"""Trace events: what happened around a run's steps, as typed records (SPEC 5).

`Trace.events` holds these dataclasses in the order they happened:

| kind | class | written by |
|---|---|---|
| `plan_attempt` | `PlanAttempt` | the planner: one per LLM reply (parsed and checked or not) |
| `plan_cache_hit` | `PlanCacheHit` | the planner, when its program cache answered |
| `model_load`, `model_unload`, `model_over_budget` | `ModelEvent` | the engine, from the model manager |
| `model_note` | `ModelNote` | a model module (a query cut short, a fallback backend) |
| `cache_warning` | `CacheFailure` | the engine: a step's result could not be cached |
| `repair` | `Repair` (its attempts are `RunRecord`s) | the planning loop |
| `vote` | `Vote` (its candidates are `RunRecord`s) | the planning loop |
| `round` | `Round` | the planning loop in agent mode: one per round |
| `agent` | `AgentRun` | the planning loop in agent mode: why it stopped, what it cost |
| anything else | `Event` (kind and data, kept as they came) | a newer visprog, a plug-in |

Every event has `kind` and `to_dict()` (`{"kind": ..., field: value, ...}`), which a saved
trace stores through the value codec like its other values; `event_from_dict` reads one back.
It also reads the shapes written before events were typed (the planner's own "vote" without
`select` and `pool`, plan attempts without `index`): fields that are missing take their
defaults. A dict that does not fit its kind's fields stays an `Event`, so nothing is lost.

Adding a kind: a dataclass here with `kind`, `to_dict` (`_fields_dict` does it) and a
`from_dict`, listed in `_READERS`; then whatever shows it (html.py, the CLI, the demo) reads
its fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Mapping

from visprog.errors import Diagnostic
from visprog.values.text import show

__all__ = ["AgentRun", "CacheFailure", "Event", "FailedStep", "Finding", "ModelEvent",
           "ModelNote", "PlanAttempt", "PlanCacheHit", "Repair", "Round", "RunRecord", "Verdict",
           "Vote", "as_event", "event_from_dict", "plan_events"]


def _plain(value: Any) -> Any:
    """Records inside an event as plain data (the codec stores the rest)."""
    if is_dataclass(value) and not isinstance(value, type):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _fields_dict(record: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(record, f.name)) for f in fields(record)}


def _event_dict(event: Any) -> dict[str, Any]:
    return {"kind": event.kind, **_fields_dict(event)}


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- any kind


@dataclass
class Event:
    """An event of a kind this visprog has no type for, or whose data does not fit its
    type: its kind and data as they came."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.data}


# --------------------------------------------------------------------------- planning


@dataclass
class PlanAttempt:
    """One LLM reply of the planner: the program text cleaned from it, whether it parsed and
    checked (`ok`), its errors and token usage. `revision`: the loop's correction it belongs
    to (None: the first program)."""

    kind: ClassVar[str] = "plan_attempt"
    index: int | None = None
    question: str = ""
    task: str = ""
    reply: str = ""
    text: str = ""
    ok: bool = False
    errors: list[Diagnostic] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    revision: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlanAttempt":
        d = dict(d)
        d["errors"] = [Diagnostic(**_mapping(e)) for e in _list(d.get("errors", []))]
        d["usage"] = dict(_mapping(d.get("usage", {})))
        return cls(**d)


@dataclass
class PlanCacheHit:
    """The planner's program cache gave the program (no LLM call)."""

    kind: ClassVar[str] = "plan_cache_hit"
    question: str = ""
    task: str = ""
    program: str = ""
    revision: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlanCacheHit":
        return cls(**d)


def plan_events(events: Any) -> list[Any]:
    """The plan attempts and cache hits among `events`."""
    return [e for e in events if isinstance(e, (PlanAttempt, PlanCacheHit))]


# --------------------------------------------------------------------------- models and cache


@dataclass
class ModelEvent:
    """What the model manager did while the run's steps ran: `action` "load", "unload"
    (`reason` "memory_budget" for an eviction) or "over_budget" (a model alone is larger
    than the memory budget: `limit`). `model` is the model's kind ("blip_vqa")."""

    action: str
    model: str = ""
    checkpoint: str = ""
    seconds: float | None = None
    bytes: int | None = None
    reason: str | None = None
    limit: int | None = None

    @property
    def kind(self) -> str:
        return f"model_{self.action}"

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind}
        out.update({k: v for k, v in _fields_dict(self).items() if k != "action"})
        return out

    @classmethod
    def from_manager(cls, event: Mapping[str, Any]) -> "ModelEvent | ModelNote | Event":
        """A model manager's event (`{"event": "load", "kind": <model kind>, ...}`)."""
        data = {("model" if k == "kind" else k): v for k, v in event.items() if k != "event"}
        return event_from_dict({"kind": f"model_{event.get('event', 'event')}", **data})


@dataclass
class ModelNote:
    """A note a model module left for the trace (a query cut to the model's text length, a
    fallback backend), with the data it gave."""

    kind: ClassVar[str] = "model_note"
    module: str = ""
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "module": self.module, "message": self.message, **self.data}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelNote":
        rest = {k: v for k, v in d.items() if k not in ("module", "message")}
        return cls(str(d.get("module", "")), str(d.get("message", "")), rest)


@dataclass
class CacheFailure:
    """A step's result could not be written to the step cache (the run went on)."""

    kind: ClassVar[str] = "cache_warning"
    step: int | None = None
    module: str = ""
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CacheFailure":
        return cls(**d)


# --------------------------------------------------------------------------- the planning loop


@dataclass(frozen=True)
class Finding:
    """Why a run looks wrong (`visprog.planning.checks`): the rule, a one-line message and
    the step it is about."""

    check: str
    message: str
    step: int | None = None  # 0-based step index

    def __str__(self) -> str:
        where = f"step {self.step + 1}: " if self.step is not None else ""
        return f"[{self.check}] {where}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)


@dataclass
class Verdict:
    """What the critic said: `ok` (the program answers the question), its reason for a
    "no", the raw reply, and its token usage. `clear` is False when the reply was neither
    a yes nor a no (then `ok` is True: an unreadable critic does not force a repair);
    `error` says why there is no verdict when the critic failed (then `ok` is True too)."""

    ok: bool
    reason: str = ""
    reply: str = ""
    clear: bool = True
    usage: dict[str, int] = field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    def show(self) -> str:
        """`yes`, `no: <reason>`, `unclear` or `failed: <error>`."""
        if self.error:
            return f"failed: {self.error}"
        if not self.clear:
            return "unclear"
        return "yes" if self.ok else f"no: {self.reason}"


@dataclass(frozen=True)
class FailedStep:
    """The step a run failed at."""

    index: int
    line: int
    target: str
    module: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)


@dataclass
class RunRecord:
    """One program the planning loop ran: an attempt of a repair or a candidate of a vote.

    Attributes:
        index: its place among the attempts or candidates.
        program: its text.
        answer: its value as a record keeps it (`visprog.values.text.record_value`), None
            when it failed.
        error: why the run failed, else None.
        findings, critic: the checks' findings and the critic's verdict on it.
        passed: it ran, and neither the checks nor the critic object.
        reason: why it was written: "first", "runtime", "check" or "critic".
        note: what went wrong when asking for its correction.
        failed_step: where it failed, when a step raised.
        plan: how the planner wrote it (its plan attempts or cache hit).
        key: what a vote counted its answer as (`visprog.values.text.answer_key`).
    """

    index: int
    program: str = ""
    answer: Any = None
    error: str | None = None
    findings: list[Finding] = field(default_factory=list)
    critic: Verdict | None = None
    passed: bool = False
    reason: str = ""
    note: str = ""
    failed_step: FailedStep | None = None
    plan: list[Any] = field(default_factory=list)
    key: str | None = None

    @property
    def ran(self) -> bool:
        return self.error is None

    @property
    def plan_repairs(self) -> int:
        """How many of its plan attempts did not parse or check."""
        return sum(1 for e in self.plan if isinstance(e, PlanAttempt) and not e.ok)

    def state(self) -> str:
        """How its run went, in one line: `error: ...`, `flagged: ...`, `critic: no: ...`
        or `ok: <answer>`."""
        if self.error:
            return f"error: {self.error.splitlines()[0] if self.error.strip() else ''}"
        if self.findings:
            return "flagged: " + "; ".join(f.message for f in self.findings)
        if self.critic is not None and not self.critic.ok:
            return f"critic: {self.critic.show()}"
        failed = f" (critic {self.critic.show()})" if self.critic and self.critic.error else ""
        return f"ok: {show(self.answer, limit=120)}{failed}"

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunRecord":
        d = dict(_mapping(d))
        d["findings"] = [Finding(**_mapping(f)) for f in _list(d.get("findings") or [])]
        critic = d.get("critic")
        d["critic"] = None if critic is None else Verdict(**_mapping(critic))
        failed = d.get("failed_step")
        d["failed_step"] = None if failed is None else FailedStep(**_mapping(failed))
        d["plan"] = [as_event(e) for e in _list(d.get("plan") or [])]
        # The planner's own vote (before the loop's) had no "passed": a run that ran passed.
        d.setdefault("passed", d.get("error") is None)
        return cls(**d)


@dataclass
class Repair:
    """The planning loop's attempts for one item, in order, and the one chosen (None: every
    attempt failed)."""

    kind: ClassVar[str] = "repair"
    chosen: int | None = None
    attempts: list[RunRecord] = field(default_factory=list)

    @property
    def chosen_attempt(self) -> RunRecord | None:
        if self.chosen is None or not 0 <= self.chosen < len(self.attempts):
            return None
        return self.attempts[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Repair":
        chosen = d.get("chosen")
        if chosen is not None and not isinstance(chosen, int):
            raise TypeError("chosen is not an index")
        extra = set(d) - {"chosen", "attempts"}
        if extra:
            raise TypeError(f"unknown fields {sorted(extra)}")
        return cls(chosen, [RunRecord.from_dict(a) for a in _list(d.get("attempts") or [])])


@dataclass
class Vote:
    """How one of several candidate programs was chosen: every candidate's run, the answers'
    counts (by `answer_key`), how (`select`: "checks" votes among the runs that passed,
    "majority" among all that ran) and the pool voted in."""

    kind: ClassVar[str] = "vote"
    chosen: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    select: str = "majority"
    pool: list[int] | None = None
    pool_counts: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Vote":
        d = dict(d)
        d["runs"] = [RunRecord.from_dict(r) for r in _list(d.get("runs") or [])]
        d["counts"] = dict(_mapping(d.get("counts") or {}))
        return cls(**d)


# --------------------------------------------------------------------------- agent mode


@dataclass
class Round:
    """One round of agent mode: the steps the planner wrote, how (its replies: plan
    attempts), which steps of the trace ran, the step that failed, and what the planner
    was told after it (`observation`, the text; `images`, the images it was shown, as sent;
    `looks`, the variables its Look steps showed).

    Attributes:
        index: 0-based.
        program: the new steps as written.
        plan: the plan attempts of this round (the last one valid).
        steps: indices (in the trace) of the steps that ran in this round.
        error: the failed step's error, when one raised (it and the steps after it in this
            round left the program).
        observation: the text the planner read next ("" after the last round).
        looks: the variables shown by Look steps.
        images: the images sent to the planner (none for a model that takes no images).
        frames: the times (seconds, the input video's) of the video frames among them (a
            Look at a Video or at Tracks).
        usage: the round's LLM token counts.
        image_tokens: the images' tokens, estimated as Qwen3-VL counts them (one per 32x32
            pixels).
        calls: LLM requests made.
        plan_seconds, run_seconds: time writing the round, and running its steps.
    """

    kind: ClassVar[str] = "round"
    index: int = 0
    program: str = ""
    plan: list[Any] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    error: str | None = None
    observation: str = ""
    looks: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    image_tokens: int = 0
    calls: int = 0
    plan_seconds: float = 0.0
    run_seconds: float = 0.0
    frames: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Round":
        d = dict(d)
        d["plan"] = [as_event(e) for e in _list(d.get("plan") or [])]
        d["steps"] = [int(i) for i in _list(d.get("steps") or [])]
        d["looks"] = [str(v) for v in _list(d.get("looks") or [])]
        d["images"] = list(_list(d.get("images") or []))
        d["usage"] = dict(_mapping(d.get("usage") or {}))
        d["frames"] = [float(t) for t in _list(d.get("frames") or [])]
        return cls(**d)


# Why agent mode stopped: the planner wrote Result, or a budget ended it.
STOPS = ("result", "rounds", "steps", "images", "deadline", "planning")


@dataclass
class AgentRun:
    """How an agent-mode run ended and what it cost.

    Attributes:
        stop: "result" (the planner wrote Result), or the budget that ended it: "rounds",
            "steps", "images", "deadline", or "planning" (no valid round could be written).
        answer: where the answer came from: "result" (a Result step), "last value" (a
            budget ended the run: the last value the program computed), None (none).
        rounds, steps, images: rounds written, steps run, images sent.
        calls, usage, image_tokens, seconds: LLM requests, their tokens, the images'
            estimated tokens, and the run's seconds (writing and running).
        note: why it stopped, in words.
    """

    kind: ClassVar[str] = "agent"
    stop: str = "result"
    answer: str | None = "result"
    rounds: int = 0
    steps: int = 0
    images: int = 0
    calls: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    image_tokens: int = 0
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _event_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AgentRun":
        d = dict(d)
        d["usage"] = dict(_mapping(d.get("usage") or {}))
        return cls(**d)


# --------------------------------------------------------------------------- reading


_READERS: dict[str, Any] = {
    "plan_attempt": PlanAttempt.from_dict,
    "plan_cache_hit": PlanCacheHit.from_dict,
    "model_note": ModelNote.from_dict,
    "cache_warning": CacheFailure.from_dict,
    "repair": Repair.from_dict,
    "vote": Vote.from_dict,
    "round": Round.from_dict,
    "agent": AgentRun.from_dict,
}


def event_from_dict(d: Mapping[str, Any]) -> Any:
    """The typed event of a dict written by `to_dict` (or by a visprog before events were
    typed); an `Event` when its kind is unknown or its data does not fit the kind's fields.

    Raises:
        TypeError: `d` is not a mapping.
    """
    d = _mapping(d)
    kind = d.get("kind")
    data = {k: v for k, v in d.items() if k != "kind"}
    if not isinstance(kind, str):
        return Event(str(kind), data)
    reader = _READERS.get(kind)
    if reader is None and kind.startswith("model_"):
        def reader(x: Mapping[str, Any]) -> ModelEvent:
            return ModelEvent(kind[len("model_"):], **x)
    if reader is not None:
        try:
            return reader(data)
        except (TypeError, ValueError, KeyError, AttributeError):
            pass  # not this kind's shape: keep it as it came
    return Event(kind, data)


def as_event(event: Any) -> Any:
    """A typed event as it is; a dict through `event_from_dict`."""
    return event_from_dict(event) if isinstance(event, Mapping) else event
