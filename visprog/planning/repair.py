"""The planner learns from running its program: runtime repair, result checks, the critic,
program selection.

After a planned program runs, the loop looks at the run:

1. a step raised -> the LLM gets the program, the failing step, the error and a summary of
   the trace so far (per step: the line and a one-line summary of its output, such as
   `Objects: 0 regions` or `Text: 'blue'`) and writes a corrected program;
2. it ran, but a check of `visprog.planning.checks` flags the result (a colour question
   answered "yes", an empty find the question presumes, a crop of the whole image...) ->
   the findings are the feedback, in the same way;
3. it passed the checks and the critic is on -> the LLM is asked whether the program
   answers the question; a "no" and its reason are the feedback.

Each correction is parsed, checked (and repaired at that stage) by the planner as usual,
and runs again; at most `attempts` corrections per item. The loop is batched: given many
items it runs them together through a runner callable (the caller's engine), then asks for
corrections of only the items that need one and runs those together, and so on; items that
passed are never run again.

The result is the last run that passed; when none did, the run with the fewest findings
(the earliest of those); when every run raised, a `RepairError` listing every attempt. The
chosen run's trace gets a "repair" event with every attempt (program, why it was made, its
plan attempts, answer or error, findings, verdict), so the loop is visible in the HTML trace.

Voting (`select`): among k sampled programs, the runs that pass the checks (and the critic)
are preferred, the majority answer among them wins (ties: the earliest); the "vote" event
lists every candidate's program, answer and findings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from visprog.errors import RepairError, StepError, VisProgError
from visprog.planning.chat import LLMError
from visprog.planning.checks import Finding, enabled_checks, run_checks
from visprog.planning.critic import Critic, Verdict
from visprog.planning.planner import PlanningError, answer_key, majority
from visprog.planning.prompts import findings_repair_message, runtime_repair_message
from visprog.traces.records import Trace
from visprog.values import Objects

# Keys of the config's [planner] table that belong to this loop, not to the Planner.
SETTING_KEYS = ("repair", "repair_attempts", "checks", "critic", "select")
SELECT_MODES = ("checks", "majority")
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
        enabled: False turns the whole loop off (no checks, no repair: runs as before).
    """

    attempts: int = 2
    checks: list[str] = field(default_factory=enabled_checks)
    critic: bool = False
    select: str = "checks"
    enabled: bool = True

    @classmethod
    def make(cls, value: Any = None, config: Mapping[str, Any] | None = None) -> "RepairSettings":
        """Settings from the config's [planner] keys (`repair`, `repair_attempts`,
        `checks`, `critic`, `select`), then `value` over them: None (the config's), True
        (on), False (off), an int (that many corrections; 0: checks only), a mapping of
        the attribute names, or `RepairSettings`.

        Raises:
            ValueError: an unknown check or select mode, a negative attempt count.
        """
        if isinstance(value, RepairSettings):
            return value
        cfg = dict(config or {})
        out = cls()
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


def describe_value(value: Any) -> str:
    """A one-line summary of a step's output: `Objects: 2 regions (cat, cat)`,
    `Text: 'blue'`, `Image: 320x240`, `Number: 3`..."""
    if isinstance(value, Objects):
        labels = [str(l) for l in value.labels if l]
        shown = f" ({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})" if labels else ""
        return f"Objects: {len(value)} region{'s' if len(value) != 1 else ''}{shown}"
    if hasattr(value, "size") and hasattr(value, "mode"):
        return f"Image: {value.size[0]}x{value.size[1]}"
    if isinstance(value, bool):
        return f"Bool: {value}"
    if isinstance(value, (int, float)):
        return f"Number: {value:g}" if isinstance(value, float) else f"Number: {value}"
    if isinstance(value, str):
        return f"Text: {_cut(repr(value), 80)}"
    if isinstance(value, (list, tuple)):
        return f"TextList: {_cut(repr(list(value)), 80)}"
    if value is None:
        return "None"
    return f"{type(value).__name__}"


