"""The package as a user installs it: a wheel built from this tree, installed into a fresh virtual environment
outside the repository, runs ``restransfer configs`` and a 2-iteration demo training from an unrelated folder.

The new environment reaches torch and the other dependencies through a ``.pth`` line naming this environment's
site-packages (an installed copy of each would take minutes and the network); a folder named by a ``.pth`` line is
not scanned for ``.pth`` files of its own, so the editable install of this checkout stays out, and the wheel's
files, in the new environment's own site-packages, come first on the path."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env=None, timeout=None):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the package's sources (the build writes build/ and egg-info beside them)."""
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "restransfer", src / "restransfer", ignore=skip)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    # this environment's setuptools builds it (no download); without one, pip fetches the build requirements
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", out, src], src)
    (path,) = out.glob("restransfer-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh environment with the wheel installed; its ``bin`` folder."""
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", root], root)
    python = root / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "restransfer_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], root)
    return root / "bin"


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RESTRANSFER_DATASETS", "VIRTUAL_ENV")}
    return {**env, "RESTRANSFER_NO_PROGRESS": "1"}


def test_the_wheel_holds_the_configs_and_the_command(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for config in (
        "demo_shapes_mask_rcnn_r18",
        "coco_faster_rcnn_r101",
        "cifar10_resnet20",
        "torchvision/faster_rcnn_r50_fpn",
    ):
        assert f"restransfer/configs/{config}.yaml" in names
    assert len([n for n in names if n.startswith("restransfer/configs/")]) == len(list(REPO.glob("configs/**/*.yaml")))
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "restransfer = restransfer.commands:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_command_lists_configs_and_trains_the_demo(venv, tmp_path, tiny_overrides):
    work = tmp_path / "work"  # no configs/ and no package here: everything comes from the wheel
    work.mkdir()
    where = _run(
        [
            venv / "python",
            "-c",
            "import restransfer.commands, restransfer.model_zoo as z; "
            "print(restransfer.commands.__file__); print(z.CONFIG_DIR)",
        ],
        work,
        _env(),
    ).stdout.split()
    for path in where:
        assert Path(path).resolve().is_relative_to(venv.parent.resolve()), where

    listing = _run([venv / "restransfer", "configs"], work, _env()).stdout.splitlines()
    names = [line.split()[0] for line in listing]
    assert "demo_shapes_mask_rcnn_r18" in names and "torchvision/mask_rcnn_r50_fpn" in names
    assert any("synthetic shapes" in line for line in listing if line.startswith("demo_shapes_mask_rcnn_r18 "))

    # the demo config reads datasets/shapes under the working folder; a small set there saves generating 2200
    # images (the same generator, from the wheel)
    _run(
        [
            venv / "python",
            "-c",
            "from restransfer.data.shapes import generate_shapes; "
            "generate_shapes('datasets/shapes', num_train=8, num_val=4, image_size=64, seed=3)",
        ],
        work,
        _env(),
    )
    out = work / "out"
    proc = _run(
        [
            venv / "restransfer",
            "train",
            "demo_shapes_mask_rcnn_r18",
            "solver.max_iter=2",
            *tiny_overrides("training", "model.roi_heads.score_thresh=0.0"),
            f"output_dir={out}",
        ],
        work,
        _env(),
    )
    assert "bbox AP" in proc.stdout and "segm AP" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"bbox", "segm"} <= set(metrics) and "AP50" in metrics["bbox"]
    assert (out / "model_final.pth").is_file() and (out / "report.html").is_file()
