"""API tokens: `pythonbuild-proxy token create|list|revoke`, and what is kept of them."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

import pytest

from proxy.wheelhouse.tokens import TokenError, TokenFile, TokenStore, find
from tests.conftest import BIN, write_config


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "pythonbuild-proxy"), "--config", str(config), "token", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_create_prints_the_token_alone_and_stores_only_its_hash(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/simple/")
    done = _cli(config, "create", "mac-mini", "--scope", "build")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n"  # nothing else on stdout: $(...) captures it whole
    assert token.startswith("pb_")
    # 256 random bits, URL-safe base64: nothing to escape in a URL or a header.
    assert len(token) >= 3 + 43
    assert all(c.isalnum() or c in "-_" for c in token)
    path = tmp_path / "wheelhouse" / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text
    entry = json.loads(text)["tokens"]["mac-mini"]
    assert entry["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert entry["scope"] == "build"
    # Two tokens are never the same.
    other = _cli(config, "create", "ci").stdout.strip()
    assert other != token


def test_list_shows_name_scope_and_time_never_the_token(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/simple/")
    token = _cli(config, "create", "ci").stdout.strip()
    _cli(config, "create", "arm-box", "--scope", "build")
    done = _cli(config, "list")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["arm-box", "build"], ["ci", "all"]]
    assert all(line.split()[2].endswith("Z") for line in lines)
    assert token not in done.stdout + done.stderr


def test_revoke_forgets_and_errors_are_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/simple/")
    token = _cli(config, "create", "ci").stdout.strip()
    assert _cli(config, "revoke", "ci").returncode == 0
    assert _cli(config, "list").stdout == ""
    assert find(TokenStore(tmp_path / "wheelhouse").reload(), token) is None
    for args in (("revoke", "ci"), ("create", "no spaces"), ("create", "x", "--scope", "root")):
        done = _cli(config, *args)
        assert done.returncode != 0
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    _cli(config, "create", "ci")
    done = _cli(config, "create", "ci")  # a name is one token: revoke first
    assert done.returncode == 2
    assert "exists" in done.stderr


def test_store_sees_changes_by_signature(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path)
    store = TokenStore(tmp_path)
    assert store.current() == {}  # no file yet: unchanged and empty
    token = tokens.create("ci", "upload")
    assert store.current() is None  # changed: the caller reloads (in a thread)
    entry = find(store.reload(), token)
    assert entry is not None
    assert (entry.name, entry.allows("upload"), entry.allows("build")) == ("ci", True, False)
    assert store.current() is not None
    assert find(store.reload(), token + "x") is None
    tokens.revoke("ci")
    assert store.current() is None
    assert find(store.reload(), token) is None


def test_damaged_token_file_grants_nothing_and_the_cli_says_so(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").write_text("{not json")
    assert TokenStore(tmp_path).reload() == {}
    with pytest.raises(TokenError, match="damaged"):
        TokenFile(tmp_path).list()
