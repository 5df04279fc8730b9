"""The planning loop, in one place: plan -> run -> look back -> select.

`PlanningLoop.answer(items, runner)` is what `VisProg.run`, `run_batch` (items with a
question), `evaluate`, the CLI and the demo's Ask all go through. Each `LoopItem` is a
question with either a given program or none (then the planner writes `vote` of them):

1. **plan**: the planner writes the first program(s) of the items that have none (an item
   whose planning fails gets that error as its result: the others go on);
2. **run**: every first program of every item runs together, through `runner` (the caller's
   engine: the loop knows nothing of it);
3. **look back**, for each finished run:
   - a step raised -> the LLM gets the program, the failing step, the error and a summary
     of the trace so far (per step: the line and its output's short text, such as
     `Objects: 0 regions` or `Text: 'blue'`) and writes a corrected program;
   - it ran, but a check of `visprog.planning.checks` flags the result (a colour question
     answered "yes", an empty find the question presumes, a crop of the whole image...) ->
     the findings are the feedback, in the same way;
   - it passed the checks and the critic is on -> the LLM is asked whether the program
     answers the question; a "no" and its reason are the feedback. A critic that fails (any
     exception) is recorded in that run's verdict and forces nothing.
   Each correction is parsed and checked (and repaired at that stage) by the planner, and
   the corrections of all items run again together; at most `attempts` corrections per
   item. With `vote=k`, only the most promising candidate is corrected, and only when none
   passed;
4. **select**: one run per item. For one program: the last run that passed; when none did,
   the run with the fewest findings (the earliest of those); when every run raised, a
   `RepairError` listing every attempt. Among k candidates (`select`): the majority answer
   (`visprog.values.text.answer_key`: "two", "2" and 2 are one answer) among the runs that
   passed the checks (and the critic), or among all that ran (`select="majority"`, or the
   loop switched off), ties to the earliest.

**Agent mode** (`settings.mode == "agent"`, for the items without a given program) is the
same loop with the program written in rounds (`PlanningLoop.agent`): the planner writes a
few steps against the program so far (`Planner.write_rounds`, every item's round at once),
they run going on from the item's kept run (the runner's jobs carry `resume`), and the
planner reads what they gave (each new step's summary, what its Look steps show:
`visprog.planning.agent.look_at`; a video's frames count against the images budget one by
one), until it writes Result (judged by the checks and the
critic as above: findings become the next observation) or a budget ends the run (its
answer: the last value the program computed). Each round is a `Round` event, the end an
`AgentRun` event.

Every LLM request of the loop (plans, corrections, the critic's verdicts) runs inside the
planner's deadline (`deadline_s`). With `on_item`, each item's result is handed over as soon
as it is final (its planning failed, or its last run needs no correction or can get none),
while the others go on: the runner reports each run as it ends, so a long batch loses nothing
finished when it is stopped, and a progress bar moves per item. The chosen run's trace gets
a `Repair` event listing every attempt (program, why it was written, its plan attempts,
answer or error, findings, verdict) and, among candidates, a `Vote` event listing every
candidate (`visprog.traces.events`).
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from visprog.engine.core import ItemResult
from visprog.errors import RepairError, StepError, VisProgError
from visprog.planning.agent import AgentError, AgentSettings, image_tokens, look_at
from visprog.planning.chat import LLMError, add_usage, deadline, takes_images
from visprog.planning.checks import Finding, enabled_checks, run_checks
from visprog.planning.critic import Critic, Verdict
from visprog.planning.planner import (DEFAULT_DEADLINE_S, PlanningError, RoundRequest,
                                      RoundWrite, attempt_events)
from visprog.planning.prompts import (findings_repair_message, observation_parts,
                                      observation_text, runtime_repair_message)
from visprog.traces.events import (AgentRun, FailedStep, Repair, Round, RunRecord, Vote,
                                   as_event)
from visprog.traces.records import Trace
from visprog.values.text import answer_key, record_value, show

# Keys of the config's [planner] table that belong to this loop, not to the Planner.
AGENT_KEYS = ("mode", "agent_rounds", "agent_steps", "agent_images", "look_max_pixels",
              "look_min_pixels", "look_frames")
SETTING_KEYS = ("repair", "repair_attempts", "checks", "critic", "select", *AGENT_KEYS)
SELECT_MODES = ("checks", "majority")
MODES = ("oneshot", "agent")
MAX_SUMMARY_STEPS = 40
MAX_SUMMARY_LINE = 200


@dataclass
class RepairSettings:
    """How the loop behaves.

    Attributes:
        attempts: corrections per item after its first run (0: none, only checks/selection).
        checks: the names of the checks to run (`visprog.planning.checks.CHECKS`).
        critic: ask the LLM whether each run that passed the checks answers its question.
        select: with several candidates (`vote=k`): "checks" prefers runs that pass the
            checks, then the majority; "majority" is the majority of all runs.
        enabled: False turns looking back off (no checks, no repair): the first run is the
            answer, or the majority of the candidates.
        mode: "oneshot" (the program is written whole, then run) or "agent" (written in
            rounds, the planner seeing what each round gave; `agent` holds its budgets).
            In agent mode the checks (and the critic) judge the run once it writes
            Result, and their findings go back as the next observation, up to `attempts`
            times.
    """

    attempts: int = 2
    checks: list[str] = field(default_factory=enabled_checks)
    critic: bool = False
    select: str = "checks"
    enabled: bool = True
    mode: str = "oneshot"
    agent: AgentSettings = field(default_factory=AgentSettings)

    @classmethod
    def make(cls, value: Any = None, config: Mapping[str, Any] | None = None, *,
             mode: str | None = None, agent: Any = None) -> "RepairSettings":
        """Settings from the config's [planner] keys (`repair`, `repair_attempts`,
        `checks`, `critic`, `select`, `mode` and agent mode's, see `AgentSettings`), then
        `value` over them: None (the config's), True (on), False (off), an int (that many
        corrections; 0: checks only), a mapping of the attribute names, or
        `RepairSettings`; then `mode` and `agent` (`AgentSettings.make`) when given.

        Raises:
            ValueError: an unknown check, select mode or mode, a negative attempt count, a
                bad agent budget.
        """
        if isinstance(value, RepairSettings):
            out = value
            if mode is not None or agent is not None:
                out = dataclasses.replace(value)
                out.mode = out.mode if mode is None else str(mode)
                out.agent = AgentSettings.make(agent) if agent is not None else out.agent
            if out.mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}; got {out.mode!r}")
            return out
        cfg = dict(config or {})
        out = cls()
        out.mode = str(cfg.get("mode", out.mode)) if mode is None else str(mode)
        if out.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {out.mode!r}")
        out.agent = AgentSettings.make(agent, cfg)
        base = cfg.get("repair", True)
        if isinstance(base, bool):
            out.enabled = base
        elif isinstance(base, int):
            out.attempts = base
        if "repair_attempts" in cfg:
            out.attempts = int(cfg["repair_attempts"])
        if "checks" in cfg:
            out.checks = enabled_checks(cfg["checks"])
        out.critic = bool(cfg.get("critic", out.critic))
        out.select = str(cfg.get("select", out.select))
        if value is True:
            out.enabled = True
        elif value is False:
            out.enabled = False
        elif isinstance(value, int):
            out.enabled, out.attempts = True, value
        elif isinstance(value, Mapping):
            extra = set(value) - {"attempts", "checks", "critic", "select", "enabled"}
            if extra:
                raise ValueError(f"unknown repair setting{'s' if len(extra) != 1 else ''} "
                                 f"{', '.join(sorted(extra))}; use attempts, checks, critic, "
                                 f"select, enabled")
            out.enabled = bool(value.get("enabled", True))
            out.attempts = int(value.get("attempts", out.attempts))
            if "checks" in value:
                out.checks = enabled_checks(value["checks"])
            out.critic = bool(value.get("critic", out.critic))
            out.select = str(value.get("select", out.select))
        elif value is not None:
            raise ValueError(f"repair takes True, False, a number of attempts, a mapping or "
                             f"RepairSettings; got {value!r}")
        if out.attempts < 0:
            raise ValueError(f"repair attempts must be >= 0, got {out.attempts}")
        if out.select not in SELECT_MODES:
            raise ValueError(f"select must be one of {', '.join(SELECT_MODES)}; got {out.select!r}")
        return out


# --------------------------------------------------------------------------- summaries


def trace_summary(trace: Trace | None, start: int = 0) -> list[str]:
    """Per step that ran (from step `start`): `N. <line> -> <output's typed short text>`
    (or its error)."""
    if trace is None:
        return []
    lines = []
    for rec in trace.steps[start:start + MAX_SUMMARY_STEPS]:
        got = f"error: {rec.error}" if rec.error is not None else show(rec.output, typed=True)
        lines.append(show(f"{rec.index + 1}. {rec.source.strip()} -> {got}",
                          limit=MAX_SUMMARY_LINE))
    if len(trace.steps) - start > MAX_SUMMARY_STEPS:
        lines.append(f"... {len(trace.steps) - start - MAX_SUMMARY_STEPS} more steps")
    return lines


# --------------------------------------------------------------------------- items and attempts


@dataclass
class LoopItem:
    """One thing the loop answers.

    Attributes:
        question, task: what is asked (an empty question: nothing to judge against, the
            program just runs).
        inputs: input variable -> type, what programs are planned and checked against.
        planner: writes the first programs and the corrections; None: none can be written.
        program: a given, checked program (its `events`: how it was obtained); None: the
            planner writes `vote` of them.
        vote: programs to sample when planning (k > 1: the loop selects among them).
        id, payload: the caller's (the runner reads `payload`: bound inputs, meta...).
        remember: after a successful correction, store the program in the planner's cache.
    """

    question: str
    task: str = "gqa"
    inputs: dict[str, str] = field(default_factory=dict)
    planner: Any = None
    program: Any = None
    events: Sequence[Any] = ()
    vote: int = 1
    id: Any = None
    payload: Any = None
    remember: bool = False


@dataclass
class RunAttempt:
    """One program of a candidate and its run.

    Attributes:
        reason: why it was written: "first" (the plan), "runtime" (the previous run raised),
            "check" (a check flagged it), "critic" (the critic said no).
        program: its text (its `Program` in `parsed`).
        plan_events: how the planner wrote it (its plan attempts or cache hit).
        value, trace, error: the run's outcome, once it ran.
        findings, verdict: the checks' findings and the critic's verdict on it.
        note: what went wrong when asking for its correction (the LLM failed...).
    """

    reason: str
    program: str
    plan_events: list[Any] = field(default_factory=list)
    parsed: Any = None
    value: Any = None
    trace: Trace | None = None
    error: VisProgError | None = None
    findings: list[Finding] = field(default_factory=list)
    verdict: Verdict | None = None
    note: str = ""
    finished: bool = False
    resume: Any = None   # agent mode: the run this program goes on from (engine's RunState)
    keep: bool = False   # agent mode: keep this run's state, to go on from it

    @property
    def ran(self) -> bool:
        return self.finished and self.error is None

    @property
    def passed(self) -> bool:
        return self.ran and not self.findings and (self.verdict is None or self.verdict.ok)

    @property
    def problems(self) -> int:
        return len(self.findings) + (self.verdict is not None and not self.verdict.ok)

    def record(self, index: int) -> RunRecord:
        """This attempt as its trace records it."""
        failed = None
        if isinstance(self.error, StepError):
            failed = FailedStep(self.error.index, self.error.line, self.error.target,
                                self.error.module)
        return RunRecord(index, self.program, record_value(self.value) if self.ran else None,
                         None if self.error is None else str(self.error), list(self.findings),
                         self.verdict, self.passed, self.reason, self.note, failed,
                         list(self.plan_events))


@dataclass
class Case:
    """One candidate program of an item and its attempts so far (the first one given).
    `stopped`: asking for a correction failed, so it gets no more attempts."""

    item: LoopItem
    attempts: list[RunAttempt]
    stopped: bool = False

    @property
    def last(self) -> RunAttempt:
        return self.attempts[-1]


# The caller's engine: runs (case, attempt) pairs together and returns one result (with
# value, trace, error) each, in order; it calls `on_result(position, result)` as each run
# ends, where it can (a runner that can't just returns them all).
Runner = Callable[..., Sequence[Any]]


def engine_runner(make_job: Callable[..., Any], run_jobs: Callable[..., Sequence[Any]]) -> Runner:
    """A `Runner` over an engine: `make_job(program, bound, id=, events=, checked=, meta=)`
    prepares a run (`VisProg.job`) and `run_jobs(jobs, on_item=)` runs them together. Each
    item's `payload` is its (bound inputs, trace meta)."""

    def runner(todo: list[tuple[Case, RunAttempt]], on_result: Any = None) -> Sequence[Any]:
        jobs = []
        for position, (case, attempt) in enumerate(todo):
            bound, meta = case.item.payload
            n = len(case.attempts) - 1  # the attempt that runs is the case's last
            # the job's id is its position while it runs, so each result that ends is
            # reported to the loop at once (candidates of a vote share the item's id)
            job = make_job(attempt.parsed, bound, id=position, events=attempt.plan_events,
                           checked=True, meta={**meta, **({"attempt": n} if n else {})})
            # agent mode: a round goes on from the item's run so far, and keeps it
            job.resume, job.keep = attempt.resume, attempt.keep
            jobs.append(job)

        def ended(res: ItemResult) -> None:
            position, res.id = res.id, todo[res.id][0].item.id
            if on_result is not None:
                on_result(position, res)

        return run_jobs(jobs, on_item=ended)

    return runner


