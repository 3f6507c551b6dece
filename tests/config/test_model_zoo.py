"""Packaged configs: addressed by name or by path, ``_base_`` across both, and the errors for unknown names."""

from pathlib import Path

import pytest

from restransfer.classification.config import load_cls_config
from restransfer.config import load_config
from restransfer.errors import ConfigError
from restransfer.model_zoo import CONFIG_DIR, config_names, config_summary, find_config, get_config_file, list_configs
from restransfer.yaml_config import read_config_tree

REPO = Path(__file__).resolve().parents[2]


def test_the_configs_live_in_the_package_and_the_clone_folder_links_there():
    assert CONFIG_DIR == REPO / "restransfer" / "configs"
    assert (REPO / "configs").resolve() == CONFIG_DIR
    names = config_names()
    for name in (
        "coco_faster_rcnn_r101",
        "demo_shapes_mask_rcnn_r18",
        "cifar10_resnet20",
        "torchvision/faster_rcnn_r50_fpn",
        "torchvision/mask_rcnn_r50_fpn",
    ):
        assert name in names
    # every file of the folder is listed once, the sub-folder's after the top level's
    assert len(names) == len(set(names)) == len(list(CONFIG_DIR.rglob("*.yaml")))
    assert names.index("torchvision/faster_rcnn_r50_fpn") > names.index("voc_faster_rcnn_r101")


def test_a_name_a_clone_path_and_a_file_name_find_the_same_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the packaged file is the fallback
    expected = CONFIG_DIR / "coco_faster_rcnn_r101.yaml"
    for given in ("coco_faster_rcnn_r101", "coco_faster_rcnn_r101.yaml", "configs/coco_faster_rcnn_r101.yaml"):
        assert find_config(given).resolve() == expected
    assert get_config_file("torchvision/mask_rcnn_r50_fpn") == CONFIG_DIR / "torchvision" / "mask_rcnn_r50_fpn.yaml"
    assert load_config("demo_shapes_mask_rcnn_r18").model.backbone.depth == 18
    assert load_config("torchvision/mask_rcnn_r50_fpn").model.arch == "mask_rcnn"  # its _base_ is relative
    assert load_cls_config("cifar10_plain20").model.residual is False


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "coco_faster_rcnn_r101.yaml").write_text("model:\n  arch: mask_rcnn\n")
    assert load_config("configs/coco_faster_rcnn_r101.yaml").model.arch == "mask_rcnn"
    assert load_config("coco_faster_rcnn_r101").model.arch == "faster_rcnn"  # no file of that name here


@pytest.mark.parametrize(
    "base", ["coco_mask_rcnn_r101_fpn", "coco_mask_rcnn_r101_fpn.yaml", "configs/coco_mask_rcnn_r101_fpn.yaml"]
)
def test_a_user_file_outside_the_clone_bases_on_a_packaged_config(tmp_path, base):
    mine = tmp_path / "elsewhere" / "my_parts.yaml"
    mine.parent.mkdir()
    mine.write_text(f"_base_: {base}\nmodel:\n  num_classes: 3\nsolver: {{base_lr: 0.01, max_iter: 50, steps: [40]}}\n")
    cfg = load_config(mine)
    packaged = load_config("coco_mask_rcnn_r101_fpn")
    assert cfg.model.num_classes == 3 and cfg.solver.max_iter == 50
    assert cfg.model.arch == "mask_rcnn" and cfg.model.head == packaged.model.head == "fpn"
    assert cfg.input.min_size_train == packaged.input.min_size_train
    assert read_config_tree(mine)["model"]["arch"] == "mask_rcnn"


def test_unknown_names_are_config_errors_with_close_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"not found.*did you mean coco_faster_rcnn_r101\b.*restransfer configs"):
        load_config("coco_faster_rcnn_r10")
    with pytest.raises(ConfigError, match="no packaged config of that name.*restransfer configs"):
        get_config_file("nothing_like_any_config")
    (tmp_path / "child.yaml").write_text("_base_: demo_shapes_mask_rcnn_r81\n")
    with pytest.raises(ConfigError, match=r"_base_ of .*child.yaml.*did you mean demo_shapes_mask_rcnn_r18"):
        load_config(tmp_path / "child.yaml")
    with pytest.raises(ConfigError, match="not found") as e:
        load_config(tmp_path / "absent.yaml")
    assert "packaged" not in str(e.value).split("not found")[0]


def test_every_packaged_config_has_a_one_line_summary():
    entries = list_configs()
    assert [e.name for e in entries] == config_names()
    for e in entries:
        assert e.summary and "\n" not in e.summary, e.name
    summaries = {e.name: e.summary for e in entries}
    # the description key when the file has one, else the first sentence of its comment up to a colon
    assert summaries["demo_shapes_mask_rcnn_r18"] == "Mask R-CNN R18-FPN from scratch on synthetic shapes (CPU demo)"
    assert summaries["cifar10_resnet20"] == "ResNet-20 on CIFAR-10 (He et al. 2015, section 4.2)"
    assert summaries["torchvision/faster_rcnn_r50_fpn"] == "torchvision's fasterrcnn_resnet50_fpn (v1)"


def test_summary_of_a_file_without_comment_or_description(tmp_path):
    (tmp_path / "bare.yaml").write_text("model:\n  arch: faster_rcnn\n")
    assert config_summary(tmp_path / "bare.yaml") == ""
