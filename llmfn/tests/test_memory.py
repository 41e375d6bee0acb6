"""The container's memory limit (cgroup v2 and v1 layouts); the arithmetic is llmfn.sizing's
(test_sizing.py)."""
import pytest

from llmfn.memory import cgroup_memory_limit

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