def _deadline_s(item: LoopItem) -> float | None:
    return getattr(item.planner, "deadline_s", DEFAULT_DEADLINE_S)


def _failure(e: BaseException) -> str:
    """An exception as a note: its message, with its type unless it is one of ours."""
    return str(e) if isinstance(e, VisProgError) else f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------- the loop


class PlanningLoop:
    """Plans, runs, looks back, selects (see the module docstring).

    Args:
        settings: `RepairSettings`.
        critic: a `Critic` (used when `settings.critic`).
    """

    def __init__(self, settings: RepairSettings, critic: Critic | None = None):
        self.settings = settings
        self.critic = critic if settings.critic and settings.enabled else None

    def answer(self, items: Sequence[LoopItem], runner: Runner,
               on_item: Callable[[ItemResult], None] | None = None) -> list[ItemResult]:
        """One result per item, in order: plan the items without a program, run every
        first program together, correct and rerun those that need it, select one run per
        item. An item's failure (no plan, every run raised) is in its result. `on_item` gets
        each item's result as soon as it is final, in the order they become final. In agent
        mode the items without a program are written in rounds (`agent`)."""
        if self.settings.mode != "agent" or all(i.program is not None for i in items):
            return self.oneshot(items, runner, on_item)
        rounds = [i for i, item in enumerate(items) if item.program is None]
        given = [i for i, item in enumerate(items) if item.program is not None]
        out: list[Any] = [None] * len(items)
        if given:
            for i, res in zip(given, self.oneshot([items[i] for i in given], runner, on_item)):
                out[i] = res
        for i, res in zip(rounds, self.agent([items[i] for i in rounds], runner)):
            out[i] = res
            if on_item is not None:
                on_item(res)
        return out

    def oneshot(self, items: Sequence[LoopItem], runner: Runner,
                on_item: Callable[[ItemResult], None] | None = None) -> list[ItemResult]:
        """Plan (whole programs), run, look back, select: see the module docstring."""
        results: list[ItemResult | None] = []
        candidates: list[list[Case]] = []
        for item in items:
            cases, failed = self.plan(item)
            results.append(failed)
            candidates.append(cases)
            if failed is not None and on_item is not None:
                on_item(failed)
        group_of = {id(c): k for k, group in enumerate(candidates) for c in group}
        targets: dict[int, list[Case]] = {}  # item -> the cases that may be corrected

        def to_correct(k: int) -> list[Case]:
            """The cases of item k that go on to be corrected, once its first runs ended."""
            if k not in targets:
                item, group = items[k], candidates[k]
                if not (self.settings.enabled and self.settings.attempts):
                    targets[k] = []
                elif item.vote <= 1 or len(group) == 1:
                    targets[k] = list(group)
                elif any(c.last.passed for c in group):
                    targets[k] = []
                else:  # candidates are selected, not corrected one by one: only the most
                    # promising one is, when none passed
                    targets[k] = [min(group, key=lambda c: (not c.last.ran, c.last.problems))]
            return targets[k]

        def finished(case: Case) -> None:
            """A run of `case` ended: hand its item over if nothing more will run for it."""
            k = group_of[id(case)]
            if results[k] is not None or any(not c.last.finished for c in candidates[k]):
                return
            if any(self.may_correct(c) for c in to_correct(k)):
                return
            results[k] = self.select_run(items[k], candidates[k])
            on_item(results[k])  # type: ignore[misc]

        done = finished if on_item is not None else None
        self.repair([c for group in candidates for c in group], runner, rounds=0, finished=done)
        todo = [c for k, group in enumerate(candidates) if results[k] is None
                for c in to_correct(k)]
        if todo:
            self.repair(todo, runner, finished=done)
        for k, (item, group) in enumerate(zip(items, candidates)):
            if results[k] is None:
                results[k] = self.select_run(item, group)
                if on_item is not None:
                    on_item(results[k])  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def may_correct(self, case: Case) -> bool:
        """Whether the case's last run, which ended, may still get a correction."""
        return (self.settings.enabled and not case.stopped and case.item.planner is not None
                and len(case.attempts) - 1 < self.settings.attempts and not case.last.passed)

    # -- plan

    def plan(self, item: LoopItem) -> tuple[list[Case], ItemResult | None]:
        """The item's candidates (its given program, or the planner's), or the result that
        says why there are none."""
        if item.program is not None:
            text = getattr(item.program, "source", str(item.program))
            first = RunAttempt("first", text, [as_event(e) for e in item.events], item.program)
            return [Case(item, [first])], None
        try:
            if item.planner is None:
                raise LLMError("no planner to write a program for this question")
            plans = (item.planner.plan_k(item.question, item.vote, inputs=item.inputs)
                     if item.vote > 1 else [item.planner.plan(item.question, item.inputs)])
        except Exception as e:  # an LLM client fails in many ways: the item records it
            events = (attempt_events(e.attempts, item.question, item.task)
                      if isinstance(e, PlanningError) else [])
            trace = Trace(program="", error=_failure(e), events=list(events))
            return [], ItemResult(item.id, None, None, trace, e)
        return [Case(item, [RunAttempt("first", p.text, p.events(), p.program)])
                for p in plans], None

    # -- look back at one run

    def judge(self, case: Case, attempt: RunAttempt) -> None:
        """The checks' findings, then (when they pass) the critic's verdict. A critic that
        fails gives a verdict that records the failure and objects to nothing."""
        if not self.settings.enabled or not attempt.ran or not case.item.question:
            return  # off, or no question: nothing to judge against
        item = case.item
        if self.settings.checks:
            attempt.findings = run_checks(item.question, item.task, attempt.trace,  # type: ignore[arg-type]
                                          attempt.value, self.settings.checks)
        if self.critic is not None and not attempt.findings:
            try:
                with deadline(_deadline_s(item)):
                    attempt.verdict = self.critic.judge(
                        item.question, attempt.program, trace_summary(attempt.trace),
                        repr(record_value(attempt.value)))
            except Exception as e:  # no verdict is not a wrong answer, nor the batch's end
                attempt.verdict = Verdict(True, clear=False, error=_failure(e))

    def feedback(self, attempt: RunAttempt) -> tuple[str, str] | None:
        """(reason, message for the LLM) when the run needs a correction, else None."""
        summary = trace_summary(attempt.trace)
        if attempt.error is not None:
            err = attempt.error
            if isinstance(err, StepError) and attempt.trace is not None \
                    and 0 <= err.index < len(attempt.trace.steps):
                step = attempt.trace.steps[err.index]
                cause = step.error or str(err.cause or err)
                return "runtime", runtime_repair_message(step.source.strip(), cause,
                                                         summary[:err.index])
            return "runtime", runtime_repair_message("(the program)", str(err), summary)
        if attempt.findings:
            return "check", findings_repair_message(attempt.findings, summary)
        if attempt.verdict is not None and not attempt.verdict.ok:
            reason = attempt.verdict.reason or "the program does not answer the question"
            return "critic", findings_repair_message([f"[critic] {reason}"], summary)
        return None

    # -- run and correct

    def repair(self, cases: Sequence[Case], runner: Runner, *, rounds: int | None = None,
               finished: Callable[[Case], None] | None = None) -> None:
        """Run every case's unfinished last attempt, then correct and rerun the ones that
        need it, up to `rounds` times (default `settings.attempts`; none when the loop is
        off). Cases change in place; `finished(case)` is called after each run is judged and
        after a correction could not be written."""
        if rounds is None:
            rounds = self.settings.attempts if self.settings.enabled else 0
        todo = [(c, c.last) for c in cases if not c.last.finished]
        judged = [c for c in cases if c.last.finished]
        for done_round in range(rounds + 1):
            if todo:
                self.run(todo, runner, finished)
                judged += [c for c, _ in todo]
            if done_round == rounds:
                break
            todo = []
            for case in judged:
                new = self.correction(case)
                if new is not None:
                    case.attempts.append(new)
                    todo.append((case, new))
                elif case.stopped and finished is not None:
                    finished(case)
            judged = []
            if not todo:
                break

    def run(self, todo: list[tuple[Case, RunAttempt]], runner: Runner,
            finished: Callable[[Case], None] | None = None) -> None:
        """Run the attempts together; each is judged as soon as its run ends."""
        taken: set[int] = set()

        def take(position: int, res: Any) -> None:
            if position in taken:
                return
            taken.add(position)
            case, attempt = todo[position]
            attempt.value, attempt.trace, attempt.error = res.value, res.trace, res.error
            attempt.finished = True
            self.judge(case, attempt)
            if finished is not None:
                finished(case)

        for position, res in enumerate(runner(todo, on_result=take)):
            take(position, res)  # what the runner did not report as it went

    def correction(self, case: Case) -> RunAttempt | None:
        """The corrected program of a case whose last run needs one (None when it doesn't,
        or none could be written: the reason is noted on the last attempt)."""
        last, item = case.last, case.item
        why = self.feedback(last)
        if why is None or item.planner is None:
            return None
        reason, message = why
        try:
            with deadline(_deadline_s(item)):
                plan = item.planner.revise(item.question, last.program, message, item.inputs)
        except Exception as e:  # PlanningError, LLMError, a failing client: keep what ran
            last.note = f"no correction: {_failure(e)}"
            case.stopped = True
            return None
        revision = len(case.attempts)
        events = []
        for e in plan.events():
            e.revision = revision
            events.append(e)
        return RunAttempt(reason, plan.text, events, plan.program)

    # -- select

    def outcome(self, case: Case) -> tuple[Any, Trace | None, VisProgError | None, int]:
        """(value, trace, error, chosen attempt index) of a finished case; the chosen trace
        gets a `Repair` event when there was anything to report."""
        attempts = case.attempts
        chosen = next((i for i in range(len(attempts) - 1, -1, -1) if attempts[i].passed), None)
        if chosen is None:
            ran = [i for i, a in enumerate(attempts) if a.ran]
            if ran:
                chosen = min(ran, key=lambda i: (attempts[i].problems, i))
        trace = attempts[chosen].trace if chosen is not None else attempts[-1].trace
        if trace is not None and (len(attempts) > 1 or any(
                a.findings or a.verdict is not None or a.note for a in attempts)):
            trace.add_event(Repair(chosen, [a.record(i) for i, a in enumerate(attempts)]))
        if chosen is None:
            if len(attempts) == 1:  # nothing was retried: the run's own error says it all
                return None, trace, attempts[0].error, 0
            return None, trace, RepairError(case.item.question, attempts, trace), \
                len(attempts) - 1
        a = attempts[chosen]
        item = case.item
        if chosen > 0 and a.passed and item.remember and item.planner is not None:
            item.planner.remember(item.question, a.program, item.inputs)
        return a.value, a.trace, None, chosen

    def select_run(self, item: LoopItem, cases: Sequence[Case]) -> ItemResult:
        """The item's result: its one case's outcome, or the selected candidate's."""
        if len(cases) == 1 and item.vote <= 1:
            value, trace, error, chosen = self.outcome(cases[0])
            return ItemResult(item.id, value, cases[0].attempts[chosen].parsed, trace, error)
        finals = []
        for case in cases:
            _, _, _, chosen = self.outcome(case)
            finals.append(case.attempts[chosen])
        if not any(a.ran for a in finals):
            failed = next(a for a in finals if a.error is not None)
            return ItemResult(item.id, None, failed.parsed, failed.trace, failed.error)
        how = self.settings.select if self.settings.enabled else "majority"
        winner = finals[select(finals, how)]
        return ItemResult(item.id, winner.value, winner.parsed, winner.trace, None)

    # -- agent mode

    def agent(self, items: Sequence[LoopItem], runner: Runner) -> list[ItemResult]:
        """Write each item's program in rounds: every round of every item that is not done
        is written together (`Planner.write_rounds`: the LLM requests of a round go out
        together), then run together (`runner`, going on from each item's run), then each
        item's planner is told what its new steps gave; items drop out as they finish."""
        tracks = [Track(item, self.settings.agent) for item in items]
        for t in tracks:
            if t.item.planner is None:
                t.fail(LLMError("no planner to write a program for this question"))
            else:
                try:
                    t.messages = t.item.planner.agent_messages(t.item.question, t.item.inputs)
                except Exception as e:  # a bad examples file: this item's failure
                    t.fail(e)
        active = [t for t in tracks if t.result is None]
        while active:
            for t in active:
                t.check_budget_before()
            active = [t for t in active if t.result is None]
            writing: dict[int, list[Track]] = {}
            for t in active:
                writing.setdefault(id(t.item.planner), []).append(t)
            to_run: list[Track] = []
            for group in writing.values():
                requests = [RoundRequest(t.item.question, t.messages, t.program,
                                         t.item.inputs, t.time_left()) for t in group]
                try:
                    writes = group[0].item.planner.write_rounds(requests)
                except Exception as e:  # a planner that fails as a whole: these items' end
                    writes = [RoundWrite(None, [], e) for _ in group]
                for t, w in zip(group, writes):
                    if t.written(w):
                        to_run.append(t)
            if to_run:
                started = time.perf_counter()
                pairs = [(Case(t.item, [t.attempt]), t.attempt) for t in to_run]  # type: ignore[list-item]
                ran = runner(pairs)
                share = (time.perf_counter() - started) / len(to_run)
                for t, res in zip(to_run, ran):
                    t.ran(res, share)
                    if t.finishing:
                        self.judge_agent(t)
                    t.observe()
            active = [t for t in active if t.result is None]
        return [t.result for t in tracks]  # type: ignore[misc]

    def judge_agent(self, t: "Track") -> None:
        """The checks (and the critic) on a run that wrote Result: findings go back as the
        next observation while corrections are allowed and rounds remain."""
        attempt = t.attempt
        attempt.value, attempt.trace, attempt.finished = t.value(), t.state.trace, True
        self.judge(Case(t.item, [attempt]), attempt)
        why = [str(f) for f in attempt.findings]
        if attempt.verdict is not None and not attempt.verdict.ok:
            why.append(f"[critic] {attempt.verdict.reason or 'it does not answer the question'}")
        if why and t.corrections < self.settings.attempts and t.rounds < t.budget.rounds:
            t.corrections += 1
            t.findings = why
            t.finishing = False


