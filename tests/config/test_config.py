import pytest

from restransfer.config import ConfigError, dump_config, load_config

REQUIRED = [
    "model.backbone.depth",
    "model.backbone.style",
    "model.backbone.norm",
    "model.backbone.freeze_at",
    "model.backbone.weights",
    "model.arch",
    "model.head",
    "model.num_classes",
    "model.weights",
    "solver.base_lr",
    "solver.max_iter",
    "solver.ims_per_batch",
    "output_dir",
    "device",
    "data.train",
    "data.test",
    "input.min_size_train",
    "input.max_size_train",
    "input.min_size_test",
    "input.max_size_test",
    "test.precision",
]


def _write(path, text):
    path.write_text(text)
    return path


def test_required_keys_exist():
    from omegaconf import OmegaConf

    cfg = load_config()
    for key in REQUIRED:
        OmegaConf.select(cfg, key, throw_on_missing=True)  # raises for unknown keys in struct mode
        parent, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        assert leaf in (OmegaConf.select(cfg, parent) if parent else cfg), key


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "a.yaml", "model:\n  backbone:\n    depth: 101\n  num_classes: 3\nsolver:\n  steps: [10, 20]\n")
    _write(tmp_path / "b.yaml", "solver:\n  base_lr: 0.5\n")
    _write(tmp_path / "sub" / "c.yaml", "_base_: [../a.yaml, ../b.yaml]\nmodel:\n  arch: mask_rcnn\n")
    cfg = load_config(
        tmp_path / "sub" / "c.yaml",
        ["model.backbone.depth=50", "solver.steps=[1000,2000]", "data.test={json: a.json, image_root: imgs}"],
    )
    assert cfg.model.arch == "mask_rcnn" and cfg.model.num_classes == 3 and cfg.solver.base_lr == 0.5
    assert cfg.model.backbone.depth == 50 and list(cfg.solver.steps) == [1000, 2000]
    assert cfg.data.test.json == "a.json" and cfg.data.test.format == "coco"
    assert cfg.model.backbone.style == "pytorch"  # untouched defaults stay


def test_unknown_key_names_file_line_and_closest(tmp_path):
    p = _write(tmp_path / "x.yaml", "model:\n  backbone:\n    dept: 50\n")
    with pytest.raises(
        ConfigError, match=r"x\.yaml, line 3: model\.backbone\.dept: unknown key; did you mean model\.backbone\.depth\?"
    ):
        load_config(p)
    with pytest.raises(ConfigError, match=r"solver\.base_lrr: unknown key; did you mean solver\.base_lr\?"):
        load_config(None, ["solver.base_lrr=0.1"])
    p2 = _write(tmp_path / "y.yaml", "data:\n  train:\n    - {json: a.json, image_rot: b}\n")
    with pytest.raises(ConfigError, match=r"image_rot: unknown key; did you mean .*image_root"):
        load_config(p2)


def test_wrong_types_and_values(tmp_path):
    with pytest.raises(ConfigError, match="model.backbone.depth"):
        load_config(None, ["model.backbone.depth=abc"])
    with pytest.raises(ConfigError, match="model.backbone.depth: 42 is not one of 18, 34, 50, 101, 152"):
        load_config(None, ["model.backbone.depth=42"])
    p = _write(tmp_path / "t.yaml", "solver:\n  max_iter: [1, 2]\n")
    with pytest.raises(ConfigError, match="t.yaml.*solver.max_iter"):
        load_config(p)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["model.arch"])


def test_missing_file_and_base_cycle(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    _write(tmp_path / "p.yaml", "_base_: q.yaml\n")
    _write(tmp_path / "q.yaml", "_base_: p.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "p.yaml")


def test_dump_and_reload_identical(tmp_path):
    cfg = load_config(
        None,
        ["model.backbone.depth=18", "data.train=[{json: t.json, image_root: i}]", "model.pixel_mean=[1.0, 2.0, 3.0]"],
    )
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    assert load_config(out) == cfg
