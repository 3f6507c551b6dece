"""Peak memory measured in a fresh process: VmHWM above the RSS once the setup exists. The steps of the
children below allocate known amounts; what the setup holds or held must not count."""

import pytest
import torch

from restransfer.benchmark.memory import in_fresh_process, measure_peak, status_bytes

MB = 2**20


def _touch(megabytes: int) -> torch.Tensor:
    """``megabytes`` of resident memory (written, so every page is really there)."""
    return torch.ones(megabytes * MB, dtype=torch.uint8)


def _child(step_mb: int, held_mb: int, freed_mb: int):
    """Runs in the fresh process. First each step allocates ``step_mb`` and lets it go; then a setup keeps
    ``held_mb`` and allocates and frees ``freed_mb``, and the steps allocate nothing."""
    cpu = torch.device("cpu")
    step = measure_peak(lambda: int(_touch(step_mb)[-1]), cpu, warmup=1, steps=1)
    held = _touch(held_mb)
    freed = _touch(freed_mb)
    del freed
    setup = measure_peak(lambda: 0, cpu, warmup=1, steps=1)
    assert held.numel() == held_mb * MB
    return step, setup


@pytest.mark.skipif(status_bytes("VmHWM") is None, reason="needs Linux's /proc/self/status")
def test_fresh_process_peak_counts_the_step_not_the_setup():
    step, setup = in_fresh_process(_child, 200, 300, 300)
    assert step.device == "cpu" and step.hwm_reset
    assert 200 <= step.peak_mb < 320 and 200 <= step.steady_peak_mb < 320
    # a setup holding 300 MB and one that peaked at 300 MB more: neither is the steps' memory
    assert setup.baseline_mb > step.baseline_mb + 300
    assert setup.peak_mb < 50 and setup.steady_peak_mb < 50


def _fails():
    raise ValueError("no such model")


def test_a_failing_child_names_its_error():
    with pytest.raises(RuntimeError, match="ValueError: no such model"):
        in_fresh_process(_fails)