def trace_summary(trace: Trace | None) -> list[str]:
    """Per step that ran: `N. <line> -> <output summary>` (or its error)."""
    if trace is None:
        return []
    lines = []
    for rec in trace.steps[:MAX_SUMMARY_STEPS]:
        got = f"error: {rec.error}" if rec.error is not None else describe_value(rec.output)
        lines.append(_cut(f"{rec.index + 1}. {rec.source.strip()} -> {got}", MAX_SUMMARY_LINE))
    if len(trace.steps) > MAX_SUMMARY_STEPS:
        lines.append(f"... {len(trace.steps) - MAX_SUMMARY_STEPS} more steps")
    return lines


def plain_answer(value: Any) -> Any:
    """An answer as JSON can hold it (for events and result lines): scalars as they are,
    other values as their summary."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _cut(value, 200)
    return describe_value(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------- attempts


@dataclass
class RunAttempt:
    """One program of an item and its run.

    Attributes:
        reason: why it was written: "first" (the plan), "runtime" (the previous run raised),
            "check" (a check flagged it), "critic" (the critic said no).
        program: its text (a `Program` in `parsed` when the planner gave one).
        plan_events: how the planner wrote it (its plan attempts).
        value, trace, error: the run's outcome, once it ran.
        findings, verdict: the checks' findings and the critic's verdict on it.
        note: what went wrong when asking for its correction (the LLM failed...).
    """

    reason: str
    program: str
    plan_events: list[dict[str, Any]] = field(default_factory=list)
    parsed: Any = None
    value: Any = None
    trace: Trace | None = None
    error: VisProgError | None = None
    findings: list[Finding] = field(default_factory=list)
    verdict: Verdict | None = None
    note: str = ""
    finished: bool = False

    @property
    def ran(self) -> bool:
        return self.finished and self.error is None

    @property
    def passed(self) -> bool:
        return self.ran and not self.findings and (self.verdict is None or self.verdict.ok)

    @property
    def problems(self) -> int:
        return len(self.findings) + (self.verdict is not None and not self.verdict.ok)

    def to_dict(self, index: int) -> dict[str, Any]:
        failed = None
        if isinstance(self.error, StepError):
            failed = {"index": self.error.index, "line": self.error.line,
                      "target": self.error.target, "module": self.error.module}
        return {"index": index, "reason": self.reason, "program": self.program,
                "answer": plain_answer(self.value) if self.ran else None,
                "error": None if self.error is None else str(self.error),
                "failed_step": failed, "findings": [f.to_dict() for f in self.findings],
                "critic": None if self.verdict is None else self.verdict.to_dict(),
                "passed": self.passed, "note": self.note, "plan": list(self.plan_events)}


@dataclass
class Case:
    """One item the loop looks after: its question and the attempts so far.

    Attributes:
        question, task, inputs: what was planned (inputs: variable -> type).
        planner: writes corrections; None when the item can't be repaired.
        attempts: its programs in order, the first one given.
        id, payload: the caller's (e.g. the bound inputs the runner needs).
        remember: after a successful repair, store the program in the planner's cache.
    """

    question: str
    task: str
    inputs: dict[str, str]
    planner: Any
    attempts: list[RunAttempt]
    id: Any = None
    payload: Any = None
    remember: bool = False


Runner = Callable[[list[tuple[Case, RunAttempt]]], Sequence[Any]]


class RepairLoop:
    """Runs items, judges each run, asks for corrections, runs them again.

    Args:
        settings: `RepairSettings`.
        critic: a `Critic` (used when `settings.critic`).
    """

    def __init__(self, settings: RepairSettings, critic: Critic | None = None):
        self.settings = settings
        self.critic = critic if settings.critic else None

    # -- judging one run

    def judge(self, case: Case, attempt: RunAttempt) -> None:
        """The checks' findings, then (when they pass) the critic's verdict."""
        if not attempt.ran or not case.question:  # no question: nothing to judge against
            return
        if self.settings.checks:
            attempt.findings = run_checks(case.question, case.task, attempt.trace,  # type: ignore[arg-type]
                                          attempt.value, self.settings.checks)
        if self.critic is not None and not attempt.findings:
            try:
                attempt.verdict = self.critic.judge(case.question, attempt.program,
                                                    trace_summary(attempt.trace),
                                                    repr(plain_answer(attempt.value)))
            except LLMError as e:  # no verdict is not a wrong answer
                attempt.note = f"the critic could not be asked: {e}"

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

    # -- the loop

    def run(self, cases: Sequence[Case], runner: Runner, *, rounds: int | None = None) -> None:
        """Run every case's unfinished last attempt, then correct and rerun the ones that
        need it, up to `rounds` times (default `settings.attempts`). Cases change in place."""
        rounds = self.settings.attempts if rounds is None else rounds
        todo = [(c, c.attempts[-1]) for c in cases if not c.attempts[-1].finished]
        judged = [c for c in cases if c.attempts[-1].finished]
        for done_round in range(rounds + 1):
            if todo:
                for (case, attempt), res in zip(todo, runner(todo)):
                    attempt.value, attempt.trace, attempt.error = res.value, res.trace, res.error
                    attempt.finished = True
                    self.judge(case, attempt)
                judged += [c for c, _ in todo]
            if done_round == rounds:
                break
            todo = []
            for case in judged:
                last = case.attempts[-1]
                why = self.feedback(last)
                if why is None or case.planner is None:
                    continue
                reason, message = why
                try:
                    plan = case.planner.revise(case.question, last.program, message, case.inputs)
                except (PlanningError, LLMError) as e:
                    last.note = f"no correction: {e}"
                    continue
                events = [{**e, "revision": len(case.attempts)} for e in plan.events()]
                new = RunAttempt(reason, plan.text, events, plan.program)
                case.attempts.append(new)
                todo.append((case, new))
            judged = []
            if not todo:
                break

    # -- the outcome

    def outcome(self, case: Case) -> tuple[Any, Trace | None, VisProgError | None, int]:
        """(value, trace, error, chosen attempt index) of a finished case; the chosen trace
        gets a "repair" event when there was anything to report."""
        attempts = case.attempts
        chosen = next((i for i in range(len(attempts) - 1, -1, -1) if attempts[i].passed), None)
        if chosen is None:
            ran = [i for i, a in enumerate(attempts) if a.ran]
            if ran:
                chosen = min(ran, key=lambda i: (attempts[i].problems, i))
        trace = attempts[chosen].trace if chosen is not None else attempts[-1].trace
        if trace is not None and (len(attempts) > 1 or any(
                a.findings or a.verdict is not None or a.note for a in attempts)):
            trace.add_event("repair", chosen=chosen, attempts=[a.to_dict(i) for i, a in
                                                               enumerate(attempts)])
        if chosen is None:
            if len(attempts) == 1:  # nothing was retried: the run's own error says it all
                return None, trace, attempts[0].error, 0
            return None, trace, RepairError(case.question, attempts, trace), len(attempts) - 1
        a = attempts[chosen]
        if chosen > 0 and a.passed and case.remember and case.planner is not None:
            case.planner.remember(case.question, a.program, case.inputs)
        return a.value, a.trace, None, chosen


# --------------------------------------------------------------------------- selection


def select(candidates: Sequence[RunAttempt], how: str = "checks") -> int:
    """The index of the chosen candidate: the majority answer among the runs that passed
    (how="checks"; all runs when none passed) or among all runs (how="majority"), ties to
    the earliest. The chosen run's trace gets a "vote" event listing every candidate's
    program, answer, findings and verdict.

    Raises:
        ValueError: no candidate ran.
    """
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
        runs.append({"index": i, "program": a.program,
                     "answer": answer_key(a.value) if a.ran else None,
                     "error": None if a.error is None else str(a.error),
                     "findings": [f.to_dict() for f in a.findings],
                     "critic": None if a.verdict is None else a.verdict.to_dict(),
                     "passed": a.passed})
    candidates[chosen].trace.add_event(  # type: ignore[union-attr]
        "vote", chosen=chosen, counts=all_counts, select=how, pool=pool,
        pool_counts=counts, runs=runs)
    return chosen
