"""No write of the toolkit leaves its output folder: symbolic links planted at every name it writes there
(temporaries, metrics, results, report, checkpoints, config, lock, logs) leave the files they point to as
they were, and a link where a log or the lock goes stops the run with an error naming it."""

import errno
import os
import secrets
import threading
from pathlib import Path

import pytest

from restransfer import fileio
from restransfer.fileio import atomic_write_bytes, atomic_write_text, exclusive_lock, open_for_append

pytestmark = pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="needs O_NOFOLLOW (POSIX)")


class Outside:
    """Files outside the output folder that planted links point to: each holds its own content, or does
    not exist (a dangling link, whose target a careless create would make)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.links = {}

    def plant(self, link: Path, dangling: bool = False) -> None:
        target = self.root / f"target{len(self.links)}"
        if not dangling:
            target.write_text(f"precious {len(self.links)}\n")
        link.symlink_to(target)
        self.links[link] = (target, None if dangling else target.read_text())

    def assert_unchanged(self) -> None:
        for link, (target, content) in self.links.items():
            if content is None:
                assert not target.exists(), f"{link.name} created {target}"
            else:
                assert target.read_text() == content, f"{link.name} wrote into {target}"


def _plant_temporaries(outside: Outside, folder: Path, name: str, pids=()) -> None:
    """Links at the names the writer of earlier versions used (``.NAME.tmpPID``, for ``pids``), and at a few
    names of this version's pattern."""
    for pid in pids:
        outside.plant(folder / f".{name}.tmp{pid}", dangling=pid % 2 == 0)
    for i in range(4):
        outside.plant(folder / f".{name}.{secrets.token_hex(8)}.tmp", dangling=i % 2 == 0)


def test_the_atomic_writer_replaces_a_link_and_never_opens_one(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    outside = Outside(tmp_path / "elsewhere")
    outside.plant(out / "metrics.json")
    outside.plant(out / "coco_results.json", dangling=True)
    # the old names (.NAME.tmpPID) for this pid and its neighbours, and this version's pattern
    for name in ("metrics.json", "coco_results.json"):
        _plant_temporaries(outside, out, name, pids=range(os.getpid() - 20, os.getpid() + 21))
    # and the very names the writer will draw first: it must pass over them, not open them
    drawn = iter(["0" * 16, "1" * 16, "2" * 16, "3" * 16] + [secrets.token_hex(8) for _ in range(20)])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(drawn))
    outside.plant(out / f".metrics.json.{'0' * 16}.tmp")
    outside.plant(out / f".metrics.json.{'1' * 16}.tmp", dangling=True)
    outside.plant(out / f".coco_results.json.{'2' * 16}.tmp", dangling=True)
    outside.plant(out / f".coco_results.json.{'3' * 16}.tmp")

    atomic_write_text(out / "metrics.json", '{"AP": 1}\n')
    atomic_write_bytes(out / "coco_results.json", b"[]\n")
    outside.assert_unchanged()
    for name, content in (("metrics.json", '{"AP": 1}\n'), ("coco_results.json", "[]\n")):
        assert not (out / name).is_symlink() and (out / name).read_text() == content
    # no temporary of these writes is left: every dot-file is one of the planted links
    assert all(p.is_symlink() for p in out.iterdir() if p.name.startswith("."))


def test_a_failed_write_removes_its_temporary_and_keeps_a_planted_link(tmp_path):
    outside = Outside(tmp_path / "elsewhere")
    outside.plant(tmp_path / "model_final.pth")
    with pytest.raises(OSError, match=r"cannot write .*model_final.pth"):
        with fileio.atomic_open(tmp_path / "model_final.pth", "wb") as f:
            f.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    outside.assert_unchanged()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "model_final.pth"]


