"""The lock shared by worker processes (proxy/server/flock.py): one holder at a time per
key, across processes, and no lock file left behind once released."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from proxy.server.flock import Locks

REPO = str(Path(__file__).resolve().parent.parent)
# A holder in another process: holds the key until told to let go on stdin.
OTHER = """
import asyncio, sys
from pathlib import Path
from proxy.server.flock import Locks
async def main():
    async with Locks(Path(sys.argv[1])).hold("key"):
        print("held", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main())
"""


async def test_one_holder_at_a_time_and_no_file_left(tmp_path: Path) -> None:
    folder = tmp_path / "locks"
    # Separate Locks objects open the file separately: flock sees separate holders,
    # as it does for separate processes.
    holders = [Locks(folder) for _ in range(8)]
    inside = 0
    most = 0
    entered = 0

    async def hold(locks: Locks) -> None:
        nonlocal inside, most, entered
        for _ in range(20):
            async with locks.hold("key"):
                inside += 1
                entered += 1
                most = max(most, inside)
                await asyncio.sleep(0)  # let the others try while it is held
                inside -= 1

    await asyncio.gather(*(hold(locks) for locks in holders))
    assert (most, entered) == (1, 160)
    assert list(folder.iterdir()) == []


async def test_a_waiter_in_another_process_gets_it_after_the_file_is_removed(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "locks"
    env = {**os.environ, "PYTHONPATH": REPO}
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OTHER, str(folder),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert other.stdin is not None and other.stdout is not None
    assert await asyncio.wait_for(other.stdout.readline(), 30) == b"held\n"
    waiting = asyncio.ensure_future(_hold_once(folder))
    await asyncio.sleep(0.1)  # let it open the file and poll the lock the other holds
    assert not waiting.done()
    other.stdin.write(b"go\n")
    await other.stdin.drain()
    assert await other.wait() == 0  # released, and its file removed
    assert await asyncio.wait_for(waiting, 10) is True
    assert list(folder.iterdir()) == []


async def _hold_once(folder: Path) -> bool:
    async with Locks(folder).hold("key"):
        # Held on the file the name points at, not on the one removed under the waiter.
        return (folder / "key").exists()
