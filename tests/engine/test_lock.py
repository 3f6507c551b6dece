"""restransfer.engine.lock: one run per output folder, a stale lock taken over by exactly one starter, a lock
record that survives pid reuse."""

import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from restransfer.engine import lock as lock_module
from restransfer.engine.lock import LOCK_NAME, OutputDirLock, OutputDirLocked, boot_id, process_start_ticks

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or lock_module.fcntl is None, reason="needs fork and flock (Linux, macOS)"
)

_FORK = mp.get_context("fork")
# a guard against a hang when a worker dies (a barrier nobody reaches again), not a time limit
_GUARD_S = 300


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(folder: Path, kind: str, dead_pid: int) -> None:
    """A stale ``run.lock`` in ``folder``: ``dead`` (this version's record of a process that is gone),
    ``legacy`` (an earlier version's record, no start time, of a gone process), ``reused`` (the pid of a live
    process that is not a run: the test runner's parent, with another start time), ``empty`` (a starter died
    between creating and writing it) or ``none`` (no lock: the starters race to create it)."""
    folder.mkdir(parents=True)
    record = {"pid": dead_pid, "host": socket.gethostname(), "purpose": "training", "started": "earlier"}
    if kind == "dead":
        record.update(boot_id=boot_id(), start_ticks=12345)
    elif kind == "reused":
        live = os.getppid()
        record.update(pid=live, boot_id=boot_id(), start_ticks=(process_start_ticks(live) or 0) + 7)
    elif kind == "empty":
        record = None
    elif kind == "none":
        return
    (folder / LOCK_NAME).write_text("" if record is None else json.dumps(record) + "\n")


def _worker(index: int, rounds, barrier, outcome, errors) -> None:
    """One starter in every round it takes part in (its index below the round's number of starters): start
    with the others, hold a lock it won until every starter has tried, then let go."""
    logging.getLogger("restransfer").setLevel(logging.CRITICAL)  # the takeover warnings of 200 rounds
    for r, (folder, starters) in enumerate(rounds):
        barrier.wait(_GUARD_S)
        lock = None
        if index < starters:
            try:
                lock = OutputDirLock(folder).acquire()
                outcome[index] = 1
            except OutputDirLocked:
                outcome[index] = 0
            except Exception as e:  # anything else is a failure of the lock, reported to the test
                outcome[index] = 2
                errors.put(f"round {r}, starter {index}: {type(e).__name__}: {e}")
        barrier.wait(_GUARD_S)  # every starter has tried; the test reads the outcomes
        barrier.wait(_GUARD_S)
        if lock is not None:
            lock.release()
        barrier.wait(_GUARD_S)  # released; the test plants the next round's lock


