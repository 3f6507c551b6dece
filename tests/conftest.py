"""What the test modules share: the tiny-config recipe, the synthetic shapes set (and its COCO layout), the
one-thread setting of the small-model modules. ``pytest -m "not slow"`` skips the end-to-end runs."""

import os
import shutil

import pytest
import torch

# the suite runs on 2 cores; keep intra-op threads bounded and results reproducible, and share the cores
# among pytest-xdist's workers when it runs them in parallel
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

from helpers import tiny_overrides  # noqa: E402  (after the thread setting above)


@pytest.fixture(name="tiny_overrides", scope="session")
def _tiny_overrides():
    """:func:`tiny_overrides`, for the test functions."""
    return tiny_overrides


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """One synthetic shapes set for the session: 8 train and 4 val images of 64 px, COCO jsons in
    ``annotations/{train,val}.json``."""
    from restransfer.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, num_train=8, num_val=4, image_size=64, seed=3)
    return root


@pytest.fixture(scope="session")
def coco_root(shapes, tmp_path_factory):
    """The shapes set in COCO's layout, ``<root>/coco/{annotations/instances_{train,val}2017.json,
    train2017/, val2017/}``: what ``configs/coco_*`` read with ``RESTRANSFER_DATASETS=<root>``."""
    root = tmp_path_factory.mktemp("datasets")
    (root / "coco" / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copytree(shapes / split, root / "coco" / f"{split}2017")
        shutil.copy(
            shapes / "annotations" / f"{split}.json", root / "coco" / "annotations" / f"instances_{split}2017.json"
        )
    return root


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests on one intra-op thread (``pytestmark = pytest.mark.usefixtures("single_thread")``).
    Small models gain nothing from a second thread but OpenMP barriers, and when the two cores are shared
    with other processes each barrier can wait for a scheduler time slice: a tiny Mask R-CNN forward takes
    1.5 s on two threads, 0.04 s on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
