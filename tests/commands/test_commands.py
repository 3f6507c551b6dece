"""The ``restransfer`` command: its subcommands, the tool each config picks, and the scripts in tools/ as thin
entry points over the same code."""

import importlib.util
import json
from pathlib import Path

import pytest

from restransfer import commands
from restransfer.commands import (
    analyze_coco,
    demo,
    eval_cls,
    eval_coco,
    eval_imagenet_det,
    eval_imagenet_loc,
    evaluate,
    export,
    train,
    train_cls,
    train_det,
)
from restransfer.errors import ConfigError
from restransfer.model_zoo import config_names

REPO = Path(__file__).resolve().parents[2]
KEEP_ALL = ["model.roi_heads.score_thresh=0.0"]


def test_configs_lists_every_packaged_config_with_its_summary(capsys):
    assert commands.main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == config_names()
    assert any(line.startswith("coco_faster_rcnn_r101 ") and "ResNet paper's COCO system" in line for line in lines)


def test_configs_prints_a_config_or_its_path(capsys):
    assert commands.main(["configs", "torchvision/mask_rcnn_r50_fpn"]) == 0
    assert capsys.readouterr().out == (REPO / "configs" / "torchvision" / "mask_rcnn_r50_fpn.yaml").read_text()
    assert commands.main(["configs", "--path", "demo_shapes_mask_rcnn_r18"]) == 0
    assert Path(capsys.readouterr().out.strip()) == REPO / "restransfer" / "configs" / "demo_shapes_mask_rcnn_r18.yaml"
    assert commands.main(["configs", "demo_shapes_mask_rcnn_r81"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "did you mean demo_shapes_mask_rcnn_r18" in err


def test_usage_unknown_command_and_version(capsys):
    assert commands.main([]) == 2
    assert "usage: restransfer" in capsys.readouterr().err
    assert commands.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "eval", "predict", "export", "analyze", "configs"))
    assert commands.main(["trian", "x.yaml"]) == 2
    assert "did you mean train?" in capsys.readouterr().err
    assert commands.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("restransfer ")


@pytest.mark.parametrize(
    "config, tool",
    [
        ("coco_faster_rcnn_r101", train_det),
        ("demo_shapes_mask_rcnn_r18", train_det),
        ("torchvision/faster_rcnn_r50_fpn", train_det),
        ("cifar10_plain20", train_cls),
        ("demo_transfer_cls_r18", train_cls),
        ("imagenet_cls_r101", train_cls),
    ],
)
def test_train_picks_the_tool_by_the_config(config, tool):
    assert train.select(["--resume", config, "solver.max_iter=5"]) is tool
    assert train.select([str(REPO / "configs" / f"{config}.yaml")]) is tool


def test_a_model_arch_override_or_a_user_file_decides_too(tmp_path):
    (tmp_path / "mine.yaml").write_text("_base_: configs/cifar10_resnet20.yaml\nmodel:\n  depth: 32\n")
    assert train.config_kind(tmp_path / "mine.yaml") == "classification"
    assert train.config_kind("demo_transfer_cls_r18", ["model.arch=cifar"]) == "classification"
    assert train.config_kind("coco_faster_rcnn_r101", ["model.arch=mask_rcnn"]) == "detection"


@pytest.mark.parametrize(
    "config, overrides, tool",
    [
        ("coco_mask_rcnn_r101_fpn", [], eval_coco),
        ("imagenet_det_faster_rcnn_r101", [], eval_imagenet_det),
        ("imagenet_loc_faster_rcnn_r101", [], eval_imagenet_loc),
        ("cifar10_resnet56", [], eval_cls),
        ("demo_voc_shapes", [], evaluate),  # PASCAL VOC: the registered evaluator through engine/evaluate
        ("coco_faster_rcnn_r101", ["test.evaluator=voc"], evaluate),  # the config's evaluator, not its format
    ],
)
def test_eval_picks_the_protocol_of_the_test_set(config, overrides, tool):
    assert evaluate.select([config, "--weights", "w.pth", *overrides]) is tool


def test_eval_needs_a_config_first_and_a_test_set(capsys):
    assert commands.main(["eval", "--weights", "w.pth", "coco_faster_rcnn_r101"]) == 2
    assert "give CONFIG first" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="data.test is not set"):
        evaluate.select(["coco_faster_rcnn_r101", "--weights", "w.pth", "data.test=null"])
    assert commands.main(["eval", "coco_faster_rcnn_r101", "--weights", "w.pth", "data.test=null"]) == 2
    assert capsys.readouterr().err.startswith("error: coco_faster_rcnn_r101: data.test is not set")