def test_exactly_one_of_several_starters_takes_a_stale_lock(tmp_path):
    starters = (2, 4, 8)
    dead = _dead_pid()
    kinds = ("dead", "legacy", "reused", "empty")
    plan = [(kind, n) for _ in range(17) for kind in kinds for n in starters]  # 204 stale-lock rounds
    plan += [("none", n) for _ in range(4) for n in starters]  # and 12 with no lock at all
    rounds = [(tmp_path / f"r{i:03d}", n) for i, (_, n) in enumerate(plan)]
    workers = max(starters)
    barrier = _FORK.Barrier(workers + 1)
    outcome = _FORK.Array("i", workers)
    errors = _FORK.SimpleQueue()
    procs = [
        _FORK.Process(target=_worker, args=(i, rounds, barrier, outcome, errors), daemon=True) for i in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        winners = []
        for (kind, n), (folder, _) in zip(plan, rounds):
            _plant(folder, kind, dead)
            for i in range(workers):
                outcome[i] = -1
            barrier.wait(_GUARD_S)  # go
            barrier.wait(_GUARD_S)  # all tried
            result = list(outcome[:n])
            assert errors.empty() and 2 not in result, errors.get()
            assert result.count(1) == 1, f"{kind} lock, {n} starters: {result.count(1)} winners"
            winner = result.index(1)
            record = json.loads((folder / LOCK_NAME).read_text())
            assert record["pid"] == procs[winner].pid and record["start_ticks"] == process_start_ticks(record["pid"])
            winners.append(winner)
            barrier.wait(_GUARD_S)
            barrier.wait(_GUARD_S)  # released
            assert not (folder / LOCK_NAME).exists()
        assert len(plan) >= 200 and len(set(winners)) > 1  # the race was real: not always the same starter
    finally:
        barrier.abort()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def _churn(folder, holds: int, inside, violations, errors) -> None:
    """Take and release the lock ``holds`` times, retrying whenever it is in use; count overlaps."""
    logging.getLogger("restransfer").setLevel(logging.CRITICAL)
    done = 0
    while done < holds:
        try:
            lock = OutputDirLock(folder).acquire()
        except OutputDirLocked:
            continue
        except Exception as e:
            errors.put(f"{type(e).__name__}: {e}")
            return
        with inside.get_lock():
            inside.value += 1
            if inside.value != 1:
                violations.value += 1
        time.sleep(0.0002)
        with inside.get_lock():
            inside.value -= 1
        lock.release()
        done += 1


def test_no_two_holders_while_starters_take_and_release_it_in_turn(tmp_path):
    """Releases racing with starters (a file deleted between a starter's open and its flock): never two
    holders at once."""
    inside, violations = _FORK.Value("i", 0), _FORK.Value("i", 0)
    errors = _FORK.SimpleQueue()
    procs = [
        _FORK.Process(target=_churn, args=(tmp_path, 60, inside, violations, errors), daemon=True) for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(_GUARD_S)
    assert errors.empty(), errors.get()
    assert [p.exitcode for p in procs] == [0] * 4 and violations.value == 0
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_file_released_while_a_starter_opens_it_is_not_taken(tmp_path, monkeypatch):
    """The one step a churn rarely hits: a starter opens a stale-looking file, its owner deletes it (a
    release) and a second starter creates the next lock, then the first starter's flock succeeds on the
    deleted file. It must notice the file is no longer ``run.lock`` and find the second starter's lock."""
    (tmp_path / LOCK_NAME).write_text(
        json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "earlier"})
    )
    real_flock, other = lock_module._try_flock, []

    def released_meanwhile(fd):
        if not other:
            other.append(OutputDirLock(tmp_path, "second starter"))
            (tmp_path / LOCK_NAME).unlink()
            other[0].acquire()
        return real_flock(fd)

    monkeypatch.setattr(lock_module, "_try_flock", released_meanwhile)
    with pytest.raises(OutputDirLocked, match="already held by this process"):
        OutputDirLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["purpose"] == "second starter"
    other[0].release()


def _hold(folder, ready, keep_record=True):
    """Child: take the lock (or only create the file and flock it, writing nothing), say so, and hold it
    until killed. (Signalled through a pipe: a process killed inside an ``Event`` could leave its lock held.)"""
    if keep_record:
        OutputDirLock(folder).acquire()
    else:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        lock_module.fcntl.flock(fd, lock_module.fcntl.LOCK_EX)
    ready.send(True)
    time.sleep(_GUARD_S)


def _start_holder(folder, keep_record=True):
    receive, send = _FORK.Pipe(duplex=False)
    holder = _FORK.Process(target=_hold, args=(folder, send, keep_record), daemon=True)
    holder.start()
    assert receive.poll(_GUARD_S) and receive.recv()
    return holder


def _kill(process) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.join()


