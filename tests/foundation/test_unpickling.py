"""Crafted pickles never run code, through any entry point that reads weights.

Each payload resolves a dotted name from a module the unpickler admits (pickle protocol 4 resolves
``module`` + ``a.b.c`` attribute by attribute) and, if that resolution were allowed, calls
``<module>.__builtins__.get("exec")`` on code that creates a marker file. The marker must never appear.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny_detectors import REPO, tiny_config, write_config

from restransfer import Predictor
from restransfer.backbone import ResNet
from restransfer.backbone.weights import WeightsError, load_pretrained, safe_load_pickle
from restransfer.models import build_model

# every module the unpickler admits a name from, and the module of the original exploit
MODULES = [
    "numpy.dtypes",
    "numpy",
    "collections",
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy._core.numeric",
    "builtins",
    "__builtin__",
    "_codecs",
]


def _unicode(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"\x8c" + struct.pack("<B", len(b)) + b  # SHORT_BINUNICODE


def crafted_pickle(module: str, marker: Path, opcode: str) -> bytes:
    """Protocol-4 bytes that, if resolved naively, run ``open(marker, 'w')`` through ``exec``."""
    name = "__builtins__.get"
    if opcode == "GLOBAL":
        resolve = b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    else:
        resolve = _unicode(module) + _unicode(name) + b"\x93"  # STACK_GLOBAL
    code = f"open({str(marker)!r}, 'w').write('ran')"
    return (
        b"\x80\x04"
        + resolve
        + _unicode("exec")
        + b"\x85"
        + b"R"  # get("exec")
        + _unicode(code)
        + b"\x85"
        + b"R"  # exec(code)
        + b"."
    )


def _payloads(tmp_path: Path, modules=MODULES):
    marker = tmp_path / "marker"
    for module in modules:
        for opcode in ("GLOBAL", "STACK_GLOBAL"):
            for suffix in (".pkl", ".pth"):
                path = tmp_path / f"{module}-{opcode}{suffix}"
                path.write_bytes(crafted_pickle(module, marker, opcode))
                yield path, marker


# the detector entry points all read files through the same reader as load_pretrained (tested on every
# module above); building a detector per payload is slow, so they get the original exploit's module
ENTRY_MODULES = ["numpy.dtypes"]


def test_the_payload_runs_under_a_plain_unpickler(tmp_path):
    """The payloads are real: an unrestricted unpickler runs them (so the tests below can fail)."""
    marker = tmp_path / "marker"
    for opcode in ("GLOBAL", "STACK_GLOBAL"):
        pickle.loads(crafted_pickle("numpy", marker, opcode))
        assert marker.read_text() == "ran"
        marker.unlink()


def test_safe_load_pickle_and_load_pretrained_refuse_every_payload(tmp_path):
    model = ResNet(18)
    for path, marker in _payloads(tmp_path):
        with pytest.raises(WeightsError, match=r"__builtins__\.get.*not allowed"):
            safe_load_pickle(path)
        with pytest.raises(WeightsError, match=str(path.name)):
            load_pretrained(model, str(path))
        assert not marker.exists(), path


def test_model_weights_and_backbone_weights_refuse_payloads(tmp_path):
    for path, marker in _payloads(tmp_path, ENTRY_MODULES):
        with pytest.raises(WeightsError, match=r"not allowed"):
            build_model(tiny_config(f"model.backbone.weights={path}"))
        with pytest.raises(WeightsError, match=r"not allowed"):
            build_model(tiny_config(f"model.weights={path}"))
        assert not marker.exists(), path


def test_predictor_refuses_payloads(tmp_path):
    config = write_config(tmp_path)
    for path, marker in _payloads(tmp_path, ENTRY_MODULES):
        with pytest.raises(WeightsError, match=r"not allowed"):
            Predictor(str(config), weights=str(path), device="cpu")
        assert not marker.exists(), path


@pytest.mark.slow
def test_eval_coco_tool_refuses_a_payload(shapes, tmp_path):
    config = write_config(
        tmp_path,
        [f"data.test={{json: {shapes}/annotations/val.json, image_root: {shapes}/val}}", f"output_dir={tmp_path}/out"],
    )
    marker = tmp_path / "marker"
    for module, opcode, suffix in (("numpy.dtypes", "STACK_GLOBAL", ".pth"), ("numpy", "GLOBAL", ".pkl")):
        path = tmp_path / f"evil{suffix}"
        path.write_bytes(crafted_pickle(module, marker, opcode))
        proc = subprocess.run(
            [sys.executable, str(REPO / "tools" / "eval_coco.py"), str(config), "--weights", str(path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "RESTRANSFER_NO_PROGRESS": "1"},
        )
        assert proc.returncode != 0
        assert "not allowed" in proc.stderr and str(path) in proc.stderr
        assert not marker.exists()


def test_msra_style_pickles_still_load(tmp_path):
    """What real weight pickles hold still loads, at every protocol: arrays, numpy scalars, sets, slices,
    and python-2 style byte strings (``_codecs.encode(str, 'latin1')``)."""
    blobs = {
        "conv1_w": np.arange(6, dtype=np.float32).reshape(1, 6),
        "n": np.int64(3),
        "s": {1, 2},
        "f": frozenset([3]),
        "sl": slice(1, 2),
        "b": b"\x00\xffbytes",
    }
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(blobs, protocol=protocol))
        out = safe_load_pickle(path)
        np.testing.assert_array_equal(out["conv1_w"], blobs["conv1_w"])
        assert out["n"] == 3 and out["s"] == {1, 2} and out["f"] == frozenset([3]) and out["sl"] == slice(1, 2)
        assert out["b"] == blobs["b"]


def test_codecs_encode_only_as_python2_pickles_use_it(tmp_path):
    path = tmp_path / "codec.pkl"
    # _codecs.encode("x", "rot13"): not what a byte string needs, refused
    path.write_bytes(b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(WeightsError, match="latin1"):
        safe_load_pickle(path)


def test_object_arrays_are_not_weights(tmp_path):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"conv1_w": np.array([{"a": 1}], dtype=object)}, protocol=2))
    with pytest.raises(WeightsError, match="conv1_w.*dtype object"):
        load_pretrained(ResNet(18), str(path))


def test_checkpoint_payload_with_torch_zip_is_refused(tmp_path):
    """A torch zip checkpoint whose data.pkl is a payload goes through torch's weights_only unpickler."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1)}, path)
    import zipfile

    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        contents = {n: z.read(n) for n in names}
    data_pkl = next(n for n in names if n.endswith("data.pkl"))
    contents[data_pkl] = crafted_pickle("numpy.dtypes", marker, "STACK_GLOBAL")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n in names:
            z.writestr(n, contents[n])
    with pytest.raises(WeightsError):
        load_pretrained(ResNet(18), str(path))
    with pytest.raises(WeightsError):
        build_model(tiny_config(f"model.weights={path}"))
    assert not marker.exists()
