"""Files as editors save them: UTF-8 with a byte-order mark, CRLF or lone-CR line ends are
read as plain text everywhere (programs, JSONL items, data sets, TOML configs); a file that
is not UTF-8 is refused with a message naming its line."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from visprog.cli import EXIT_OK, EXIT_USAGE, main
from visprog.config import load_config
from visprog.errors import ConfigError
from visprog.evaluation.datasets import DatasetError, load_dataset
from visprog.language.parser import parse
from visprog.values.textfiles import decode_text

PROGRAM = ["L=Loc(image=IMAGE, object='LEFT')", "N=Count(box=L)",
           "A=Eval(expr=\"'yes' if {N} > 0 else 'no'\")"]
ENDINGS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("end", sorted(ENDINGS))
def test_programs_parse_with_any_line_end_and_a_bom(end, bom):
    text = ("\ufeff" if bom else "") + ENDINGS[end].join(PROGRAM) + ENDINGS[end]
    prog = parse(text)
    assert [s.target for s in prog.steps] == ["L", "N", "A"]


def test_a_call_spanning_crlf_lines_parses():
    assert len(parse("A=Loc(image=IMAGE,\r\n  object='x')\r\nN=Count(box=A)").steps) == 2


def test_decode_names_the_line_and_byte_of_bad_utf8():
    data = "A=1\nB='caf".encode() + b"\xe9'\n"
    with pytest.raises(ValueError, match=r"x\.vp is not UTF-8 text: line 2, column 7 has the "
                                         r"byte 0xe9"):
        decode_text(data, "x.vp")
    with pytest.raises(ValueError, match="line 3"):  # CRLF and lone CR count as line ends
        decode_text(b"a\r\nb\rc\xff", "x")


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (40, 30), (30, 60, 90)).save(tmp_path / "photo.png")
    return tmp_path


@pytest.mark.parametrize("end", sorted(ENDINGS))
def test_cli_runs_a_program_file_saved_with_a_bom(work, capsys, end):
    (work / "p.vp").write_bytes(("\ufeff" + ENDINGS[end].join(PROGRAM)).encode())
    assert main(["exec", "p.vp", "--image", "photo.png", "--preset", "tiny"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == "yes"


def test_cli_refuses_a_latin1_program_naming_the_line(work, capsys):
    (work / "p.vp").write_bytes(b"L=Loc(image=IMAGE, object='LEFT')\nA=Eval(expr=\"'caf\xe9'\")\n")
    assert main(["check", "p.vp", "--preset", "tiny"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "line 2" in err and "Traceback" not in err


def test_batch_items_jsonl_with_a_bom_and_crlf(work, capsys):
    rows = [{"program": "\n".join(PROGRAM), "image": "photo.png", "id": "a"},
            {"program_file": "p.vp", "image": "photo.png", "id": "b"}]
    (work / "p.vp").write_bytes(("\ufeff" + "\r\n".join(PROGRAM)).encode())
    (work / "items.jsonl").write_bytes(("\ufeff" + "\r\n".join(json.dumps(r) for r in rows)
                                        + "\r\n").encode())
    assert main(["batch", "items.jsonl", "--preset", "tiny"]) == EXIT_OK
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [r["id"] for r in out] == ["a", "b"]
    assert all(r.get("error") in (None, "") for r in out)


def test_datasets_with_a_bom_and_crlf(work):
    jsonl = work / "items.jsonl"
    jsonl.write_bytes(("\ufeff" + json.dumps({"image": "photo.png", "question": "q?",
                                              "answer": "yes"}) + "\r\n").encode())
    [item] = load_dataset(jsonl)
    assert item.question == "q?"
    nlvr = work / "dev.jsonl"
    nlvr.write_bytes(("\ufeff" + json.dumps({"identifier": "x-0", "sentence": "s",
                                             "label": "True", "left_url": "a.png",
                                             "right_url": "b.png"}) + "\r").encode())
    assert load_dataset(nlvr, images=work)[0].question == "s"
    gqa = work / "questions.json"
    gqa.write_bytes(("\ufeff" + json.dumps({"1": {"question": "q?", "answer": "no",
                                                  "imageId": "photo"}})).encode())
    assert load_dataset(gqa, images=work)[0].answer == "no"


def test_a_dataset_that_is_not_utf8_names_the_line(work):
    bad = work / "items.jsonl"
    bad.write_bytes(json.dumps({"image": "photo.png", "question": "q", "answer": "a"}).encode()
                    + b"\n{\"image\": \"photo.png\", \"question\": \"caf\xe9\"}\n")
    with pytest.raises(DatasetError, match="not UTF-8 text: line 2"):
        load_dataset(bad, fmt="jsonl")


@pytest.mark.parametrize("end", sorted(ENDINGS))
def test_toml_configs_with_a_bom_and_any_line_end(work, end):
    (work / "my.toml").write_bytes(("\ufeff" + ENDINGS[end].join(
        ["[Loc]", "box_threshold = 0.31", "[models]", "cpu_threads = 1"]) + ENDINGS[end]).encode())
    cfg = load_config("tiny", work / "my.toml")
    assert cfg["Loc"]["box_threshold"] == 0.31


def test_a_toml_config_that_is_not_utf8_names_the_line(work):
    (work / "my.toml").write_bytes(b"[Loc]\n# caf\xe9\nbox_threshold = 0.3\n")
    with pytest.raises(ConfigError, match="not UTF-8 text: line 2"):
        load_config("tiny", work / "my.toml")