def test_a_log_is_appended_but_never_through_a_link(tmp_path):
    log = tmp_path / "log.txt"
    with open_for_append(log) as f:
        f.write("one\n")
    with open_for_append(log) as f:
        f.write("twö\n")
    assert log.read_text(encoding="utf-8") == "one\ntwö\n"

    outside = Outside(tmp_path / "elsewhere")
    for name, dangling in (("log.jsonl", False), ("log.rank1.txt", True)):
        outside.plant(tmp_path / name, dangling=dangling)
        with pytest.raises(
            OSError,
            match=rf"{tmp_path / name} is a symbolic link \(to .*target.*\): the toolkit "
            rf"does not write through it.*remove it \(rm {tmp_path / name}\)",
        ):
            open_for_append(tmp_path / name)
    outside.assert_unchanged()

    precious = outside.root / "hard.txt"
    precious.write_text("precious\n")
    os.link(precious, tmp_path / "hard.log")
    with pytest.raises(OSError, match="hard.log is a file with 1 other hard link"):
        open_for_append(tmp_path / "hard.log")
    assert precious.read_text() == "precious\n"
    (tmp_path / "folder.log").mkdir()
    with pytest.raises(OSError, match="folder.log is a folder"):
        open_for_append(tmp_path / "folder.log")


def test_a_generation_lock_file_is_never_opened_through_a_link(tmp_path):
    with exclusive_lock(tmp_path / ".generate.lock"):  # created, held, released
        pass
    (tmp_path / "set").mkdir()
    outside = Outside(tmp_path / "elsewhere")
    outside.plant(tmp_path / "set" / ".generate.lock")
    with pytest.raises(OSError, match=r"\.generate\.lock is a symbolic link"):
        with exclusive_lock(tmp_path / "set" / ".generate.lock"):
            pass
    outside.assert_unchanged()


def test_a_pipe_at_a_log_name_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "log.txt")
    opened = []
    # a plain open would wait for a reader forever; run it aside so that a regression fails, not hangs
    worker = threading.Thread(target=lambda: opened.append(_refusal(tmp_path / "log.txt")), daemon=True)
    worker.start()
    worker.join(60)
    assert opened and "not a regular file" in opened[0]


def _refusal(path: Path) -> str:
    try:
        open_for_append(path).close()
    except OSError as e:
        return str(e)
    return "opened"


# --------------------------------------------------------------------------------- a whole run


@pytest.fixture
def run_config(tiny_overrides, shapes):
    from restransfer.config import load_config

    def make(out, **extra):
        data = dict(
            data__train=f"[{{json: {shapes}/annotations/train.json, image_root: {shapes}/train}}]",
            data__test=f"{{json: {shapes}/annotations/val.json, image_root: {shapes}/val}}",
        )
        return load_config(None, tiny_overrides("training", **{**data, "output_dir": out, **extra}))

    return make


def test_links_at_the_lock_or_a_log_stop_the_run_before_it_writes(run_config, tmp_path):
    from restransfer.engine import OutputDirLocked, train

    for name, error in (("run.lock", OutputDirLocked), ("log.txt", OSError), ("log.jsonl", OSError)):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        outside = Outside(tmp_path / f"elsewhere_{out.name}")
        outside.plant(out / name)
        with pytest.raises(error, match=rf"{out / name} is a symbolic link"):
            train(run_config(out, solver__max_iter=1, data__test="null"))
        outside.assert_unchanged()
        assert not (out / "run.lock").exists() or (out / "run.lock").is_symlink()  # released
        assert not any((out / n).exists() for n in ("model_final.pth", "last_checkpoint"))


@pytest.mark.slow
def test_a_training_run_writes_nothing_outside_its_folder(run_config, tmp_path):
    """One tiny run (2 iterations: a periodic checkpoint, the final one, the final evaluation with its report)
    into a folder where every name it writes, and the temporaries beside them, is a link to a file elsewhere."""
    from restransfer.engine import train

    out = tmp_path / "run"
    out.mkdir()
    outside = Outside(tmp_path / "elsewhere")
    written = [
        "config.yaml",
        "model_0000001.pth",
        "last_checkpoint",
        "model_final.pth",
        "metrics.json",
        "coco_results.json",
        "report.html",
    ]
    for i, name in enumerate(written + ["model_best.pth"]):
        # a link to a file at a checkpoint's name would be an earlier run's checkpoint, which a run refuses to
        # overwrite: model_final.pth is a dangling link (a create through it would make its target), the
        # periodic checkpoints' names only have their temporaries planted
        if not name.startswith("model_0"):
            outside.plant(out / name, dangling=name.endswith(".pth") or i % 2 == 0)
        _plant_temporaries(outside, out, name, pids=(os.getpid(),))  # the old names this process would use
    train(run_config(out, solver__max_iter=2, solver__checkpoint_period=1))
    outside.assert_unchanged()
    for name in written:
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert (out / "log.txt").is_file() and (out / "log.jsonl").is_file()
