"""Checkpoints are verified end to end, and no checkpoint can hang a loader or flood memory.

Every byte counts: the zip's CRC-32 of each member is checked before ``torch.load``, and the checksum
covers the whole payload (tensors and every other entry), so a change that keeps the zip valid is caught
too. Hostile files are built by hand here (zipfile, pickle opcodes): a list sharing itself 60 levels deep
(2^60 paths), a list containing itself, 5000 nested dicts (deeper than Python's recursion limit), a
DEFLATE-compressed record of 128 MiB in a file of ~130 KB, members whose headers disagree or overlap.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch
from helpers.tiny_detectors import REPO, tiny_config, write_config

from restransfer import Predictor
from restransfer.backbone import ResNet
from restransfer.backbone.weights import load_pretrained, read_state_dict, read_weights
from restransfer.engine.checkpoint import Checkpointer, atomic_torch_save, rng_state
from restransfer.errors import CheckpointError
from restransfer.models import build_model
from restransfer.models.checkpoint import read_detector_checkpoint
from restransfer.predictor import checkpoint_class_names
from restransfer.serialization import (
    CHECKSUM_KEY,
    check_torch_archive,
    load_torch_file,
    payload_checksum,
    tensors_checksum,
)


def _state(iteration: int) -> dict:
    """What the engine saves, small: weights (one tied), optimizer, scheduler, RNG, config, names."""
    torch.manual_seed(0)
    w = torch.arange(4096.0).reshape(64, 64)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    return {
        "model": {"w": w, "w_t": w.t(), **net.state_dict()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": None,
        "iteration": iteration,
        "rng": rng_state(),
        "config": {"solver": {"base_lr": 0.02, "steps": [3, 4]}, "model": {"arch": "faster_rcnn"}},
        "class_names": ["circle", "square"],
        "pixel_convention": {"channel_order": "RGB"},
        "best": None,
    }


def _members(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _rewrite(path: Path, members: dict) -> None:
    """A fresh, valid zip (CRCs recomputed) holding ``members``: only the payload checksum can tell."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)


