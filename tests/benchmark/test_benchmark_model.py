"""tools/benchmark.py's model benchmark: the measurements it names in --json (ours, torchvision eager,
torchvision + torch.compile), the compile-time and memory fields, and the machine record. Not timing."""

import importlib.util
import json
from pathlib import Path

import pytest
from helpers.tiny_detectors import write_config

REPO = Path(__file__).resolve().parents[2]
# torchvision's FPN has 256 channels: the tiny config otherwise has no torchvision counterpart
REFERENCE_COMPATIBLE = ["model.fpn_out_channels=256"]
MEASUREMENT_FIELDS = {
    "name",
    "model",
    "precision",
    "images_per_s",
    "latency_median",
    "flops_per_image",
    "peak_memory_mb",
    "steady_peak_memory_mb",
    "memory_baseline_mb",
    "peak_memory_runs_mb",
    "compile_s",
    "compile_calls",
    "amortized_latency",
    "compile_cache_hits",
    "runs",
}


def _tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *args):
    config = write_config(tmp_path, REFERENCE_COMPATIBLE, arch="faster_rcnn")
    out = tmp_path / "result.json"
    assert _tool().main([str(config), "--threads", "1", "--json", str(out), *map(str, args)]) == 0
    return json.loads(out.read_text())


def _check_environment(result):
    env = result["environment"]
    assert set(env["cpu"]["features"]) == {"avx2", "avx512", "avx512_bf16", "amx"} and env["cpu"]["model_name"]
    assert env["threads"] == 1 and env["torch"]
    assert len(env["load_average_before"]) == 3 and len(env["load_average_after"]) == 3


def test_inference_json_names_ours_and_torchvision(tmp_path):
    result = _run(
        tmp_path,
        "--size",
        96,
        128,
        "--iters",
        1,
        "--warmup",
        0,
        "--dtype",
        "fp32,bf16",
        "--reference",
        "eager",
        "--memory",
        "off",
    )
    meas = result["measurements"]
    assert list(meas) == ["restransfer fp32", "restransfer bf16", "torchvision fp32"]
    for name, m in meas.items():
        assert MEASUREMENT_FIELDS <= set(m) and m["name"] == name
        assert f"{m['model']} {m['precision']}" == name and m["images_per_s"] > 0
        assert m["peak_memory_mb"] is None and m["compile_s"] is None  # memory off, nothing compiled
    assert set(result["ratios"]) == {"restransfer fp32", "restransfer bf16"} and result["ratios_vs_compile"] == {}
    assert result["agreement_reference"] == "torchvision fp32"
    assert result["config"]["references"] == ["torchvision"] and result["config"]["memory"] == "off"
    _check_environment(result)


def test_training_memory_is_measured_in_fresh_processes(tmp_path, capsys):
    args = ("--train", "--size", 64, 64, "--iters", 1, "--warmup", 0, "--no-reference", "--memory-repeats", 2)
    result = _run(tmp_path, *args)
    ((name, m),) = result["measurements"].items()
    assert name == "restransfer fp32" and result["reference"] == "none (disabled)"
    # a training step's activations and gradients: more than nothing, above what setup already held
    assert 0 < m["steady_peak_memory_mb"] <= m["peak_memory_mb"] and m["memory_baseline_mb"] > 50
    # two fresh processes: the figure is their median, the peaks are kept
    runs = m["peak_memory_runs_mb"]
    assert len(runs) == 2 and m["peak_memory_mb"] == pytest.approx(sum(runs) / 2)
    assert result["config"]["memory_repeats"] == 2
    assert "peak MB is the median of 2 fresh processes per model" in capsys.readouterr().out
    assert "VmHWM" in result["definitions"]["memory"]
    _check_environment(result)


def test_reference_options_are_checked(tmp_path, capsys):
    config = write_config(tmp_path, REFERENCE_COMPATIBLE, arch="faster_rcnn")
    assert _tool().main([str(config), "--reference", "eager", "--no-reference"]) == 2
    assert "--no-reference and --reference" in capsys.readouterr().err
    with pytest.raises(ValueError, match="reference 'jit'"):
        _tool().main([str(config), "--reference", "jit"])
    with pytest.raises(ValueError, match="references run at its precision"):
        _tool().main([str(config), "--train", "--dtype", "fp32", "--reference-dtype", "bf16"])
    with pytest.raises(ValueError, match="torchvision\\+compile reference's, which is not run"):
        _tool().main([str(config), "--compile-backend", "aot_eager"])
    with pytest.raises(ValueError, match="memory repeats 0: give a whole number"):
        _tool().main([str(config), "--memory-repeats", "0"])
    with pytest.raises(ValueError, match="'inductr': not one of torch.compile's"):
        _tool().main([str(config), "--reference", "compile", "--compile-backend", "inductr"])


@pytest.mark.slow  # torch.compile of the backbone on the CPU: about a minute per graph
def test_compile_reference_json_fields(tmp_path):
    """--reference eager,compile: the compiled reference is timed beside the eager one, with its compile
    time, the amortized figure and (inference) its memory in a fresh process; also for a training step."""
    # dynamo traces and records as with inductor; aot_eager skips the code generation (minutes on 2 cores)
    backend = ("--compile-backend", "aot_eager")
    once = ("--memory-repeats", 1)
    infer = _run(
        tmp_path, "--size", 128, 128, "--iters", 1, "--warmup", 1, "--reference", "eager,compile", *backend, *once
    )
    train = _run(
        tmp_path,
        "--train",
        "--size",
        128,
        128,
        "--iters",
        1,
        "--warmup",
        1,
        "--reference",
        "eager,compile",
        "--memory",
        "off",
        *backend,
    )
    for result in (infer, train):
        meas = result["measurements"]
        assert list(meas) == ["restransfer fp32", "torchvision fp32", "torchvision+compile fp32"]
        compiled = meas["torchvision+compile fp32"]
        assert compiled["model"] == "torchvision+compile" and compiled["compile_calls"] >= 1
        assert compiled["compile_s"] > 0
        median_call = compiled["latency_median"]  # one image per call
        assert compiled["amortized_latency"] == pytest.approx((compiled["compile_s"] + 100 * median_call) / 100)
        assert meas["torchvision fp32"]["compile_s"] is None
        assert set(result["ratios"]) == {"restransfer fp32", "torchvision+compile fp32"}
        assert set(result["ratios_vs_compile"]) == set(result["ratios_vs_compile_amortized"]) == {"restransfer fp32"}
        assert "minus as many median timed calls" in result["definitions"]["compile_time"]
        assert result["config"]["references"] == ["torchvision", "torchvision+compile"]
        assert result["config"]["compile_backend"] == "aot_eager"
        _check_environment(result)
    for m in infer["measurements"].values():
        assert m["peak_memory_mb"] > 0 and m["steady_peak_memory_mb"] >= 0
