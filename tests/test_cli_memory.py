"""The command line's allocator policy (cli/memory.py): set once per process, never by the library."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys, torch
if sys.argv[1] == "policy":
    from codeformer_core.cli.memory import keep_freed_memory_for_reuse
    assert keep_freed_memory_for_reuse()
t = torch.ones(2 ** 27)  # 512 MiB, far above glibc's largest adaptive mmap threshold
del t
with open("/proc/self/status") as f:
    print(next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) // 1024)
"""


def _rss_after_free(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator policy")
def test_policy_keeps_freed_blocks_for_reuse_and_the_default_returns_them():
    kept, returned = _rss_after_free("policy"), _rss_after_free("default")
    assert kept - returned > 400, f"RSS after freeing 512 MiB: {kept} MiB with the policy, {returned} MiB without"


def test_the_comfyui_path_never_changes_the_allocator():
    repo = Path(__file__).resolve().parents[1]
    files = [*repo.glob("nodes/**/*.py"), *repo.glob("codeformer_core/**/*.py"), repo / "__init__.py"]
    offenders = [str(p.relative_to(repo)) for p in files
                 if "mallopt" in p.read_text() and p.relative_to(repo).parts[:2] != ("codeformer_core", "cli")]
    assert offenders == []
