"""The start-up memory check: the cgroup limit (v2 and v1 layouts) and the arithmetic."""
import pytest

from llmfn.memory import RUNTIME_OVERHEAD_BYTES, DoesNotFit, cgroup_memory_limit, check_fits

MIB = 2**20


@pytest.mark.parametrize("files, want", [
    ({"memory.max": "671088640\n"}, 640 * MIB),  # cgroup v2
    ({"memory.max": "max\n"}, None),
    ({"memory/memory.limit_in_bytes": "536870912\n"}, 512 * MIB),  # cgroup v1
    ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),  # v1 "unlimited"
    ({}, None),
])
def test_cgroup_memory_limit(tmp_path, files, want):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_memory_limit(tmp_path) == want


def test_fits_and_does_not_fit_with_the_arithmetic():
    weights, kv = 94 * MIB, 180 * MIB
    check_fits(weights_bytes=weights, kv_bytes=kv, limit_bytes=640 * MIB, what="4 slots")
    check_fits(weights_bytes=weights, kv_bytes=kv, limit_bytes=None, what="unlimited")
    exact = weights + kv + RUNTIME_OVERHEAD_BYTES
    check_fits(weights_bytes=weights, kv_bytes=kv, limit_bytes=exact, what="exact")
    with pytest.raises(DoesNotFit) as err:
        check_fits(weights_bytes=weights, kv_bytes=kv, limit_bytes=exact - 1, what="4 slots")
    assert "weights 94 MiB + KV cache 180 MiB" in str(err.value)
    assert "lower SLOTS or N_CTX" in str(err.value)
