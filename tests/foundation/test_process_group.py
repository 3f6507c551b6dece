"""restransfer.process_group: one process without a group, asked without importing torch; the process group's
answers once one is joined (two processes: tests/engine/test_engine.py's gloo run)."""

import subprocess
import sys

import torch.distributed as dist

from restransfer import distributed, process_group


def test_without_a_group_one_process_and_no_torch_import():
    script = (
        "import sys\n"
        "from restransfer import process_group as pg\n"
        "pg.barrier()\n"
        "print(pg.get_world_size(), pg.get_rank(), pg.is_main_process(), pg.gather_object('a'),"
        " pg.gather_object('a', dst=1), pg.all_gather_object({'b': 1}), 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1 0 True ['a'] ['a'] [{'b': 1}] False"


def test_a_joined_group_is_asked(tmp_path, monkeypatch):
    """A group of one joined through torch.distributed: the queries go to it (its rank and size), and the
    gathers return the one process's object; distributed re-exports the same functions."""
    assert distributed.gather_object is process_group.gather_object
    calls = []
    real_get_world_size = dist.get_world_size

    def counted_world_size(*args, **kwargs):
        calls.append("get_world_size")
        return real_get_world_size(*args, **kwargs)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(dist, "get_world_size", counted_world_size)
        assert process_group.get_world_size() == 1 and calls == ["get_world_size"]
        assert process_group.get_rank() == 0 and process_group.is_main_process()
        assert process_group.gather_object(3) == [3] and process_group.all_gather_object(4) == [4]
        process_group.barrier()
    finally:
        distributed.cleanup()
    assert not dist.is_initialized()
