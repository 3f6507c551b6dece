"""How the command-line tools fail: ``error: <what, where, what to do>`` on stderr, exit status 2 for the
user's errors, 1 for internal errors, 130 when interrupted, no traceback unless ``--debug``.

The subprocess cases run each tool as a user does, one cheap failure each; the in-process cases check
``restransfer.cli`` itself (status codes, messages for errors that are hard to provoke for real, such as a
full disk)."""

import argparse
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from restransfer import cli

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
MASK_CONFIG = REPO / "configs" / "torchvision" / "mask_rcnn_r50_fpn.yaml"
TRAIN_CONFIG = REPO / "configs" / "coco_faster_rcnn_r101.yaml"


def _run(tool, *args, env_extra=None):
    env = {**os.environ, "RESTRANSFER_NO_PROGRESS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(TOOLS / tool), *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True
    )


def _assert_user_error(proc, *names):
    """Exit status 2 and, after whatever the run logged, a report starting with ``error: `` that names each
    of ``names``; no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert starts, proc.stderr[-3000:]
    report = "\n".join(lines[starts[-1] :])
    for name in names:
        assert str(name) in report, (name, report)


@pytest.fixture(scope="module")
def tiny(tiny_overrides):
    """The tiny training overrides: building the model is the only model work these failures reach."""
    return tiny_overrides("training")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad inputs shared by the cases: a checkpoint of random bytes, a regular file where a folder is
    needed, a small valid COCO ground truth, a results file that is not JSON, and an image."""
    import cv2
    import numpy as np

    root = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    (root / "random.pth").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "a_file").write_text("not a folder\n")
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "square"}],
    }
    (root / "gt.json").write_text(json.dumps(gt))
    (root / "results.json").write_text('[{"image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20],\n "score": }]')
    (root / "good_results.json").write_text('[{"image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "score": 1}]')
    cv2.imwrite(str(root / "a.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return root


# --- what runs before torch is imported ------------------------------------------------------------


def test_argument_config_and_results_file_work_imports_no_torch(files, tmp_path):
    """A tool checks its arguments and its config, and evaluates results files, without importing torch or
    the model code (cli.deferred_module): a typo is answered at once. Run in a fresh interpreter, which
    ends by reporting whether torch got imported."""
    gt, results = files / "gt.json", files / "good_results.json"
    script = (
        "import sys\n"
        "from restransfer.cli import run_tool\n"
        "from restransfer.commands import analyze_coco, demo, eval_coco, eval_imagenet_det, eval_imagenet_loc\n"
        "from restransfer import commands\n"
        "from restransfer.commands import train_det\n"
        "def run(main, argv):\n"
        "    try:\n"
        "        return run_tool(main, argv)\n"
        "    except SystemExit as e:  # argparse's usage errors\n"
        "        return e.code\n"
        "codes = [\n"
        f"    run(train_det.main, [{str(tmp_path / 'nope.yaml')!r}]),\n"
        f"    run(train_det.main, [{str(TRAIN_CONFIG)!r}, 'solver.base_lrr=0.1']),\n"
        f"    run(train_det.main, [{str(TRAIN_CONFIG)!r}, '--resume', '--restart']),\n"
        "    run(eval_coco.main, []),\n"
        f"    run(eval_coco.main, ['--gt', {str(gt)!r}, '--results', {str(files / 'results.json')!r}]),\n"
        f"    run(eval_coco.main, ['--gt', {str(gt)!r}, '--results', {str(results)!r},"
        f" '--output', {str(tmp_path / 'm.json')!r}]),\n"
        f"    run(analyze_coco.main, ['--gt', {str(gt)!r}, '--results', {str(results)!r},"
        f" '--output', {str(tmp_path / 'analysis')!r}]),\n"
        "    run(eval_imagenet_det.main, []),\n"
        "    run(eval_imagenet_loc.main, []),\n"
        f"    run(demo.main, [{str(tmp_path / 'nope.yaml')!r}]),\n"
        f"    run(demo.main, [{str(TRAIN_CONFIG)!r}, '--input', {str(tmp_path / 'none')!r}, '--output', 'out']),\n"
        f"    commands.main(['train', {str(TRAIN_CONFIG)!r}, 'solver.base_lrr=0.1']),\n"
        f"    commands.main(['eval', {str(TRAIN_CONFIG)!r}, '--weights', 'w.pth', 'solver.base_lrr=0.1']),\n"
        "]\n"
        "print(codes, 'torch' in sys.modules, 'torchvision' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "[2, 2, 2, 2, 2, 0, 0, 2, 2, 2, 2, 2, 2] False False", proc.stderr[-3000:]
    assert json.loads((tmp_path / "m.json").read_text())["bbox"]["AP"] == pytest.approx(100.0)
    assert (tmp_path / "analysis" / "analysis.json").is_file()


# --- eval_coco ---------------------------------------------------------------------------------------


def test_eval_coco_invalid_results_json_names_file_and_line_and_debug_shows_traceback(files):
    args = ["--gt", files / "gt.json", "--results", files / "results.json"]
    proc = _run("eval_coco.py", *args)
    _assert_user_error(proc, files / "results.json", "line 2")
    proc = _run("eval_coco.py", *args, "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and str(files / "results.json") in proc.stderr


def test_eval_coco_output_below_a_file_names_the_path(files):
    out = files / "a_file" / "metrics.json"
    proc = _run("eval_coco.py", "--gt", files / "gt.json", "--results", files / "good_results.json", "--output", out)
    _assert_user_error(proc, files / "a_file", "--output")


@pytest.mark.slow  # a tool process that imports torch (~7 s)
def test_eval_coco_damaged_checkpoint_names_it(files, tiny):
    proc = _run(
        "eval_coco.py",
        MASK_CONFIG,
        "--weights",
        files / "random.pth",
        *tiny,
        "model.num_classes=1",
        f"data.test={{json: {files / 'gt.json'}, image_root: {files}}}",
        f"output_dir={files / 'eval'}",
    )
    _assert_user_error(proc, files / "random.pth")


# --- train_det ---------------------------------------------------------------------------------------


def test_train_det_missing_config(tmp_path):
    _assert_user_error(_run("train_det.py", tmp_path / "nope.yaml"), tmp_path / "nope.yaml")


def test_train_det_bad_override_names_the_key():
    proc = _run("train_det.py", TRAIN_CONFIG, "solver.base_lrr=0.1")
    _assert_user_error(proc, "solver.base_lrr: unknown key; did you mean solver.base_lr?")


@pytest.mark.slow  # a tool process that imports torch (~7 s)
def test_train_det_output_dir_that_cannot_be_created(files, coco_root, tiny):
    out = files / "a_file" / "run"
    proc = _run(
        "train_det.py", TRAIN_CONFIG, *tiny, f"output_dir={out}", env_extra={"RESTRANSFER_DATASETS": str(coco_root)}
    )
    _assert_user_error(proc, files / "a_file", "output_dir=")


@pytest.mark.slow  # a tool process that imports torch (~7 s)
def test_train_det_missing_dataset_names_the_path_and_the_docs(tmp_path, tiny):
    proc = _run(
        "train_det.py",
        TRAIN_CONFIG,
        *tiny,
        f"output_dir={tmp_path / 'o'}",
        env_extra={"RESTRANSFER_DATASETS": str(tmp_path / "nowhere")},
    )
    _assert_user_error(
        proc, tmp_path / "nowhere" / "coco" / "annotations" / "instances_train2017.json", "datasets/README.md"
    )


@pytest.mark.slow  # a tool process that imports torch (~7 s)
def test_train_det_missing_weights_file(tmp_path, coco_root, tiny):
    proc = _run(
        "train_det.py",
        TRAIN_CONFIG,
        *tiny,
        f"model.weights={tmp_path / 'missing.pth'}",
        f"output_dir={tmp_path / 'o'}",
        env_extra={"RESTRANSFER_DATASETS": str(coco_root)},
    )
    _assert_user_error(proc, tmp_path / "missing.pth")


def test_train_det_resume_and_restart_exclude_each_other():
    proc = _run("train_det.py", TRAIN_CONFIG, "--resume", "--restart")
    assert proc.returncode == 2 and "--restart" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # a tool process that imports torch (~7 s)
def test_train_det_resume_from_a_damaged_checkpoint_names_it(files, tmp_path, tiny):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model_final.pth").write_bytes((files / "random.pth").read_bytes())
    proc = _run(
        "train_det.py",
        TRAIN_CONFIG,
        "--resume",
        *tiny,
        f"output_dir={out}",
        env_extra={"RESTRANSFER_DATASETS": str(tmp_path / "nowhere")},
    )
    _assert_user_error(proc, out / "model_final.pth")


# --- demo, export, benchmark -------------------------------------------------------------------------


@pytest.mark.slow  # a tool process that imports torch (~7 s)
def test_demo_missing_weights_and_missing_input(files, tmp_path, tiny):
    proc = _run(
        "demo.py",
        MASK_CONFIG,
        "--weights",
        tmp_path / "missing.pth",
        "--input",
        files / "a.png",
        "--output",
        tmp_path / "out",
        *tiny,
    )
    _assert_user_error(proc, tmp_path / "missing.pth")
    proc = _run("demo.py", MASK_CONFIG, "--input", tmp_path / "no_images", "--output", tmp_path / "out", *tiny)
    _assert_user_error(proc, tmp_path / "no_images")


@pytest.mark.slow  # a tool process that imports torch (~7 s)
def test_demo_output_below_a_file(files, tiny):
    proc = _run("demo.py", MASK_CONFIG, "--input", files / "a.png", "--output", files / "a_file" / "out", *tiny)
    _assert_user_error(proc, files / "a_file", "--output")


@pytest.mark.slow  # a tool process that imports torch (~7 s)
def test_export_damaged_checkpoint(files, tmp_path, tiny):
    proc = _run(
        "export.py",
        MASK_CONFIG,
        "--weights",
        files / "random.pth",
        "--format",
        "onnx",
        "--output",
        tmp_path / "m.onnx",
        "--size",
        64,
        64,
        *tiny,
    )
    _assert_user_error(proc, files / "random.pth")


@pytest.mark.slow  # a tool process that imports torch (~7 s)
def test_benchmark_bad_override():
    proc = _run("benchmark.py", MASK_CONFIG, "model.backbone.depht=18")
    _assert_user_error(proc, "model.backbone.depht")


# --- ImageNet tools ----------------------------------------------------------------------------------


def test_imagenet_tools_missing_files(tmp_path):
    missing = tmp_path / "map_det.txt"
    (tmp_path / "sub.txt").write_text("1 1 0.9 0 0 9 9\n")
    (tmp_path / "val.txt").write_text("a 1\n")
    (tmp_path / "ann").mkdir()
    proc = _run(
        "eval_imagenet_det.py",
        "--submission",
        tmp_path / "sub.txt",
        "--annotations",
        tmp_path / "ann",
        "--image-list",
        tmp_path / "val.txt",
        "--synsets",
        missing,
    )
    _assert_user_error(proc, missing)
    proc = _run(
        "eval_imagenet_loc.py",
        "--submission",
        tmp_path / "sub.txt",
        "--solution",
        tmp_path / "sol.csv",
        "--synsets",
        tmp_path / "LOC_synset_mapping.txt",
    )
    _assert_user_error(proc)
    assert str(tmp_path / "sol.csv") in proc.stderr or str(tmp_path / "LOC_synset_mapping.txt") in proc.stderr


# --- restransfer.cli in process ----------------------------------------------------------------------


def _raiser(exc):
    def main(argv):
        raise exc

    return main


def test_user_errors_exit_2_without_traceback(capsys):
    from restransfer.config import ConfigError

    assert cli.run_tool(_raiser(ConfigError("a.yaml:3: solver.lr: unknown key")), []) == 2
    err = capsys.readouterr().err
    assert err == "error: a.yaml:3: solver.lr: unknown key\n"


def test_disk_full_names_the_path_and_the_option(capsys):
    def main(argv):
        cli.note_output("output_dir", "/data/run")
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/model_final.pth")

    assert cli.run_tool(main, []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: /data/run/model_final.pth: no space left on the device")
    assert "free space" in err and "output_dir=PATH" in err


def test_write_error_without_a_file_name_names_the_recorded_output(capsys):
    def main(argv):  # what a write to an open file raises when the disk fills up
        cli.note_output("--output", "/data/metrics.json")
        raise OSError(errno.ENOSPC, "No space left on device")

    assert cli.run_tool(main, []) == 2
    err = capsys.readouterr().err
    assert "/data/metrics.json" in err and "--output PATH" in err


def test_read_only_file_system_says_to_write_elsewhere(capsys):
    assert cli.run_tool(_raiser(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out")), []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: /mnt/ro/out: the file system is read-only") and "elsewhere" in err


def test_eval_coco_disk_full_while_writing_metrics(files, tmp_path, monkeypatch, capsys):
    """The real tool, with the metrics writer failing as a full disk does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_coco_tool", TOOLS / "eval_coco.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "metrics.json"

    def full_disk(metrics, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("restransfer.commands.eval_coco.write_metrics", full_disk)  # the code the tool runs
    code = cli.run_tool(
        tool.main, ["--gt", str(files / "gt.json"), "--results", str(files / "good_results.json"), "--output", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: while writing to " + str(out)) and "free space" in err


def test_out_of_memory_names_the_setting(capsys):
    import torch

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert cli.run_tool(_raiser(oom), [], memory_hint=cli.EVAL_MEMORY_HINT) == 2
    assert "test.ims_per_batch" in capsys.readouterr().err
    cpu_oom = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
        "tried to allocate 400000000000000 bytes"
    )
    assert cli.run_tool(_raiser(cpu_oom), [], memory_hint=cli.TRAIN_MEMORY_HINT) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory") and "solver.ims_per_" in err and "input.min_size_train" in err


def test_internal_error_exit_1_and_debug_reraises(capsys):
    assert cli.run_tool(_raiser(KeyError("boxes")), []) == 1
    assert capsys.readouterr().err == (
        "error: internal error (KeyError: 'boxes'); rerun with --debug for the traceback\n"
    )
    with pytest.raises(KeyError):
        cli.run_tool(_raiser(KeyError("boxes")), ["--debug"])
    with pytest.raises(ValueError):
        cli.run_tool(_raiser(ValueError("bad")), ["x", "--debug"])


def test_interrupt_exit_130(capsys):
    assert cli.run_tool(_raiser(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("args", [["--help"], ["--lines"]])
def test_closed_output_pipe_ends_quietly_with_141(args):
    """``tool --help | head -1``: the reader of stdout is gone before the tool writes (here from the start,
    so every write fails): exit status 141, nothing on stderr, no traceback; an unrelated broken pipe is
    still reported as an error."""
    code = (
        "import sys\nfrom restransfer.cli import run_tool, training_parser\n"
        "def main(argv):\n"
        "    if argv == ['--lines']:\n"
        "        for i in range(100000):\n"
        "            print('line', i)\n"
        "    training_parser('t').parse_args(argv)\n"
        "sys.exit(run_tool(main))\n"
    )
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_broken_pipe_elsewhere_is_an_error(capsys):
    assert cli.run_tool(_raiser(BrokenPipeError(errno.EPIPE, "Broken pipe")), []) == 2
    assert capsys.readouterr().err.startswith("error: Broken pipe")


def test_debug_is_taken_off_the_command_line_and_shown_in_help(capsys):
    seen = []

    def main(argv):
        seen.append(list(argv))
        p = argparse.ArgumentParser()
        p.add_argument("rest", nargs="*")
        p.parse_args(argv)
        return 0

    assert cli.run_tool(main, ["a", "--debug", "b", "--", "--debug"]) == 0
    assert seen == [["a", "b", "--", "--debug"]]
    with pytest.raises(SystemExit) as stop:
        cli.run_tool(main, ["--help"])
    assert stop.value.code == 0 and "--debug" in capsys.readouterr().out


def test_every_user_error_name_resolves_to_an_exception_class():
    """USER_ERRORS names classes by module path so that checking costs no import; a renamed or moved class
    would silently stop counting as a user error, so each name must resolve."""
    import importlib

    for name in cli.USER_ERRORS:
        module, _, cls = name.rpartition(".")
        found = getattr(importlib.import_module(module), cls, None)
        assert isinstance(found, type) and issubclass(found, Exception), name
    classes = cli.user_error_classes()
    assert len(classes) == len(cli.USER_ERRORS)
    from restransfer.data.imagenet_loc import LocFormatError
    from restransfer.engine.checkpoint import CheckpointError

    for cls in (LocFormatError, CheckpointError, FileNotFoundError, PermissionError):
        assert issubclass(cls, classes), cls
    for cls in (ValueError, KeyError, TypeError, RuntimeError):  # bugs, not input errors
        assert not issubclass(cls, classes), cls


# --- input errors exit 2, anything else is an internal error (exit 1) --------------------------------


def _input_errors():
    """One instance of each of the toolkit's input-error types, as the toolkit raises them."""
    from restransfer.data.ilsvrc import IlsvrcFormatError
    from restransfer.data.image_io import CorruptImageError
    from restransfer.data.voc import VocFormatError
    from restransfer.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        DeviceError,
        NonFiniteLossError,
        OutputDirLocked,
        TrainingOutOfMemory,
        WeightsError,
    )

    return [
        ConfigError("a.yaml:3: solver.lr: unknown key; did you mean solver.base_lr?"),
        DataError("gt.json: annotations[4] (id 9, image 2): box [1, 1, 0, 5] has zero width"),
        IlsvrcFormatError("map_det.txt:3: expected '<WNID> <id> <name>'"),
        VocFormatError("Annotations/000001.xml:7: <xmin> is not a number"),
        WeightsError("timm://resnet99: no such timm model"),
        CheckpointError("run/model_final.pth: checksum mismatch"),
        OutputDirLocked("run: another run (pid 4242) uses this output_dir; wait for it or choose another"),
        NonFiniteLossError("iteration 12: the loss is nan (loss_rpn_box_reg=nan); last good checkpoint: none"),
        TrainingOutOfMemory(
            "iteration 3: out of memory on cpu computing 2 image(s) per forward/backward. Lower solver.ims_per_device"
        ),
        DeviceError("device=cuda: CUDA was requested but PyTorch sees no CUDA GPU here; set device=cpu"),
        CorruptImageError("images/a.png: not a decodable image (truncated PNG)"),
    ]


@pytest.mark.parametrize("error", _input_errors(), ids=lambda e: type(e).__name__)
def test_each_input_error_type_exits_2_with_its_message(error, capsys):
    assert cli.run_tool(_raiser(error), []) == 2
    assert capsys.readouterr().err == f"error: {error}\n"


@pytest.mark.parametrize(
    "error",
    [
        ValueError("boom"),
        KeyError("boxes"),
        TypeError("'NoneType' object is not subscriptable"),
        RuntimeError("expected scalar type Float but found Half"),
        IndexError("list index out of range"),
        AssertionError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_any_other_exception_is_an_internal_error(error, capsys):
    """A bare builtin exception is a bug whatever its type: the toolkit raises its own types for input."""
    assert cli.run_tool(_raiser(error), []) == 1
    what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    assert capsys.readouterr().err == f"error: internal error ({what}); rerun with --debug for the traceback\n"


def _load_tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_tool", TOOLS / f"{name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_a_bug_inside_a_tool_is_an_internal_error(files, monkeypatch, capsys):
    """eval_coco with valid files, and a check deep inside the evaluation failing as a bug would: exit 1 and
    the one line that says so, where a bad results file (the check's own DataError) is exit 2."""
    import restransfer.evaluation.coco as coco

    tool = _load_tool("eval_coco")
    argv = ["--gt", str(files / "gt.json"), "--results", str(files / "good_results.json")]

    def bug(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(coco, "check_results", bug)
    assert cli.run_tool(tool.main, argv) == 1
    err = capsys.readouterr().err
    assert err == "error: internal error (ValueError: boom); rerun with --debug for the traceback\n"
    with pytest.raises(ValueError, match="boom"):
        cli.run_tool(tool.main, argv + ["--debug"])
    monkeypatch.undo()
    bad = files / "bad_category.json"
    bad.write_text('[{"image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 20], "score": 1}]')
    assert cli.run_tool(tool.main, ["--gt", str(files / "gt.json"), "--results", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: results use category ids that the ground truth does not have")


def test_a_bug_inside_a_tool_process_exits_1_without_traceback(files):
    """The same as a user sees it: a tool process whose evaluation hits a KeyError."""
    code = (
        "import runpy, sys\n"
        "import restransfer.evaluation.coco as coco\n"
        "def bug(*args, **kwargs):\n"
        "    return {}['boxes']\n"
        "coco.check_results = bug\n"
        f"sys.argv = [{str(TOOLS / 'eval_coco.py')!r}] + sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    args = ["--gt", files / "gt.json", "--results", files / "good_results.json"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "RESTRANSFER_NO_PROGRESS": "1"},
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        "error: internal error (KeyError: 'boxes'); rerun with --debug for the traceback"
    ), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args), "--debug"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "RESTRANSFER_NO_PROGRESS": "1"},
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "KeyError: 'boxes'" in proc.stderr


def test_multi_line_messages_print_one_error_line(capsys):
    """A message that starts with a newline keeps its text without the blank start; a message carrying a
    traceback (as torch re-raises a worker's exception) prints its first line and the original error."""
    from restransfer.errors import DataError

    assert cli.run_tool(_raiser(DataError("\n\n  gt.json: 2 problems:\n  annotations[1]: no bbox\n")), []) == 2
    assert capsys.readouterr().err == "error: gt.json: 2 problems:\n  annotations[1]: no bbox\n"
    assert cli.run_tool(_raiser(DataError("\n")), []) == 2
    assert capsys.readouterr().err == "error: DataError\n"
    dump = (
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "/site-packages/torch/utils/data/_utils/worker.py", line 349, in _worker_loop\n'
        "    data = fetcher.fetch(index)\n"
        "restransfer.errors.DataError: shapes: none of the 3 images under /data can be decoded\n"
    )
    assert cli.run_tool(_raiser(DataError(dump)), []) == 2
    assert capsys.readouterr().err == (
        "error: Caught DataError in DataLoader worker process 0: DataError: shapes: "
        "none of the 3 images under /data can be decoded\n"
    )
    spawned = (
        "\n\n-- Process 0 terminated with the following error:\nTraceback (most recent call last):\n"
        '  File "train.py", line 3, in run\n    step()\nValueError: boom\n'
    )
    assert cli.run_tool(_raiser(RuntimeError(spawned)), []) == 1
    assert capsys.readouterr().err == (
        "error: internal error (RuntimeError: -- Process 0 terminated with the "
        "following error: ValueError: boom); rerun with --debug for the traceback\n"
    )


class _UnreadableImages:
    """A dataset whose every image fails as a damaged data set does (a DataError)."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        from restransfer.errors import DataError

        raise DataError(f"shapes: image {index} cannot be decoded")


def test_input_error_in_a_data_loader_worker_is_one_line_exit_2(capsys):
    from torch.utils.data import DataLoader

    def main(argv):
        next(iter(DataLoader(_UnreadableImages(), num_workers=1)))

    assert cli.run_tool(main, []) == 2
    assert capsys.readouterr().err == (
        "error: Caught DataError in DataLoader worker process 0: DataError: shapes: image 0 cannot be decoded\n"
    )


def _read_config(path):
    from restransfer.config import load_config

    load_config(path)


def _read_class_list(path):
    from restransfer.data.ilsvrc import read_synsets

    read_synsets(path)


def _read_image_list(path):
    from restransfer.data.imagenet_det import read_image_list

    read_image_list(path)


def _read_scores(path):
    from restransfer.evaluation.imagenet_loc_guesses import load_classifier_scores

    load_classifier_scores(path)


@pytest.mark.parametrize(
    "reader, name, content",
    [
        (_read_config, "c.yaml", b"model:\n  arch: mask_rcnn  # r\xe9sum\xe9\n"),
        (_read_class_list, "map_clsloc.txt", b"n01440764 1 tench\nn01443537 2 goldfish\xff\n"),
        (_read_image_list, "val.txt", b"ILSVRC2013_val_00000001 1\n\x89PNG\r\n"),
        (_read_scores, "scores.txt", b"0.1 0.9\nnot numbers\n"),
        (_read_scores, "scores.npy", b"\x93NUMPY but damaged"),
    ],
    ids=["config", "class list", "image list", "text scores", "npy scores"],
)
def test_unreadable_input_files_are_input_errors(tmp_path, reader, name, content, capsys):
    """Bytes that are not UTF-8, or a score file that is not a number matrix: Python and numpy raise a bare
    ValueError for these (UnicodeDecodeError, ...); the readers turn them into input errors naming the file."""
    path = tmp_path / name
    path.write_bytes(content)
    assert cli.run_tool(lambda argv: reader(path), []) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and "internal error" not in err, err