def _data_span(path: Path, suffix: str) -> tuple:
    """(offset, size) of a member's data inside the file."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _flip(path: Path, offset: int, new: int) -> None:
    raw = bytearray(path.read_bytes())
    assert raw[offset] != new
    raw[offset] = new
    path.write_bytes(bytes(raw))


def _flip_iteration(path: Path, old: int = 15, new: int = 3) -> None:
    """Change the pickled ``iteration`` in data.pkl (BININT1 after the key), one byte."""
    start, size = _data_span(path, "data.pkl")
    found = re.search(rb"X\t\0\0\0iteration(q.|r....)?K" + bytes([old]), path.read_bytes()[start : start + size], re.S)
    assert found
    _flip(path, start + found.end() - 1, new)


def _readers():
    """Every way a checkpoint is read: --resume / Checkpointer, model.weights, backbone weights, classifiers."""
    return {
        "Checkpointer.load": Checkpointer.load,
        "read_detector_checkpoint": read_detector_checkpoint,
        "read_state_dict": read_state_dict,
        "read_weights": read_weights,
        "load_pretrained": lambda p: load_pretrained(ResNet(18), str(p)),
    }


def _refused_by_every_reader(path: Path, match: str) -> None:
    for name, read in _readers().items():
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match=match) as e:
            read(path)
        assert str(path) in str(e.value), (name, e.value)
        assert time.perf_counter() - start < 5, name


# ------------------------------------------------------------------------------------- flipped bytes


def test_round_trip_of_a_full_checkpoint(tmp_path):
    path = Checkpointer(tmp_path).save("model_0000015.pth", _state(15))
    state = Checkpointer.load(path)
    assert state["iteration"] == 15 and state[CHECKSUM_KEY].startswith("payload-sha256-v2:")
    assert torch.equal(state["model"]["w_t"], torch.arange(4096.0).reshape(64, 64).t())


def test_the_checksum_covers_every_entry():
    base = _state(15)
    ref = payload_checksum(base)
    assert payload_checksum(_state(15)) == ref  # deterministic
    changes = [("iteration", 3), ("scaler", {}), ("class_names", ["circle", "squarE"]), ("best", 0.0)]
    for key, value in changes:
        assert payload_checksum({**base, key: value}) != ref, key
    for mutate in (
        lambda s: s["optimizer"]["param_groups"][0].update(lr=0.2),
        lambda s: s["optimizer"]["state"][0]["momentum_buffer"].add_(1e-3),
        lambda s: s["scheduler"].update(last_epoch=7),
        lambda s: s["rng"]["python"][1].__setitem__(5, 0),
        lambda s: s["config"]["solver"]["steps"].append(5),
        lambda s: s["model"].__setitem__("w_t", s["model"]["w"].t().contiguous()),
    ):  # untied
        state = _state(15)
        mutate(state)
        assert payload_checksum(state) != ref


def test_a_flipped_byte_in_data_pkl_is_detected(tmp_path):
    path = Checkpointer(tmp_path).save("model_0000015.pth", _state(15))
    _flip_iteration(path)
    _refused_by_every_reader(path, r"checksum mismatch: zip member '[^']*data\.pkl' fails its CRC-32")


def test_a_flipped_byte_in_a_tensor_record_is_detected(tmp_path):
    path = Checkpointer(tmp_path).save("model_0000015.pth", _state(15))
    start, size = _data_span(path, "/data/0")
    _flip(path, start + size // 2, path.read_bytes()[start + size // 2] ^ 0x10)
    _refused_by_every_reader(path, r"checksum mismatch: zip member '[^']*/data/0' fails its CRC-32")


def test_a_change_with_valid_crcs_is_caught_by_the_payload_checksum(tmp_path):
    """Rewritten with fresh CRCs, the zip is valid and torch loads it: the checksum still tells."""
    for i, edit in enumerate(
        (
            lambda b: re.sub(rb"(iteration(q.)?K)\x0f", lambda m: m[1] + b"\x03", b, flags=re.S),
            lambda b: b.replace(b"faster_rcnn", b"faster_rcnX"),
        )
    ):
        path = Checkpointer(tmp_path / str(i)).save("model_0000015.pth", _state(15))
        members = _members(path)
        pkl = next(n for n in members if n.endswith("data.pkl"))
        assert edit(members[pkl]) != members[pkl]
        members[pkl] = edit(members[pkl])
        _rewrite(path, members)
        torch.load(path, weights_only=True)  # the archive itself reads
        _refused_by_every_reader(path, r"checksum mismatch: the file's contents")
    path = Checkpointer(tmp_path / "t").save("model_0000015.pth", _state(15))
    members = _members(path)
    record = next(n for n in members if n.endswith("/data/0"))
    members[record] = members[record][:100] + bytes([members[record][100] ^ 1]) + members[record][101:]
    _rewrite(path, members)
    _refused_by_every_reader(path, r"checksum mismatch: the file's contents")


def test_resume_passes_over_damaged_checkpoints_to_the_newest_intact(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path)
    for it in (5, 10, 15):
        ckpt.save(f"model_{it:07d}.pth", _state(it), periodic=True)
    flipped = tmp_path / "model_0000015.pth"
    _flip_iteration(flipped)
    hostile = tmp_path / "model_0000010.pth"  # a list containing itself
    hostile.write_bytes(_checkpoint_with(tmp_path, [("x", SELF_LIST)]).read_bytes())
    with caplog.at_level(logging.WARNING):
        path, state = ckpt.newest_intact()
    assert path.name == "model_0000005.pth" and state["iteration"] == 5
    log = caplog.text
    assert f"skipping damaged checkpoint: {flipped}: checksum mismatch: zip member" in log
    assert f"skipping damaged checkpoint: {hostile}: refused: it holds a container that contains itself" in log
    assert "passed over 2 damaged" in log


# ---------------------------------------------------------------------------------- hostile structures


def _unicode(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _checkpoint_with(tmp_path: Path, extra: list, checksum: str | None = None, name: str = "hostile.pth") -> Path:
    """A torch zip whose data.pkl is ``{"iteration": 1, "model": {}, <extra key: raw opcodes>...}``."""
    path = tmp_path / name
    torch.save({"iteration": 1}, path)
    members = _members(path)
    entries = [(_unicode("iteration"), b"K\x01"), (_unicode("model"), b"}")]
    entries += [(_unicode(k), v) for k, v in extra]
    if checksum is not None:
        entries.append((_unicode(CHECKSUM_KEY), _unicode(checksum)))
    pkl = b"\x80\x02}(" + b"".join(k + v for k, v in entries) + b"u."
    members[next(n for n in members if n.endswith("data.pkl"))] = pkl
    _rewrite(path, members)
    return path


def _put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)  # LONG_BINPUT


def _get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)  # LONG_BINGET


def _shared_list(levels: int) -> bytes:
    """x0 = []; x(i+1) = [x(i), x(i)]: 2^levels paths through levels + 1 lists, all in one outer list
    (which keeps the opcodes to those torch's weights-only unpickler reads: no POP)."""
    ops = b"](" + b"]" + _put(0)
    for i in range(levels):
        ops += b"](" + _get(i) + _get(i) + b"e" + _put(i + 1)
    return ops + b"e"


SELF_LIST = b"]" + _put(9) + _get(9) + b"a"  # l = []; l.append(l)


def _nested_dicts(levels: int) -> bytes:
    """{"a": {"a": ... {}}}, ``levels`` deep."""
    return (b"}" + _unicode("a")) * (levels - 1) + b"}" + b"s" * (levels - 1)


HOSTILE = {
    "shared-60": (_shared_list(60), r"more than 1000000 values outside its tensors, counting every place"),
    "self-list": (SELF_LIST, r"contains itself"),
    "dicts-5000": (_nested_dicts(5000), r"more than 32 levels deep"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("checksum", [None, "0" * 64, "payload-sha256-v2:" + "0" * 64])
def test_hostile_structures_fail_fast_in_every_reader(tmp_path, kind, checksum):
    ops, match = HOSTILE[kind]
    path = _checkpoint_with(tmp_path, [("x", ops)], checksum)
    torch.load(path, weights_only=True)  # torch itself reads them: the walk must not hang or recurse
    _refused_by_every_reader(path, match)


def test_hostile_structures_through_model_weights_and_the_predictor(tmp_path):
    config = write_config(tmp_path)
    for kind in ("shared-60", "self-list"):
        path = _checkpoint_with(tmp_path, [("x", HOSTILE[kind][0])], name=f"{kind}.pth")
        for key in ("model.weights", "model.backbone.weights"):
            with pytest.raises(CheckpointError, match=HOSTILE[kind][1]):
                build_model(tiny_config(f"{key}={path}"))
        with pytest.raises(CheckpointError, match=HOSTILE[kind][1]):
            Predictor(str(config), weights=str(path), device="cpu")


def test_a_shared_structure_within_the_limits_costs_its_size(tmp_path):
    """17 levels of [x, x], twice: 2^18 paths through 18 lists; saved with a checksum and read back at once."""
    x: list = []
    for _ in range(17):
        x = [x, x]
    state = {**_state(1), "shared": {"a": x, "b": x}}
    start = time.perf_counter()
    path = Checkpointer(tmp_path).save("model_0000001.pth", state)
    loaded = Checkpointer.load(path)
    assert time.perf_counter() - start < 5
    assert loaded["shared"]["a"] is loaded["shared"]["b"]


def test_the_node_limit(tmp_path):
    path = _checkpoint_with(tmp_path, [("x", b"](" + b"K\x01" * 2000 + b"e")])
    Checkpointer.load(path)
    with pytest.raises(CheckpointError, match=r"more than 1000 values"):
        load_torch_file(path, max_nodes=1000)


@pytest.mark.slow
def test_eval_coco_tool_exits_2_on_a_hostile_checkpoint(shapes, tmp_path):
    config = write_config(
        tmp_path,
        [f"data.test={{json: {shapes}/annotations/val.json, image_root: {shapes}/val}}", f"output_dir={tmp_path}/out"],
    )
    path = _checkpoint_with(tmp_path, [("x", SELF_LIST)])
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "eval_coco.py"), str(config), "--weights", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "RESTRANSFER_NO_PROGRESS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert f"error: {path}: refused: it holds a container that contains itself" in proc.stderr
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr


# ----------------------------------------------------------------------------------------- the zip


INFLATED = 128 << 20


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A checkpoint whose tensor record is 128 MiB of zeros, DEFLATE-compressed (~1000:1)."""
    path = tmp_path_factory.mktemp("bomb") / "model_0000001.pth"
    torch.save({"iteration": 1, "model": {"w": torch.zeros(4)}}, path)
    members = _members(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            if n.endswith("/data/0"):
                with z.open(n, "w") as m:
                    chunk = bytes(1 << 20)
                    for _ in range(INFLATED >> 20):
                        m.write(chunk)
            else:
                z.writestr(n, data, compress_type=zipfile.ZIP_STORED)
    assert path.stat().st_size < INFLATED // 500
    return path


def test_a_compressed_bomb_is_refused_before_decompressing(bomb, monkeypatch):
    loads = []

    def no_load(*args, **kwargs):  # torch would inflate the record: it must never be reached
        loads.append(args)
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(torch, "load", no_load)
    tracemalloc.start()
    try:
        _refused_by_every_reader(
            bomb,
            r"zip member '[^']*/data/0' is compressed and declares 134217728 bytes "
            r"uncompressed.*refused before decompressing",
        )
        assert checkpoint_class_names(bomb) is None  # the Predictor's look at the class names
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not loads
    assert peak < INFLATED // 16, peak


def test_the_inflation_cap_is_configurable(bomb):
    check_torch_archive(bomb, max_inflation=2000)  # allowed: it decompresses, and its CRC is right
    with pytest.raises(CheckpointError, match=r"and 1024 bytes in all"):
        load_torch_file(bomb, max_inflation=2000, max_inflated_bytes=1024)


def test_a_data_descriptor_that_disagrees_with_the_central_directory(tmp_path):
    path = Checkpointer(tmp_path).save("model_0000001.pth", _state(1))
    start, size = _data_span(path, "/data/0")
    raw = path.read_bytes()
    assert raw[start + size : start + size + 4] == b"PK\x07\x08"  # torch writes sizes after the data
    _flip(path, start + size + 12, raw[start + size + 12] ^ 0x01)  # the uncompressed size
    _refused_by_every_reader(path, r"zip member '[^']*/data/0' is malformed: its data descriptor disagrees")


def test_overlapping_members_are_refused(tmp_path):
    """A member's data holding another member's complete entry, both listed: one record read twice."""
    path = tmp_path / "model_0000001.pth"
    torch.save({"iteration": 1, "model": {"w": torch.zeros(4)}}, path)
    members = _members(path)
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("payload", bytes(4096))
    with zipfile.ZipFile(inner) as z:
        entry_len = z.infolist()[0].compress_size + 30 + len("payload")
    members["outer"] = inner.read_bytes()[:entry_len]
    members["payload"] = bytes(4096)  # a real entry, moved below onto the copy inside "outer"
    _rewrite(path, members)
    raw = bytearray(path.read_bytes())
    outer_data, _ = _data_span(path, "outer")
    entry = raw.find(b"PK\x01\x02")
    while entry >= 0:  # point the central directory's "payload" at the copy inside "outer"
        name_len = struct.unpack_from("<H", raw, entry + 28)[0]
        if raw[entry + 46 : entry + 46 + name_len] == b"payload":
            struct.pack_into("<I", raw, entry + 42, outer_data)
        entry = raw.find(b"PK\x01\x02", entry + 4)
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as z:  # a valid zip otherwise: names, sizes and CRCs agree
        assert z.getinfo("payload").header_offset == outer_data and z.testzip() is None
    _refused_by_every_reader(path, r"zip member '[^']*' is malformed: its data overlap those of member")


# ------------------------------------------------------------------------------------ older checkpoints


def _warnings(caplog, text: str) -> list:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_a_legacy_tensor_only_checksum_loads_with_one_warning(tmp_path, caplog):
    state = _state(15)
    path = tmp_path / "model_0000015.pth"
    atomic_torch_save({**state, CHECKSUM_KEY: tensors_checksum(state)}, path)
    with caplog.at_level(logging.WARNING):
        assert Checkpointer.load(path)["iteration"] == 15
    assert len(_warnings(caplog, str(path))) == 1
    assert "covers the tensors only" in _warnings(caplog, "could not be verified")[0].getMessage()
    # its tensors are still verified
    members = _members(path)
    record = next(n for n in members if n.endswith("/data/0"))
    members[record] = members[record][:8] + bytes([members[record][8] ^ 1]) + members[record][9:]
    _rewrite(path, members)
    with pytest.raises(CheckpointError, match=r"checksum mismatch: the file's tensors"):
        Checkpointer.load(path)


def test_a_checkpoint_without_checksum_loads_with_one_warning(tmp_path, caplog):
    path = tmp_path / "model_0000015.pth"
    atomic_torch_save(_state(15), path)
    with caplog.at_level(logging.WARNING):
        assert Checkpointer.load(path)["iteration"] == 15
    assert len(_warnings(caplog, "without a checksum")) == 1
    assert "could not be verified" in _warnings(caplog, "without a checksum")[0].getMessage()
    caplog.clear()
    plain = tmp_path / "resnet.pth"  # third-party weights never carry one: no warning
    torch.save(ResNet(18).state_dict(), plain)
    with caplog.at_level(logging.WARNING):
        load_pretrained(ResNet(18), str(plain))
    assert not _warnings(caplog, "checksum")


def test_a_tensor_without_data_under_a_payload_checksum_is_an_error(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save(
        {"iteration": 1, "w": torch.empty(3, device="meta"), CHECKSUM_KEY: "payload-sha256-v2:" + "0" * 64}, path
    )
    with pytest.raises(CheckpointError, match=r"holds a tensor at /w whose data cannot be read"):
        Checkpointer.load(path)


def test_an_unrecognized_checksum_is_an_error(tmp_path):
    path = _checkpoint_with(tmp_path, [], checksum="sha512:abc")
    with pytest.raises(CheckpointError, match=r"unrecognized format"):
        Checkpointer.load(path)
