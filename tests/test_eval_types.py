"""Eval expressions typed before they run: one operator table (language/expr.py) for the
checker, the query builder and the constrained grammar, with the grammar's precedence; what
can never run is a located check error, everything that may run still checks (the shipped
programs included)."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import lark
import pytest

from visprog.cli import EXIT_ERROR, main
from visprog.errors import EvalError, ToolDeclarationError
from visprog.language import expr as eval_expr
from visprog.language.checker import check
from visprog.language.expr import (OPERATORS, evaluate, expr_types, literal_kind, parse_expr,
                                   read_value, result_kinds, syntax, unparse)
from visprog.language.parser import parse
from visprog.planning.llm_grammar import StepGrammar
from visprog.planning.prompts import TASKS, load_examples
from visprog.registry import Registry, tool
from visprog.config import find_modules
from visprog.values import Objects

ROOT = Path(__file__).resolve().parents[1]


@tool("Ask", params={"image": "Image", "question": "Text"}, returns="Text", draw_on=None)
def ask(image, question):
    return "yes"


@tool("Items", params={"image": "Image"}, returns="TextList", draw_on=None)
def items(image):
    return ["a", "b"]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry([*find_modules(plugins=False).tools(), ask, items])


# A program whose variables have every type Eval meets: N Number, A Text (an answer), OBJ
# Objects, B Bool|Number|Text (an Eval), L TextList, R a list that is not all text, IMAGE.
HEAD = ("OBJ=Loc(image=IMAGE, object='cup')\n"
        "N=Count(box=OBJ)\n"
        "A=Ask(image=IMAGE, question='how many?')\n"
        "B=Eval(expr='{N} > 0')\n"
        "L=Items(image=IMAGE)\n"
        "R=Result(var=[1, 2])\n")
LINE = HEAD.count("\n") + 1


def eval_problems(registry, expression: str):
    text = HEAD + f"X=Eval(expr={expression!r})"
    return check(parse(text), registry)


# --------------------------------------------------------------------------- what ships


def shipped_programs() -> list[tuple[str, str, dict | None]]:
    """(where, program, inputs) of every program the project shows: the planner's in-context
    examples, examples/*.vp and the README's program blocks."""
    out = []
    for name, spec in TASKS.items():
        for ex in load_examples(name):
            out.append((f"{name}: {ex.question}", ex.program, dict(spec.inputs)))
    for path in sorted((ROOT / "examples").glob("*.vp")):
        out.append((path.name, path.read_text(encoding="utf-8"), None))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for i, block in enumerate(re.findall(r"```[a-z]*\n(.*?)```", readme, re.DOTALL)):
        lines = [s for s in block.splitlines() if s.strip() and not s.lstrip().startswith("#")]
        if lines and all(re.match(r"[A-Z_][A-Z0-9_]*=", s) for s in lines):
            out.append((f"README block {i}", block, None))
    return out


def test_every_shipped_program_checks(registry):
    programs = shipped_programs()
    kinds = {where.split(":")[0].split(" ")[0] for where, *_ in programs}
    assert {"gqa", "nlvr", "imgedit", "knowtag", "README"} <= kinds
    assert sum(where.startswith("README") for where, *_ in programs) >= 5
    assert sum(where.endswith(".vp") for where, *_ in programs) >= 4
    evals = 0
    for where, text, inputs in programs:
        program = parse(text)
        assert check(program, registry, inputs) == [], where
        evals += sum(s.module == "Eval" for s in program)
    assert evals >= 10  # the expressions are really typed, not skipped


# --------------------------------------------------------------------------- new errors

NEW_ERRORS = [
    # (expression, message part, hint part)
    ("{N} > 'a'", "can't apply '>' to {N} (Number) and 'a' (Text)",
     "compares two numbers or two texts"),
    ("{IMAGE} + 1", "Eval can't read {IMAGE}: it is an Image", "Vqa"),
    ("{IMAGE} * 2 > 1", "Eval can't read {IMAGE}", "Objects (as their count)"),
    ("'{IMAGE}' + 'x'", "Eval can't read '{IMAGE}'", ""),
    ("{L} == 'a'", "Eval can't read {L}: it is a TextList", "Eval reads Text"),
    ("{R} + 1", "Eval can't read {R}: it is a list that is not all text", ""),
    ("{N} > '3'", "to {N} (Number) and '3' (Text)", "'3' in quotes is text: write 3"),
    ("{N} >= 'seven'", "'>=' to {N} (Number) and 'seven' (Text)", "write the number 7"),
    ("'yes' if {N} < 'no' else 'no'", "'<' to {N} (Number) and 'no' (Text)",
     "write False without quotes"),
    ("{OBJ} + 'a'", "can't apply '+' to {OBJ} (Objects) and 'a' (Text)", "joins two texts"),
    ("'a' - 1", "can't apply '-' to 'a' (Text) and 1 (Number)", "two numbers"),
    ("-'a'", "can't apply '-' to 'a' (Text)", "unary '-' takes a number"),
    ("'a' * 'b'", "can't apply '*' to 'a' (Text) and 'b' (Text)", "repeats a text"),
    ("{N} % 'x'", "'%'", "remainder"),
    ("True < 'a'", "can't apply '<' to True (Bool) and 'a' (Text)", ""),
    ("None + 1", "can't apply '+' to None (None) and 1 (Number)", ""),
    ("0 < {N} < 'a'", "'<' to {N} (Number) and 'a' (Text) in 0 < {N} < 'a'", ""),
    ("({N} + 1) * 2 > 'many'", "'>' to ({N} + 1) * 2 (Number) and 'many' (Text)", ""),
    ("None", "the expression's value is always None", "Bool, Number or Text"),
    ("None if {N} else None", "always None", ""),
]


@pytest.mark.parametrize("expression, message, hint", NEW_ERRORS,
                         ids=[e[0] for e in NEW_ERRORS])
def test_what_can_never_run_is_a_located_check_error(registry, expression, message, hint):
    found = eval_problems(registry, expression)
    assert len(found) == 1, found
    d = found[0]
    assert (d.line, d.column) == (LINE, 8), d  # the expr= argument of the Eval step
    assert d.text == expression
    assert message in d.message and d.message.startswith("expr: "), d
    assert hint in d.hint and d.hint, d
    with pytest.raises(EvalError):  # ...and it would have failed when it ran
        evaluate(expression, {"N": 2, "IMAGE": object(), "L": ["a"], "R": [1, 2],
                              "OBJ": Objects.empty((4, 4)), "A": "2"})


def test_every_part_that_can_never_run_is_reported_once(registry):
    found = eval_problems(registry, "{IMAGE} + {IMAGE} > 'a' or {N} - 'x' or {N} - 'x'")
    assert [d.message for d in found] == [
        "expr: Eval can't read {IMAGE}: it is an Image",
        "expr: can't apply '-' to {N} (Number) and 'x' (Text)"]


def test_errors_in_several_steps_are_all_reported(registry):
    text = HEAD + "X=Eval(expr=\"{N} > 'a'\")\nY=Count(box=X)\nZ=Eval(expr='{IMAGE} + 1')"
    found = check(parse(text), registry)
    assert [(d.line, d.column) for d in found] == [(LINE, 8), (LINE + 1, 9), (LINE + 2, 8)]


MAY_RUN = [
    "{A} > 7", "{A} >= 7 and {A} < 10", "{A} + 1", "{A} - {A}", "{A} == 'yes'", "{A} < 'b'",
    "{A} * 2", "-{A}", "{A} and {N} > 0", "'yes' if {A} else 'no'", "{N} == 'a'", "'a' != 3",
    "'ab' * 2", "'a' * True", "{OBJ} > 0", "{OBJ} + {OBJ}", "'{OBJ}' + ' found'",
    "'{N}' + 'x'", "{N} / 0", "None == {N}", "{B} + 1", "{B} + 'x'", "'x' if {N} else None",
    "-True", "{N} ** 2", "not {L2}", "{A} + ' car'", "{N} == 2 xor {A} == 'two'",
    "'one' if {N} == 1 else 'faces: ' + '{N}'", "{ANYTHING} + 1",
]


@pytest.mark.parametrize("expression", MAY_RUN)
def test_what_may_run_still_checks(registry, expression):
    text = HEAD + f"ANYTHING=Result(var=A)\nL2=Result(var=N)\nX=Eval(expr={expression!r})"
    assert check(parse(text), registry, {"IMAGE": "Image"}) == []


def test_answers_compared_with_numbers_check_and_run():
    """Vqa answers are Text: 'seven', '2 dogs' and '3' compare with numbers when they run."""
    types = {"A": frozenset({"Text"})}
    assert expr_types("{A} >= 7", types).problems == ()
    for answer, want in (("seven", True), ("2 dogs", False), ("12", True), ("Yes", False)):
        assert evaluate("{A} >= 7", {"A": answer}) is want


# --------------------------------------------------------------------------- one table


KIND_SAMPLES = {"Number": [2, 0, 2.5, -3], "Bool": [True, False], "Text": ["a", "", "ab"],
                "None": [None]}


def _kind(value) -> str:
    return literal_kind(value)


def _runs(text: str) -> object:
    """The value of a text of literals (which are exactly their kind), TypeError for a type
    mismatch, None for another error (division by zero), which says nothing of types."""
    try:
        return evaluate(text, {})
    except EvalError as e:
        if "type mismatch" in str(e) or "is None" in str(e):
            return TypeError
        return None


@pytest.mark.parametrize("name", [n for n, op in OPERATORS.items() if op.arity == 2])
def test_the_table_is_what_the_operators_do(name):
    """For every pair of value kinds, the table gives exactly the kinds the running operator
    gives, and nothing where it fails with a type mismatch every time."""
    symbol = OPERATORS[name].symbol
    for a, b in itertools.product(KIND_SAMPLES, repeat=2):
        got = {_kind(v) for x, y in itertools.product(KIND_SAMPLES[a], KIND_SAMPLES[b])
               if (v := _runs(f"({x!r}) {symbol} ({y!r})")) not in (TypeError, None)}
        assert result_kinds(name, [frozenset({a}), frozenset({b})]) == got, (a, name, b)


def test_the_table_of_if():
    for a, b in itertools.product(KIND_SAMPLES, repeat=2):
        got = {_kind(v) for x, y in itertools.product(KIND_SAMPLES[a], KIND_SAMPLES[b])
               for c in (True, False) if (v := _runs(f"{x!r} if {c} else {y!r}"))
               not in (TypeError, None)}
        assert result_kinds("if", [frozenset({a}), frozenset({"Bool"}), frozenset({b})]) \
            - {"None"} == got, (a, b)  # a value of None is an error of the whole


@pytest.mark.parametrize("name", ["neg", "pos", "not"])
def test_the_table_of_unary_operators(name):
    written = {"neg": "-", "pos": "+", "not": "not "}[name]
    for a, samples in KIND_SAMPLES.items():
        got = {_kind(v) for x in samples
               if (v := _runs(f"{written}({x!r})")) not in (TypeError, None)}
        assert result_kinds(name, [frozenset({a})]) == got, (name, a)


TYPE_SAMPLES = {"Number": [0, 3, 1.5], "Bool": [True, False], "None": [None],
                "Text": ["red", "2", "yes", "No", "seven", "2 dogs", ""],
                "Objects": [Objects.empty((4, 4))], "TextList": [["a"]]}


@pytest.mark.parametrize("symbol", ["+", "-", "*", "/", "<", ">=", "==", "and"])
def test_what_the_checker_refuses_never_runs(symbol):
    """Over variables of every type (Text answers that read as numbers, yes/no and counts
    included): an expression the checker refuses fails every time its refused part runs (the
    right of `and` runs when the left is true), and one it lets through runs for some value,
    giving a kind the checker expected."""
    for (a, xs), (b, ys), literal in itertools.product(
            TYPE_SAMPLES.items(), TYPE_SAMPLES.items(), [None, "'a'", "3"]):
        text = f"{{X}} {symbol} {{Y}}" if literal is None else f"{{X}} {symbol} {literal}"
        typed = expr_types(text, {"X": frozenset({a}), "Y": frozenset({b})})
        results = []
        for x, y in itertools.product(xs, ys):
            if symbol == "and" and typed.problems and a not in ("Image", "TextList") \
                    and not evaluate("{X} or False", {"X": x}):
                continue  # the right is never read
            try:
                results.append(evaluate(text, {"X": x, "Y": y}))
            except EvalError as e:
                assert "division by zero" in str(e) or typed.problems or \
                    "type mismatch" in str(e), (text, a, b, e)
        if typed.problems:
            assert results == [], (text, a, b, results)
        else:
            assert results or symbol == "/", (text, a, b)
            assert {_kind(r) for r in results} <= typed.types, (text, a, b)


def test_reads_follow_read_value():
    for kind, samples in TYPE_SAMPLES.items():
        for value in samples:
            try:
                read = read_value("X", value)
            except EvalError:
                assert eval_expr.reads(frozenset({kind})) == frozenset(), kind
                continue
            assert _kind(read) in eval_expr.reads(frozenset({kind})), (kind, value)
    assert eval_expr.reads(frozenset({"Objects"}), as_text=True) == {"Text"}
    assert eval_expr.reads(frozenset({"Image"}), as_text=True) == frozenset()


# --------------------------------------------------------------------------- precedence


def test_precedence_is_read_from_the_grammar():
    level = {name: s.level for name, s in syntax().items()}
    chain = ["if", "or", "xor", "and", "not", "==", "+", "*", "neg", "**", "atom"]
    assert [level[a] < level[b] for a, b in zip(chain, chain[1:])] == [True] * 10
    assert level["<"] == level["!="] == level["=="] and level["//"] == level["%"] == level["*"]
    assert syntax()["-"].operands == (level["+"], level["*"])  # left-associative
    assert syntax()["**"].operands == (level["atom"], level["neg"])  # right, and 2 ** -1


def test_a_grammar_in_another_order_gives_other_levels(monkeypatch):
    """Not a copy: swap the operators of the grammar's sum and term rules (so * binds looser
    than +) and the levels and the parentheses follow."""
    text = (ROOT / "grammars" / "expr.lark").read_text(encoding="utf-8")
    swapped = (text.replace("?sum: sum ADD_OP term", "?sum: sum MUL_OP term")
                   .replace("?term: term MUL_OP factor", "?term: term ADD_OP factor"))
    assert swapped.count("MUL_OP") == text.count("MUL_OP") and swapped != text
    with monkeypatch.context() as m:
        m.setattr(eval_expr, "_parser", lambda: lark.Lark(swapped, parser="lalr"))
        eval_expr.syntax.cache_clear()
        try:
            assert syntax()["*"].level < syntax()["+"].level
            assert eval_expr.write_op("+", [("a * b", syntax()["*"].level), ("c", 99)])[0] \
                == "(a * b) + c"
        finally:
            eval_expr.syntax.cache_clear()
    assert syntax()["*"].level > syntax()["+"].level
    assert eval_expr.write_op("+", [("a * b", syntax()["*"].level), ("c", 99)])[0] == "a * b + c"


UNPARSE = ["-2 ** 2", "(-2) ** 2", "(1 + 2) * 3", "1 - (2 - 3)", "1 - 2 - 3", "2 ** 3 ** 2",
           "(2 ** 3) ** 2", "not {A} == {B} if {C} else {D}", "(not {A}) == {B}",
           "0 < {N} < 5", "(0 < {N}) < 5", "({A} if {B} else {C}) if {D} else {E}",
           "{A} if {B} else {C} if {D} else {E}", "--{N}", "({A} or {B}) and {C}",
           "'{N}' + 'x'", "{A} xor {B} or {C}", "{A} xor ({B} or {C})"]


@pytest.mark.parametrize("text", UNPARSE)
def test_unparse_writes_the_same_tree(text):
    assert unparse(parse_expr(text)) == text
    assert parse_expr(unparse(parse_expr(text))) == parse_expr(text)


def test_the_query_builder_uses_the_same_table(registry):
    from visprog.query import expr as query_expr

    assert query_expr.result_kinds is result_kinds
    n = query_expr.Op("ref", (), frozenset({"Number"}))
    with pytest.raises(query_expr.ExprProblem) as e:
        query_expr.make_op("<", (n, query_expr.Const("3")))
    assert e.value.hint == OPERATORS["<"].takes
    assert not hasattr(query_expr, "LEVEL")


# --------------------------------------------------------------------------- the constrained grammar


def test_every_expression_the_step_grammar_writes_checks():
    env = {"IMAGE": frozenset({"Image"}), "N": frozenset({"Number"}),
           "A": frozenset({"Text"}), "OBJ": frozenset({"Objects"}), "L": frozenset({"TextList"})}
    rules: list[str] = []
    StepGrammar(Registry([]))._expr_rule("x", env, sorted(env), rules)
    parser = lark.Lark("start: x_e\n" + "\n".join(rules))
    atoms = ["{IMAGE}", "{N}", "{A}", "{OBJ}", "{L}", "'a'", "3", "True"]
    ops = [" + ", " - ", " * ", " > ", " == ", " and "]
    accepted = 0
    for a, op, b in itertools.product(atoms, ops, atoms):
        text = a + op + b
        try:
            parser.parse(text)
        except lark.exceptions.LarkError:
            continue
        accepted += 1
        assert expr_types(text, env).problems == (), text
    assert accepted > 50
    for refused in ("{IMAGE} + 1", "{N} > 'a'", "{L} == 'a'", "'a' - 'b'", "{N} - 'a'"):
        with pytest.raises(lark.exceptions.LarkError):
            parser.parse(refused)
    for fine in ("{A} > 3", "{A} + 'x' == 'ax'", "{OBJ} > 0 and {N} < 2"):
        parser.parse(fine)


def test_any_tool_may_declare_how_its_expression_is_typed():
    """The checker knows Eval only through its declaration: another tool's expression
    argument is typed by its own hook, and the problems are reported at the argument."""
    seen = []

    def typed(text, variables):
        seen.append((text, dict(variables)))
        return eval_expr.ExprTypes(frozenset({"Number"}), (("always wrong", "a hint"),))

    @tool("Score", params={"image": "Image", "formula": "Text"}, returns="Number",
          expr_types={"formula": typed})
    def score(image, formula):
        return 1

    found = check(parse("S=Score(image=IMAGE, formula='x * 2')"), Registry([score]))
    assert [(d.line, d.column, d.text, d.message, d.hint) for d in found] == \
        [(1, 22, "x * 2", "formula: always wrong", "a hint")]
    assert seen == [("x * 2", {"IMAGE": {"Image"}, "LEFT": {"Image"}, "RIGHT": {"Image"},
                               "VIDEO": {"Video"}})]


# --------------------------------------------------------------------------- entry points


def test_visprog_check_reports_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.vp").write_text("OBJ=Loc(image=IMAGE, object='cup')\nN=Count(box=OBJ)\n"
                                   "A=Eval(expr=\"'yes' if {N} > 'a' else 'no'\")\n")
    assert main(["check", "p.vp", "--preset", "tiny"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "p.vp:3:8: expr: can't apply '>' to {N} (Number) and 'a' (Text)" in err
    assert "(hint: '>' compares two numbers or two texts" in err


def test_a_query_value_that_is_a_list_of_numbers(registry):
    """A query passes its values' type sets to the checker as they are, the empty set (a list
    that is not all text) included."""
    from visprog import VisProg
    from visprog.query import QueryError

    vp = VisProg(preset="tiny", cache=False, plugins=False)
    numbers = vp.fn.result([1, 2])
    assert numbers.types == frozenset() and vp.fn.result(numbers).value == [1, 2]
    with pytest.raises(QueryError, match="'box' takes Objects or Tracks; the Result result is a list "
                                         "that is not all text"):
        vp.fn.count(numbers)
    with pytest.raises(QueryError, match="can't use a list that is not all text"):
        vp.fn.eval("{R} + 1", R=numbers)
    assert check(parse("N=Count(box=R)"), registry, {"R": frozenset()})[0].message == \
        "Count's 'box' takes Objects or Tracks; R is a list that is not all text"


def test_an_unknown_input_type_is_refused_by_name(registry):
    for spec in ("Nmber", "", {"Text", "Txt"}):
        with pytest.raises(ToolDeclarationError, match="input 'X': unknown type"):
            check(parse("N=Eval(expr='{X} + 1')"), registry, {"X": spec})
