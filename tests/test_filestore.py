"""The file cache never writes or reads through a symlink planted inside it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from proxy.server.filestore import FileStore
from tests.conftest import ProxyFactory, commit_bytes
from tests.dists import Dist, make_wheel
from tests.test_files import fetch, files_dir, stored
from tests.upstream import FixtureUpstream


@pytest.fixture
def wheel(upstream: FixtureUpstream) -> Dist:
    dist = make_wheel("planted", "1.0", payload=os.urandom(256 * 1024))
    upstream.add("planted", dist)
    return dist


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Where a planted symlink points: must stay as it was."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "keep").write_bytes(b"not the cache's")
    return folder


def untouched(outside: Path) -> bool:
    return [p.name for p in outside.iterdir()] == ["keep"] and (
        outside / "keep"
    ).read_bytes() == b"not the cache's"


@pytest.mark.parametrize("planted", ["bucket", "tmp", "sha256"])
async def test_a_symlinked_folder_planted_while_running_is_not_written_through(
    make_proxy: ProxyFactory,
    upstream: FixtureUpstream,
    wheel: Dist,
    tmp_path: Path,
    outside: Path,
    planted: str,
) -> None:
    client = await make_proxy()
    root = files_dir(tmp_path)
    link = {
        "bucket": root / "sha256" / wheel.sha256[:2],
        "tmp": root / "tmp",
        "sha256": root / "sha256",
    }[planted]
    if link.exists():
        shutil.rmtree(link)
    link.symlink_to(outside, target_is_directory=True)
    path = f"/files/planted/{wheel.filename}"
    assert await fetch(client, path) == (200, wheel.content)
    assert untouched(outside)
    assert not link.is_symlink() and link.is_dir()
    [cached] = stored(tmp_path)
    assert cached == root / "sha256" / wheel.sha256[:2] / wheel.sha256
    assert cached.read_bytes() == wheel.content
    # And it is served from there afterwards.
    assert await fetch(client, path) == (200, wheel.content)
    assert upstream.requests[path] == 1


async def test_symlinked_folders_found_at_start_are_removed_not_followed(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, wheel: Dist, tmp_path: Path, outside: Path
) -> None:
    root = files_dir(tmp_path)
    (root / "sha256").mkdir(parents=True)
    (root / "tmp").symlink_to(outside, target_is_directory=True)
    (root / "sha256" / wheel.sha256[:2]).symlink_to(outside, target_is_directory=True)
    (root / "sha256" / "zz").write_text("a file where a bucket should be")
    client = await make_proxy()
    assert untouched(outside)
    assert not (root / "tmp").is_symlink() and (root / "tmp").is_dir()
    assert not (root / "sha256" / wheel.sha256[:2]).exists()
    assert not (root / "sha256" / "zz").exists()
    assert await fetch(client, f"/files/planted/{wheel.filename}") == (200, wheel.content)
    assert untouched(outside)


async def test_a_cached_file_behind_a_symlinked_folder_is_not_read_through(
    make_proxy: ProxyFactory, upstream: FixtureUpstream, wheel: Dist, tmp_path: Path, outside: Path
) -> None:
    client = await make_proxy()
    path = f"/files/planted/{wheel.filename}"
    assert await fetch(client, path) == (200, wheel.content)
    bucket = files_dir(tmp_path) / "sha256" / wheel.sha256[:2]
    # The same verified bytes, moved outside and linked back in: still not ours.
    shutil.move(bucket / wheel.sha256, outside / wheel.sha256)
    bucket.rmdir()
    bucket.symlink_to(outside, target_is_directory=True)
    assert await fetch(client, path) == (200, wheel.content)
    assert upstream.requests[path] == 2  # fetched again, not read through the link
    assert (outside / wheel.sha256).read_bytes() == wheel.content  # and nothing deleted there
    assert not bucket.is_symlink()


def _store_one(root: Path, content: bytes) -> tuple[FileStore, str]:
    store = FileStore(root, None)
    store.open()
    return store, commit_bytes(store, content)


def test_a_hot_hit_skips_the_thread_but_never_a_changed_file(tmp_path: Path) -> None:
    content = b"x" * 54_000
    store, sha = _store_one(tmp_path / "files", content)
    assert store.recently_checked(sha) is None  # never looked up: the full check first
    held = store.lookup(sha)
    assert held is not None
    store.release(sha)
    hot = store.recently_checked(sha)  # checked just now: one lstat, no hashing
    assert hot is not None and hot.path == held.path and hot.size == len(content)
    store.release(sha)
    # Changed on disk (size and mtime): the hot path declines, lookup() looks closer.
    held.path.write_bytes(b"y" * 54_001)
    assert store.recently_checked(sha) is None
    assert store.lookup(sha) is None  # not its sha256: forgotten and removed
    assert not held.path.exists()
    # A file replaced by a symlink to the same bytes: declined too.
    store2, sha2 = _store_one(tmp_path / "files2", content)
    assert store2.lookup(sha2) is not None
    target = tmp_path / "elsewhere"
    target.write_bytes(content)
    path = store2.path(sha2)
    path.unlink()
    path.symlink_to(target)
    assert store2.recently_checked(sha2) is None


def test_two_stores_on_one_folder_share_files_as_worker_processes_do(tmp_path: Path) -> None:
    """Each worker process has its own index over the shared folder (issue 12): a file
    another one committed is found (and verified) on a miss; one it evicted is a miss
    here, not a corrupt file."""
    other = FileStore(tmp_path / "files", None, on_corrupt=lambda: corrupt.append(1))
    corrupt: list[int] = []
    other.open(clean=False)
    content = b"y" * 10_000
    writer, sha = _store_one(tmp_path / "files", content)
    held = other.lookup(sha)
    assert held is not None and held.path.read_bytes() == content
    other.release(sha)
    writer.max_size = 1  # the writer's cap evicts it
    assert writer.evict() == [sha]
    assert other.lookup(sha) is None
    assert corrupt == []
    # A damaged file another worker left is still caught before it is served.
    writer2, sha2 = _store_one(tmp_path / "files", b"z" * 5_000)
    writer2.path(sha2).write_bytes(b"not it")
    assert other.lookup(sha2) is None
    assert corrupt == [1]


def test_only_a_store_nobody_shares_knows_a_file_absent_without_a_look(tmp_path: Path) -> None:
    """A cold file's request skips the look on disk (a thread hop) only where the index
    holds every file: one process alone. Sharing, another may have committed it."""
    alone, sha = _store_one(tmp_path / "alone", b"a" * 1_000)
    unknown = hashlib.sha256(b"never kept").hexdigest()
    assert alone.surely_absent(unknown) and alone.lookup(unknown) is None
    assert not alone.surely_absent(sha)  # indexed: on disk, to be looked at
    # Kept before this process started: indexed at open(), so not absent either.
    reopened = FileStore(tmp_path / "alone", None)
    reopened.open()
    assert not reopened.surely_absent(sha) and reopened.lookup(sha) is not None
    reopened.release(sha)
    other = FileStore(tmp_path / "shared", None, shared=True)
    other.open(clean=False)
    _, shared_sha = _store_one(tmp_path / "shared", b"b" * 1_000)  # another worker
    assert not other.surely_absent(shared_sha) and not other.surely_absent(unknown)
    assert other.lookup(shared_sha) is not None


def _on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "sha256").rglob("*") if p.is_file())


@pytest.mark.parametrize("rescan_ns", [0, None], ids=["shared", "each-its-own"])
def test_worker_processes_keep_one_size_cap_over_all_their_files(
    tmp_path: Path, rescan_ns: int | None
) -> None:
    """Two stores on one folder, as two worker processes: each commits files in turn.
    Shared, the cap holds for what is on disk (each reads the folder again before it
    evicts); each keeping its own index, they would hold up to twice the cap."""
    root = tmp_path / "files"
    cap = 250_000
    shared = rescan_ns is not None
    stores = [FileStore(root, cap, shared=shared, rescan_ns=rescan_ns or 0) for _ in range(2)]
    for store in stores:
        store.open(clean=False)
    kept: list[str] = []
    for i in range(12):
        kept.append(commit_bytes(stores[i % 2], bytes([i]) * 50_000))
    if shared:
        assert _on_disk(root) <= cap
        # The newest files stayed, the oldest went: one recency over both.
        assert all(stores[0].path(sha).exists() for sha in kept[-4:])
        assert not any(stores[0].path(sha).exists() for sha in kept[:6])
    else:
        assert _on_disk(root) > cap  # what each index alone keeps