# --------------------------------------------------------------------------- selection


def majority(values: Sequence[Any]) -> tuple[int, dict[str, int]]:
    """Index of the first value of the most common answer (by `answer_key`), and the counts
    by answer."""
    if not values:
        raise ValueError("nothing to vote on")
    keys = [answer_key(v) for v in values]
    counts = Counter(keys)
    best = max(counts.values())
    winner = next(i for i, k in enumerate(keys) if counts[k] == best)  # ties: earliest
    return winner, dict(counts)


def select(candidates: Sequence[RunAttempt], how: str = "checks") -> int:
    """The index of the chosen candidate: the majority answer among the runs that passed
    (how="checks"; all runs when none passed) or among all runs (how="majority"), ties to
    the earliest. The chosen run's trace gets a `Vote` event listing every candidate's
    program, answer (and what it counted as), findings and verdict.

    Raises:
        ValueError: no candidate ran.
    """
    if how not in SELECT_MODES:
        raise ValueError(f"select must be one of {', '.join(SELECT_MODES)}; got {how!r}")
    ran = [i for i, a in enumerate(candidates) if a.ran]
    if not ran:
        raise ValueError("nothing to vote on: every run failed")
    pool = ran
    if how == "checks":
        pool = [i for i in ran if candidates[i].passed] or ran
    winner, counts = majority([candidates[i].value for i in pool])
    chosen = pool[winner]
    _, all_counts = majority([candidates[i].value for i in ran])
    runs = []
    for i, a in enumerate(candidates):
        record = a.record(i)
        record.key = answer_key(a.value) if a.ran else None
        runs.append(record)
    candidates[chosen].trace.add_event(  # type: ignore[union-attr]
        Vote(chosen, all_counts, runs, how, pool, counts))
    return chosen


