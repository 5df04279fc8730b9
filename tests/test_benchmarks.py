"""Every benchmark in benchmarks/ still runs: each one's smoke mode (the tiny preset's models,
a few calls) is run here and its figures are checked for what the benchmark is about, so a
change to the code a benchmark drives can no longer break it unseen.

bench_hosting needs Ray (a local cluster: slow); the others run in seconds each. A new
benchmark file must get a smoke test here (the first test says so).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """Imports a benchmark script as a module (they import each other by file name); the
    environment defaults they set on import are undone after the test."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("RAY_USAGE_STATS_ENABLED", "0")):
        monkeypatch.setenv(name, value)
    return importlib.import_module


def test_every_benchmark_has_a_smoke_mode_and_a_test():
    tests = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    files = sorted(BENCHMARKS.glob("bench_*.py"))
    assert len(files) >= 6
    for path in files:
        assert "--smoke" in path.read_text(), f"give {path.name} a --smoke mode"
        assert any(ref in tests for ref in (f'"{path.stem}"', f"'{path.stem}'", path.name)), \
            f"run {path.name} --smoke in a test (here, or a file of its own)"


def test_bench_engine(bench, capsys):
    assert bench("bench_engine").main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "goal < 50 us a step" in out and "warm from disk" in out


def test_bench_batch_shares_calls_when_batched(bench, tmp_path):
    """The four templates over one image: one-at-a-time calls Loc 3 and Vqa 4 times; a batch
    shares the repeated Loc and the repeated question (2 and 3 calls) in fewer invocations."""
    out = tmp_path / "batch.json"
    assert bench("bench_batch").main(["--smoke", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["failures"] == [] and figures["preset"] == "tiny"
    one = figures["rows"][0]
    fixed = next(r for r in figures["rows"] if r["mode"].startswith("batched (4"))
    assert one["mode"] == "one-at-a-time"
    assert one["module_calls"] == {"Loc": 3, "Vqa": 4}
    assert fixed["module_calls"] == {"Loc": 2, "Vqa": 3}
    assert fixed["model_invocations"] == {"Loc": 1, "Vqa": 1}
    assert all(r["programs_per_s"] > 0 for r in figures["rows"]) and len(figures["rows"]) == 3
    assert 0 < figures["box_threshold"] < 1


def test_bench_batch_without_full_size_models_for_a_preset_says_so(bench, tmp_path):
    with pytest.raises(SystemExit, match="full-size models exist for the presets default, "
                                         "classic"):
        bench("bench_batch").full_size_config("tiny", tmp_path, 224)


def test_bench_models_checks_every_bench_and_measures_some(bench, tmp_path):
    mod = bench("bench_models")
    out = tmp_path / "models.json"
    measured = ["Vqa[vilt]", "Classify[clip]", "Loc[owlv2]"]
    assert mod.main(["--smoke", "--modules", ",".join(measured), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["checked"] == len(mod.BENCHES) >= 17 and figures["problems"] == []
    assert [r["module"] for r in figures["rows"]] == measured
    for row in figures["rows"]:
        assert "error" not in row and row["first_call_s"] > 0 and row["batch_per_item_s"] > 0
    # the default preset's modules all have a bench (bench_gpu builds them from these)
    assert {"Loc[mm_grounding_dino]", "Select[sam3]", "Vqa", "Classify", "Depth",
            "Replace"} <= set(mod.BENCHES)


def test_bench_models_check_names_a_broken_bench(bench, monkeypatch):
    mod = bench("bench_models")
    good = mod.BENCHES["Vqa[vilt]"]
    monkeypatch.setitem(mod.BENCHES, "Vqa[nope]", mod.Bench(
        good.save, "Vqa", {"backend": "nope"}, good.checkpoints, good.kwargs))
    monkeypatch.setitem(mod.BENCHES, "Vqa[bad call]", mod.Bench(
        good.save, "Vqa", good.settings, good.checkpoints,
        lambda: {"image": "not an image", "query": "?"}, tiny=good.tiny))
    problems = mod.check_benches()
    assert any(p.startswith("Vqa[nope]: SettingsError") and "unknown backend" in p
               for p in problems), problems
    assert "Vqa[bad call]: Vqa takes no argument 'query'" in problems
    assert any(p.startswith("Vqa[bad call]: Vqa's image is Text") for p in problems)
    assert "Vqa[bad call]: the call lacks Vqa's ['question']" in problems
    assert len(problems) == 4


def test_bench_models_dry_run_names_a_broken_saver(bench, monkeypatch):
    """The savers run dry (meta device, nothing saved) in the smoke check: a full-size config
    the library refuses is caught there, in seconds."""
    mod = bench("bench_models")

    def save_bad_bert(folder):
        from transformers import BertConfig, BertModel

        # 1000 is not a multiple of 12 heads: BertModel refuses it
        mod._save(folder, BertModel(BertConfig(hidden_size=1000, num_attention_heads=12)))

    good = mod.BENCHES["Vqa[vilt]"]
    monkeypatch.setitem(mod.BENCHES, "Vqa[bad saver]", mod.Bench(
        save_bad_bert, "Vqa", good.settings, good.checkpoints, good.kwargs, tiny=good.tiny))
    problems = mod.check_savers(["Vqa[vilt]", "Vqa[bad saver]"])
    assert len(problems) == 1 and problems[0].startswith("Vqa[bad saver] (saver): ValueError")
    assert not mod._DRY  # back to saving for real


def test_bench_memory_loads_lazily(bench, tmp_path):
    out = tmp_path / "memory.json"
    assert bench("bench_memory").main(["--smoke", "--json", str(out)]) == 0
    lazy, eager = json.loads(out.read_text())
    assert [m.split(":")[0] for m in lazy["models"]] == ["vlm"]
    assert sorted(m.split(":")[0] for m in eager["models"]) == ["mm_grounding_dino", "vlm"]
    assert lazy["answer"] == eager["answer"]


def test_bench_gpu_smoke_on_the_cpu(bench, tmp_path):
    """Every section of the GPU benchmark on the tiny preset: six modules' latency, the
    end-to-end modes with p50/p95 per question, the models held, and the VLM's dtypes
    (where this visprog has the per-module dtype setting)."""
    out = tmp_path / "gpu.json"
    mod = bench("bench_gpu")
    assert mod.main(["--preset", "tiny", "--smoke", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["smoke"] is True
    assert set(figures["latency"]) == set(mod.MODULES)
    for row in figures["latency"].values():
        assert row["batch_1_s_per_call"] > 0 and row["batch_2_s_per_call"] > 0
    e2e = figures["end_to_end"]
    assert set(e2e["modes"]) == {"one at a time", "auto (first run: measuring)",
                                 "auto (second run)", "fixed 4"}
    for row in e2e["modes"].values():
        assert 0 < row["p50_s_per_question"] <= row["p95_s_per_question"] <= row["seconds"]
    assert e2e["best_fixed"] == "fixed 4" and e2e["auto_share_of_best"] > 0
    assert e2e["modes"]["auto (second run)"]["auto_sizes"]  # auto said what it learned
    kinds = {m["kind"] for m in figures["memory"]["models"]}
    assert {"mm_grounding_dino", "sam3", "vlm", "siglip2", "depth"} <= kinds
    assert any(k.startswith("sdxl") for k in kinds)
    dtypes = figures["vlm_dtype"]
    if "skipped" in dtypes:
        assert importlib.util.find_spec("visprog.models.dtypes") is None
    else:
        assert dtypes["bf16"]["loaded_as"] == ["bfloat16"]
        assert dtypes["fp16"]["loaded_as"] == ["float16"]
        assert 0 <= dtypes["answers_agree"] <= 2


def test_bench_gpu_without_a_gpu_says_what_to_do(bench):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match=r"no CUDA GPU here .*--smoke .*--device cpu"):
        bench("bench_gpu").main([])
    with pytest.raises(SystemExit, match="--device cuda, but torch sees no CUDA GPU"):
        bench("bench_gpu").main(["--device", "cuda"])


def test_bench_gpu_percentiles(bench):
    percentile = bench("bench_gpu").percentile
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert percentile([5.0], 95) == 5.0


@pytest.mark.slow
def test_bench_hosting_smoke(bench, tmp_path):
    """Needs Ray: a local cluster, both hosts side by side, values identical, and where a
    hosted request's time goes."""
    pytest.importorskip("ray.serve")
    out = tmp_path / "hosting.json"
    assert bench("bench_hosting").main(["--smoke", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["identical_values"] is True
    for mode in ("sequential", "batched"):
        row = figures["modes"][mode]
        assert row["in_process_programs_per_s"] > 0 and row["ray_programs_per_s"] > 0
        for module in ("Loc", "Vqa"):
            parts = figures["profile_ms_per_request"][mode][module]
            assert parts["requests"] > 0 and parts["replica_run_ms"] > 0
            assert parts["client_wait_ms"] >= parts["replica_run_ms"]


def test_bench_agent_smoke(bench, capsys):
    assert bench("bench_agent").main(["--smoke"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["rounds"] == 5 and figures["overhead_per_round_ms"] > 0
    assert figures["html_bytes"] > 0 and figures["reps"] == 2


def test_bench_assembly_smoke(bench, capsys):
    assert bench("bench_assembly").main(["--smoke"]) == 0
    out = capsys.readouterr().out
    climbs = int(out.split("climbs while constructing VisProg: ")[1].split()[0])
    reads = int(out.split("entry-point reads per VisProg: ")[1].split()[0])
    assert climbs <= 1 and reads == 1 and "lines of visprog/api.py" in out