def test_the_command_runs_the_chosen_tool_with_the_same_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(train_cls, "main", lambda argv: calls.append(("train_cls", argv)) or 0)
    monkeypatch.setattr(eval_imagenet_loc, "main", lambda argv: calls.append(("eval_loc", argv)) or 0)
    monkeypatch.setattr(export, "main", lambda argv: calls.append(("export", argv)) or 0)
    assert commands.main(["train", "cifar10_resnet20", "--restart", "solver.max_iter=1"]) == 0
    assert commands.main(["eval", "imagenet_loc_faster_rcnn_r101", "--weights", "w.pth", "--mode", "gt_class"]) == 0
    assert commands.main(["--debug", "export", "coco_faster_rcnn_r101", "--format", "onnx"]) == 0
    assert calls == [
        ("train_cls", ["cifar10_resnet20", "--restart", "solver.max_iter=1"]),
        ("eval_loc", ["imagenet_loc_faster_rcnn_r101", "--weights", "w.pth", "--mode", "gt_class"]),
        ("export", ["coco_faster_rcnn_r101", "--format", "onnx"]),
    ]  # run_tool took --debug


@pytest.mark.parametrize(
    "tool, module",
    [
        ("train_det", train_det),
        ("train_cls", train_cls),
        ("eval_coco", eval_coco),
        ("eval_imagenet_det", eval_imagenet_det),
        ("eval_imagenet_loc", eval_imagenet_loc),
        ("eval_cls", eval_cls),
        ("demo", demo),
        ("export", export),
        ("analyze_coco", analyze_coco),
    ],
)
def test_each_tool_script_runs_the_package_code(tool, module):
    spec = importlib.util.spec_from_file_location(f"{tool}_script", REPO / "tools" / f"{tool}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main is module.main and script.MEMORY_HINT == module.MEMORY_HINT
    assert len((REPO / "tools" / f"{tool}.py").read_text().splitlines()) < 25  # no logic of its own


@pytest.mark.slow
def test_train_then_eval_through_the_command(shapes, tiny_overrides, tmp_path, capsys):
    """A packaged config by name on a small set: train, then ``restransfer eval`` (COCO's tool) and the generic
    protocol run agree on the checkpoint's AP."""
    data = [
        f"data.train=[{{json: {shapes / 'annotations' / 'train.json'}, image_root: {shapes / 'train'}}}]",
        f"data.test={{json: {shapes / 'annotations' / 'val.json'}, image_root: {shapes / 'val'}}}",
    ]
    tiny = tiny_overrides("training", *KEEP_ALL) + data
    out = tmp_path / "train"
    assert commands.main(["train", "demo_shapes_mask_rcnn_r18", *tiny, f"output_dir={out}"]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    weights = str(out / "model_final.pth")
    assert (
        commands.main(
            ["eval", "demo_shapes_mask_rcnn_r18", "--weights", weights, *tiny, f"output_dir={tmp_path / 'eval'}"]
        )
        == 0
    )
    assert "bbox AP" in capsys.readouterr().out
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (
        evaluate.main_protocol(
            ["demo_shapes_mask_rcnn_r18", "--weights", weights, *tiny, f"output_dir={tmp_path / 'protocol'}"]
        )
        == 0
    )
    generic = json.loads((tmp_path / "protocol" / "metrics.json").read_text())
    for metrics in (again, generic):
        for kind in ("bbox", "segm"):
            assert metrics[kind]["AP"] == pytest.approx(trained[kind]["AP"], nan_ok=True)
    assert (tmp_path / "protocol" / "report.html").is_file()


def test_every_deferred_module_of_a_command_has_what_the_command_uses():
    """The commands name the layers that run them as strings (cli.deferred_module), which neither the import
    contract nor an import at start-up checks: each named module must import and hold every attribute the
    command's code reads from it, including paths no other test reaches."""
    import ast

    from restransfer.cli import deferred_module

    declared, used = set(), set()
    for path in sorted(Path(commands.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        deferred = {
            node.targets[0].id: node.value.args[0].value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == deferred_module.__name__
        }
        declared |= {(path.name, name, module) for name, module in deferred.items()}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in deferred:
                module = importlib.import_module(deferred[node.value.id])
                assert hasattr(module, node.attr), f"{path.name}: {deferred[node.value.id]} has no {node.attr}"
                used.add((path.name, node.value.id))
    assert len(used) >= 8
    for file, name, module in declared:
        if (file, name) not in used:  # a tool handed to the dispatcher (train_cls, eval_cls), which runs its main
            assert callable(importlib.import_module(module).main), (file, name)