def test_a_live_owner_keeps_its_folder_and_its_death_frees_it(tmp_path, caplog):
    owner = _start_holder(tmp_path)
    try:
        before = (tmp_path / LOCK_NAME).read_bytes()
        with pytest.raises(OutputDirLocked, match=rf"{tmp_path} is in use by process {owner.pid} \(training since"):
            OutputDirLock(tmp_path).acquire()
        assert (tmp_path / LOCK_NAME).read_bytes() == before  # the refused starter wrote nothing
    finally:
        _kill(owner)  # no release: the file stays behind
    assert (tmp_path / LOCK_NAME).read_bytes() == before
    with caplog.at_level(logging.WARNING, logger="restransfer.engine.lock"):
        lock = OutputDirLock(tmp_path, "evaluation").acquire()
    assert f"taking over the lock of process {owner.pid} (training since" in caplog.text
    assert f"process {owner.pid} is no longer running" in caplog.text
    record = json.loads((tmp_path / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["purpose"] == "evaluation"
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_live_process_reusing_the_owners_pid_is_told_apart(tmp_path, caplog):
    live = os.getppid()
    ticks = process_start_ticks(live)
    if ticks is None:
        pytest.skip("no /proc here")
    (tmp_path / LOCK_NAME).write_text(
        json.dumps(
            {
                "pid": live,
                "host": socket.gethostname(),
                "purpose": "training",
                "started": "2020-01-01 00:00:00",
                "boot_id": boot_id(),
                "start_ticks": ticks + 100,
            }
        )
    )
    with caplog.at_level(logging.WARNING, logger="restransfer.engine.lock"):
        with OutputDirLock(tmp_path):
            pass
    assert f"taking over the lock of process {live} (training since 2020-01-01 00:00:00)" in caplog.text
    assert f"process {live} is alive but started at " in caplog.text
    assert "not the run that wrote the lock (that one started at " in caplog.text
    # the same record with the right start time names a live run: refused, the record left alone
    record = {
        "pid": live,
        "host": socket.gethostname(),
        "purpose": "training",
        "started": "earlier",
        "boot_id": boot_id(),
        "start_ticks": ticks,
    }
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(OutputDirLocked, match=rf"is in use by process {live} \(training since earlier\)"):
        OutputDirLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == record
    # a record of an earlier boot of this machine is stale whatever its pid
    (tmp_path / LOCK_NAME).write_text(json.dumps({**record, "boot_id": "another-boot"}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="restransfer.engine.lock"):
        with OutputDirLock(tmp_path):
            pass
    assert f"process {live} ran before this machine last started" in caplog.text


def test_other_hosts_and_unreadable_locks_are_refused(tmp_path, monkeypatch):
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere", "purpose": "training", "started": "x"}))
    with pytest.raises(OutputDirLocked, match=r"on host elsewhere .*cannot be checked from here.*delete"):
        OutputDirLock(tmp_path).acquire()
    # junk that no process holds is taken over; junk held by a live process is waited for, then reported
    lock.write_text("not json")
    with OutputDirLock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    monkeypatch.setattr(lock_module, "RECORD_WAIT_S", 0.2)
    writer = _start_holder(tmp_path, keep_record=False)
    try:
        with pytest.raises(OutputDirLocked, match=rf"{LOCK_NAME}, which cannot be read \(a live process holds it\)"):
            OutputDirLock(tmp_path).acquire()
    finally:
        _kill(writer)


def test_processes_forked_by_the_owner_do_not_keep_its_lock(tmp_path):
    """A DataLoader worker outliving a killed run must not keep the folder locked."""
    pids = _FORK.SimpleQueue()

    def owner():
        OutputDirLock(tmp_path).acquire()
        child = os.fork()
        if child == 0:
            time.sleep(_GUARD_S)
            os._exit(0)
        pids.put(child)
        os._exit(0)  # dies holding the lock, its child still running

    p = _FORK.Process(target=owner)
    p.start()
    child = pids.get()
    p.join()
    try:
        with OutputDirLock(tmp_path):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_file_system_without_flock(tmp_path, monkeypatch):
    """Creation still excludes (O_EXCL), a live owner is still refused, a stale lock is not taken over (that
    cannot be done atomically without flock): the message says to delete it."""

    class NoFlock:
        LOCK_EX, LOCK_NB = 2, 4

        @staticmethod
        def flock(fd, op):
            raise OSError(37, "No locks available")  # ENOLCK, as NFS without a lock manager answers

    monkeypatch.setattr(lock_module, "fcntl", NoFlock)
    with OutputDirLock(tmp_path):
        with pytest.raises(OutputDirLocked, match=f"already held by this process|in use by process {os.getpid()}"):
            OutputDirLock(tmp_path).acquire()
    dead = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "x"}))
    with pytest.raises(
        OutputDirLocked,
        match=rf"stale \(process {dead} is no longer running.*no file locks \(flock\)"
        rf".*delete {tmp_path / LOCK_NAME}",
    ):
        OutputDirLock(tmp_path).acquire()


def test_the_lock_is_never_written_through_a_link_or_into_a_hard_linked_file(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(outside)
    with pytest.raises(OutputDirLocked, match=rf"{out / LOCK_NAME} is a symbolic link \(to {outside}\).*remove it"):
        OutputDirLock(out).acquire()
    (out / LOCK_NAME).unlink()
    (out / LOCK_NAME).symlink_to(tmp_path / "missing")  # a dangling link: O_EXCL does not create its target
    with pytest.raises(OutputDirLocked, match="symbolic link"):
        OutputDirLock(out).acquire()
    assert not (tmp_path / "missing").exists()
    (out / LOCK_NAME).unlink()
    os.link(outside, out / LOCK_NAME)  # a stale-looking (junk) lock that is also a file elsewhere
    with pytest.raises(OutputDirLocked, match="other hard link"):
        OutputDirLock(out).acquire()
    assert outside.read_text() == "precious\n"