# --------------------------------------------------------------------------- agent mode


class Track:
    """One item in agent mode: its chat, its program and run so far, its rounds and costs."""

    def __init__(self, item: LoopItem, budget: AgentSettings):
        self.item = item
        self.budget = budget
        self.messages: list[dict[str, Any]] = []
        self.program: Any = None      # the program so far (what ran, without failed steps)
        self.state: Any = None        # the engine's RunState, kept across rounds
        self.attempt: RunAttempt | None = None
        self.write: Any = None        # this round's `RoundWrite`
        self.rounds = 0
        self.images = 0               # images sent to the planner, and their tokens
        self.calls = 0
        self.usage: dict[str, int] = {}
        self.image_tokens = 0
        self.unsent = (0, 0)          # the last observation's images and tokens, until sent
        self.corrections = 0
        self.findings: list[str] = []
        self.finishing = False        # this round wrote Result (and ran)
        self.events: list[Any] = []   # the rounds, before the run's trace exists
        self.first = 0                # the trace's index of this round's first step
        self.round: Round | None = None
        self.result: ItemResult | None = None
        self.deadline_s = _deadline_s(item)
        self.started = time.perf_counter()

    # -- budgets

    def time_left(self) -> float | None:
        if self.deadline_s is None:
            return None
        return self.deadline_s - (time.perf_counter() - self.started)

    def check_budget_before(self) -> None:
        """End the run when no round may be written: rounds used up, or no time left."""
        if self.rounds >= self.budget.rounds:
            self.stop("rounds", f"the budget of {self.budget.rounds} round"
                                f"{'s' if self.budget.rounds != 1 else ''} is used up")
        elif (left := self.time_left()) is not None and left <= 0:
            self.stop("deadline", f"the planning deadline of {self.deadline_s:g} s passed")

    # -- one round

    def written(self, w: Any) -> bool:
        """Take the round the planner wrote; True when it is to run."""
        self.write = w
        self.rounds += 1
        # the last observation went with this round's request: its images count as sent
        self.images, self.image_tokens = (self.images + self.unsent[0],
                                          self.image_tokens + self.unsent[1])
        self.unsent = (0, 0)
        self.calls += w.calls
        usage: dict[str, int] = {}
        for a in w.attempts:
            add_usage(usage, a.usage)
        add_usage(self.usage, usage)
        events = attempt_events(w.attempts, self.item.question, self.item.task)
        for e in events:
            e.revision = self.rounds - 1
        self.round = Round(self.rounds - 1, w.plan.text if w.plan is not None else "",
                           list(events), usage=usage, calls=w.calls, plan_seconds=w.seconds)
        if w.plan is None:
            self.add_round()
            left = self.time_left()
            reason = "deadline" if left is not None and left <= 0 else "planning"
            self.stop(reason, f"no round could be written: {_failure(w.error)}", w.error)
            return False
        new = len(w.plan.program.steps) - (len(self.program.steps) if self.program else 0)
        ran = self.state.pc if self.state is not None else 0
        if ran + new > self.budget.steps:
            self.add_round()
            self.stop("steps", f"the round's {new} steps would pass the budget of "
                               f"{self.budget.steps} steps")
            return False
        self.first = ran  # the trace's index of the round's first step
        self.attempt = RunAttempt("round", w.plan.text, [], w.plan.program,
                                  resume=self.state, keep=True)
        self.findings = []
        return True

    def ran(self, res: ItemResult, seconds: float) -> None:
        """The round's steps ran (or one raised): keep the run, note what ran."""
        first = self.first
        self.state = res.state
        trace = res.trace
        assert self.round is not None and trace is not None
        self.round.run_seconds = seconds
        self.round.steps = list(range(first, len(trace.steps)))
        if res.error is not None:
            failed = trace.steps[-1] if trace.steps else None
            self.round.error = failed.error if failed is not None else str(res.error)
        if self.state is None:  # the runner kept nothing: it can't go on
            self.add_round()
            self.stop("planning", f"the run can't go on: {_failure(res.error)}" if res.error
                      else "the run can't go on")
            return
        whole = self.attempt.parsed  # type: ignore[union-attr]
        self.finishing = res.error is None and any(
            s.module is not None and _is_result(self.item, s.module)
            for s in whole.steps[first:])
        self.program = whole if res.error is None else _before(whole, self.state.pc)

    def observe(self) -> None:
        """What the planner reads next (or, when the run is over, the end of it)."""
        if self.result is not None:
            return
        if self.finishing:
            self.add_round()
            self.finish()
            return
        trace = self.state.trace
        first = self.first
        summary = trace_summary(trace, first)
        failed, skipped = None, []
        if self.round.error is not None:  # type: ignore[union-attr]
            bad = trace.steps[-1]
            failed = f"Step {bad.index + 1} ({bad.source.strip()}) failed: {bad.error}"
            whole = self.attempt.parsed  # type: ignore[union-attr]
            skipped = [s.source.strip() for s in whole.steps[bad.index + 1:]]
        sends = _takes_images(self.item.planner)
        looks, images, texts, frames = [], [], [], []
        for rec in trace.steps[first:]:
            if rec.module == "Look" and rec.error is None:
                room = self.budget.images - self.images - len(images)
                view = look_at(trace, rec.index, self.budget, sends, room)
                text = view.text
                for im in view.images:  # each image (a frame of a video too) numbered in order
                    images.append(im)
                    text = text.replace("{image}", f"image {len(images)}", 1)
                frames += view.frames
                looks.append(rec.arg_vars.get("var", ""))
                texts.append(text)
        if images and self.images + len(images) > self.budget.images:
            self.add_round()
            self.stop("images", f"showing {len(images)} more image"
                                f"{'s' if len(images) != 1 else ''} would pass the budget of "
                                f"{self.budget.images}")
            return
        notes = []
        if self.findings:
            notes.append("The result does not fit the question:")
            notes += [f"{i}. {f}" for i, f in enumerate(self.findings, 1)]
        if self.rounds == self.budget.rounds - 1:
            notes.append("This is the last round: end it with FINAL=Result(var=...).")
        text = observation_text(self.rounds, summary, failed=failed, skipped=skipped,
                                looks=texts, notes=notes)
        tokens = sum(image_tokens(im) for im in images)
        self.unsent = (len(images), tokens)  # sent with the next round's request, if any
        r = self.round
        assert r is not None
        r.observation, r.looks, r.images, r.image_tokens = text, looks, list(images), tokens
        r.frames = frames
        self.add_round()
        self.messages = self.messages + [
            {"role": "assistant", "content": self.write.plan.text},
            {"role": "user", "content": observation_parts(text, images)}]
        if self.state.error is not None:
            self.state.rewind()

    # -- the end

    def add_round(self) -> None:
        if self.round is None:
            return
        if self.state is not None:
            self.state.trace.add_event(self.round)
        else:
            self.events.append(self.round)
        self.round = None

    def value(self) -> Any:
        return self.state.value()[1] if self.state is not None else None

    def end_event(self, stop: str, answer: str | None, note: str = "") -> AgentRun:
        ran = self.state.pc if self.state is not None else 0
        return AgentRun(stop, answer, self.rounds, ran, self.images, self.calls,
                        dict(self.usage), self.image_tokens,
                        time.perf_counter() - self.started, note)

    def finish(self) -> None:
        """The planner wrote Result: the program's value is the answer."""
        trace = self.state.trace
        trace.add_event(self.end_event("result", "result"))
        trace.result = self.value()
        self.result = ItemResult(self.item.id, trace.result, self.program, trace, None)

    def stop(self, reason: str, note: str, cause: BaseException | None = None) -> None:
        """A budget (or the planner) ended the run: the answer is the program's last value,
        or an `AgentError` when no step ran."""
        state = self.state
        if state is not None:
            state.rewind()
        has, value = state.value() if state is not None else (False, None)
        if not has:
            trace = state.trace if state is not None else Trace(
                program="", events=list(self.events))
            trace.add_event(self.end_event(reason, None, note))
            trace.error = f"agent mode stopped before any step ran: {note}"
            if isinstance(cause, PlanningError) and self.rounds == 1:
                error: VisProgError = cause  # the first round never parsed: as a plan would
            else:
                error = AgentError(trace.error, trace, cause)
            self.result = ItemResult(self.item.id, None, None, trace, error)
            return
        trace = state.trace
        trace.program = self.program.source
        trace.add_event(self.end_event(reason, "result" if state.have_result else "last value",
                                       note))
        trace.result = value
        self.result = ItemResult(self.item.id, value, self.program, trace, None)

    def fail(self, error: BaseException) -> None:
        trace = Trace(program="", error=_failure(error), events=[])
        err = error if isinstance(error, VisProgError) else AgentError(_failure(error), trace,
                                                                         error)
        self.result = ItemResult(self.item.id, None, None, trace, err)


def _takes_images(planner: Any) -> bool:
    return takes_images(getattr(planner, "llm", None))


def _is_result(item: LoopItem, module: str) -> bool:
    """Whether `module` marks a program's result (Result), by the planner's registry."""
    registry = getattr(item.planner, "registry", None)
    tool = registry.find(module) if registry is not None else None
    return bool(tool is not None and tool.result)


def _before(program: Any, index: int) -> Any:
    """The program of the steps before step `index` (its lines before that step's)."""
    from visprog.language.parser import parse

    line = program.steps[index].line
    text = "\n".join(program.source.split("\n")[:line - 1]).rstrip("\n")
    return parse(text) if index > 0 else None
