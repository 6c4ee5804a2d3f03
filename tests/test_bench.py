"""The README's `python -m bench.coldsmall`, run as written (few projects): it must print
what it promises, figures for each kind of cold request and their sum."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.conftest import client_env, run

REPO = Path(__file__).resolve().parents[1]


async def test_bench_coldsmall_prints_the_added_milliseconds(tmp_path: Path) -> None:
    env = {**client_env(tmp_path), "PYTHONPATH": str(REPO)}
    code, out = await run(
        sys.executable, "-m", "bench.coldsmall", "--projects", "3", "--rounds", "2", env=env
    )
    assert code == 0, out
    for kind in ("page", "metadata", "file"):
        line = re.search(rf"^coldsmall: {kind}: direct ([\d.]+) ms, proxy ([\d.]+) ms, ", out, re.M)
        assert line is not None, out
        assert float(line[1]) > 0 and float(line[2]) > 0
    assert re.search(r"^coldsmall: a cold page, .metadata and wheel: -?[\d.]+ ms added", out, re.M)
