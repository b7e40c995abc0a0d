"""ppllava.memory.peak_extra_mib: the peak of one call in a fresh process, beyond what its setup built."""
import functools

import pytest
import torch

from ppllava.memory import peak_extra_mib


def _allocate(mib: int, built_mib: int):
    kept = torch.ones(built_mib * 2**18)  # built by the setup: not counted

    def run():
        x = torch.ones(mib * 2**18)  # float32: 2**18 of them per MiB, every page written
        return float(x[-1]) + float(kept[-1])

    return run


@pytest.mark.parametrize("mib", [64, 160])
def test_the_peak_is_what_the_call_allocates_not_what_setup_built(mib):
    got = peak_extra_mib(functools.partial(_allocate, mib, 100), "cpu")
    assert mib - 2 <= got <= mib + 16, got
