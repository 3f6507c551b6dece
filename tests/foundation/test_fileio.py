"""restransfer.fileio: every output is written all or nothing."""

import errno
import json
import os
import re

import pytest

from restransfer.fileio import TEMPORARY, atomic_open, atomic_write_bytes, atomic_write_text


def test_writes_text_and_bytes_and_creates_the_folder(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "héllo\n")
    atomic_write_bytes(tmp_path / "a" / "c.bin", b"\x00\x01")
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "a" / "c.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.txt", "c.bin"]


def test_a_failing_block_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(ValueError, match="Out of range float"):
        with atomic_open(target) as f:
            f.write("{")  # half of the new content is already in the temporary
            json.dump({"ap": float("nan")}, f, allow_nan=False)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_full_disk_names_the_target_and_keeps_errno(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    target = tmp_path / "model_final.pth"
    with pytest.raises(OSError, match="cannot write .*model_final.pth: No space left on device") as e:
        atomic_write_bytes(target, b"x" * 100)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_temporary_names_are_unpredictable_and_recognised(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    for _ in range(3):
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    assert len(set(seen)) == 3 and all(re.fullmatch(r"\.config\.yaml\.[0-9a-f]{16}\.tmp", s) for s in seen), seen
    assert all(TEMPORARY.match(s) for s in seen)
    assert TEMPORARY.match(".model_final.pth.tmp1234")  # an earlier version's, still cleaned up
    for name in ("config.yaml", "model_0000006.pth", ".hidden", ".a.tmp", ".a.0123.tmp", "x.0123456789abcdef.tmp"):
        assert not TEMPORARY.match(name), name


def test_only_write_modes():
    with pytest.raises(ValueError, match="mode 'a'"):
        with atomic_open("x", "a"):
            pass
