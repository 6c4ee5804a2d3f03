"""`POST /upload/`: real twine and uv publish against the real proxy, and every answer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from proxy.server.keys import CONFIG
from proxy.wheelhouse.tokens import TokenFile
from tests.conftest import BIN, ProxyFactory, client_env, run
from tests.dists import Dist, make_sdist, make_wheel
from tests.test_pages import JSON_V1
from tests.upstream import FixtureUpstream

Client = TestClient[Request, Application]
WHEEL = make_wheel("demo", "1.0", "cp312-cp312-manylinux_2_17_aarch64")


@pytest.fixture
def demo(upstream: FixtureUpstream) -> FixtureUpstream:
    upstream.add("demo", make_wheel("demo", "1.0"), make_sdist("demo", "1.0"))
    return upstream


async def _proxy(make_proxy: ProxyFactory, **options: object) -> tuple[Client, Path]:
    client = await make_proxy(projects=("demo",), **options)
    assert client.app is not None
    wheelhouse = client.app[CONFIG].wheelhouse.path
    return client, wheelhouse


def _token(wheelhouse: Path, name: str = "ci", scope: str = "upload") -> str:
    return TokenFile(wheelhouse).create(name, scope)  # type: ignore[arg-type]


def _auth(token: str, user: str = "__token__") -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{token}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def _form(dist: Dist, **fields: str) -> aiohttp.FormData:
    """The legacy upload form as twine sends it (fields first, then the file)."""
    form = aiohttp.FormData()
    values = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": "demo",
        "version": "1.0",
        "filetype": "bdist_wheel",
        "pyversion": "cp312",
        "metadata_version": "2.1",
        "sha256_digest": dist.sha256,
        "md5_digest": hashlib.md5(dist.content).hexdigest(),
    }
    values.update(fields)
    for key, value in values.items():
        form.add_field(key, value)
    form.add_field(
        "content", dist.content, filename=dist.filename, content_type="application/octet-stream"
    )
    return form


def _dist_dir(tmp_path: Path, *dists: Dist) -> list[str]:
    folder = tmp_path / "dist"
    folder.mkdir(exist_ok=True)
    for dist in dists:
        (folder / dist.filename).write_bytes(dist.content)
    return [str(folder / d.filename) for d in dists]


def _staging_empty(wheelhouse: Path) -> bool:
    return not any((wheelhouse / ".staging").iterdir())


async def _page_files(client: Client) -> dict[str, dict[str, object]]:
    async with client.get("/simple/demo/", headers={"Accept": JSON_V1}) as r:
        assert r.status == 200
        return {f["filename"]: f for f in json.loads(await r.read())["files"]}


def _twine_env(tmp_path: Path) -> dict[str, str]:
    env = client_env(tmp_path / "home")
    env = {k: v for k, v in env.items() if not k.startswith("TWINE_")}
    # No keyring prompt or lookup: the password is on the command line.
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    return env


@pytest.mark.slow
async def test_twine_upload_publishes_and_a_retry_is_fine(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    client, wheelhouse = await _proxy(make_proxy)
    token = _token(wheelhouse)
    url = str(client.make_url("/upload/"))
    files = _dist_dir(tmp_path, WHEEL)
    for attempt in ("first", "retry"):  # the identical file again is 200: retries are safe
        code, out = await run(
            str(BIN / "twine"), "upload", "--non-interactive", "--disable-progress-bar",
            "--repository-url", url, "-u", "__token__", "-p", token, *files,
            env=_twine_env(tmp_path),
        )  # fmt: skip
        assert code == 0, f"{attempt}: {out}"
        assert token not in out
    files_on_page = await _page_files(client)
    entry = files_on_page[WHEEL.filename]
    assert entry["hashes"] == {"sha256": WHEEL.sha256}
    assert entry["_pythonbuild"] == {"origin": "uploaded"}
    async with client.get("/simple/demo/", headers={"Accept": "text/html"}) as r:
        html = await r.text()
    assert f">{WHEEL.filename}</a>" in html
    assert 'data-pythonbuild-origin="uploaded"' in html
    manifest = json.loads((wheelhouse / "demo" / "manifest.json").read_text())
    origin = manifest["wheels"][WHEEL.filename]["origin"]
    assert (origin["kind"], origin["token"]) == ("uploaded", "ci")
    assert origin["at"].endswith("Z")
    async with client.get(f"/files/demo/{WHEEL.filename}") as r:
        assert await r.read() == WHEEL.content
    assert _staging_empty(wheelhouse)


@pytest.mark.slow
async def test_uv_publish_publishes(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    client, wheelhouse = await _proxy(make_proxy)
    token = _token(wheelhouse, "uv-ci", "all")
    files = _dist_dir(tmp_path, WHEEL)
    code, out = await run(
        str(BIN / "uv"), "publish", "--publish-url", str(client.make_url("/upload/")),
        "--token", token, *files,
        env=client_env(tmp_path / "home"),
    )  # fmt: skip
    assert code == 0, out
    assert (await _page_files(client))[WHEEL.filename]["_pythonbuild"] == {"origin": "uploaded"}
    manifest = json.loads((wheelhouse / "demo" / "manifest.json").read_text())
    assert manifest["wheels"][WHEEL.filename]["origin"]["token"] == "uv-ci"


@pytest.mark.slow
async def test_twine_shows_the_reason_of_a_refusal(
    make_proxy: ProxyFactory, demo: FixtureUpstream, tmp_path: Path
) -> None:
    client, wheelhouse = await _proxy(make_proxy)
    token = _token(wheelhouse)
    other = make_wheel("other", "1.0")  # no [project:other]
    code, out = await run(
        str(BIN / "twine"), "upload", "--non-interactive", "--disable-progress-bar",
        "--repository-url", str(client.make_url("/upload/")), "-u", "__token__", "-p", token,
        *_dist_dir(tmp_path, other),
        env=_twine_env(tmp_path),
    )  # fmt: skip
    assert code != 0
    assert "400" in out
    assert "project other is not supported" in out


async def test_no_credentials_is_401_with_a_basic_challenge(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _proxy(make_proxy)
    async with client.post("/upload/", data=_form(WHEEL)) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert not (wheelhouse / "demo").exists()


async def test_unknown_revoked_and_build_scope_tokens_are_403(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _proxy(make_proxy)
    token = _token(wheelhouse)
    build = _token(wheelhouse, "arm-box", "build")
    refused = {
        "unknown": _auth(token[:-1] + ("A" if token[-1] != "A" else "B")),
        "build scope": _auth(build),
        "other user": _auth(token, user="admin"),
        "malformed": {"Authorization": "Basic %%%"},
    }
    for why, headers in refused.items():
        async with client.post("/upload/", data=_form(WHEEL), headers=headers) as r:
            assert r.status == 403, why
            assert len((await r.text()).splitlines()) == 1
    # Revoked while the proxy runs: refused from the next request, without a restart.
    TokenFile(wheelhouse).revoke("ci")
    async with client.post("/upload/", data=_form(WHEEL), headers=_auth(token)) as r:
        assert r.status == 403
    # And created while it runs: taken at once.
    fresh = _token(wheelhouse, "ci2")
    async with client.post("/upload/", data=_form(WHEEL), headers=_auth(fresh)) as r:
        assert r.status == 200, await r.text()
    assert WHEEL.filename in await _page_files(client)


async def test_what_publish_refuses_is_400_with_one_line(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _proxy(make_proxy)
    headers = _auth(_token(wheelhouse))
    bad = Dist("demo-1.0-cp312-cp312-manylinux_2_17_aarch64.whl", b"not a zip")
    sdist = make_sdist("demo", "1.0")
    cases = {
        "not a valid zip": _form(bad, sha256_digest=bad.sha256),
        "is not supported": _form(make_wheel("other", "1.0"), name="other"),
        "only wheels": _form(sdist, filetype="sdist", sha256_digest=sdist.sha256),
        "does not match": _form(WHEEL, sha256_digest="0" * 64),
        "unsupported :action": _form(WHEEL, **{":action": "remove_pkg"}),
        "not the wheel's": _form(WHEEL, version="2.0"),
    }
    for reason, form in cases.items():
        async with client.post("/upload/", data=form, headers=headers) as r:
            text = await r.text()
            assert r.status == 400, (reason, text)
            assert reason in text
            assert len(text.splitlines()) == 1
            assert reason in (r.reason or "")  # twine shows the status line's reason
    async with client.post("/upload/", data=b"raw", headers=headers) as r:
        assert r.status == 400
    assert WHEEL.filename not in await _page_files(client)
    assert _staging_empty(wheelhouse)


async def test_upstream_filename_or_other_bytes_is_409(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _proxy(make_proxy)
    headers = _auth(_token(wheelhouse))
    upstreams = make_wheel("demo", "1.0")  # the fixture upstream lists this filename
    async with client.post("/upload/", data=_form(upstreams), headers=headers) as r:
        assert r.status == 409
        assert "upstream already has" in await r.text()
    async with client.post("/upload/", data=_form(WHEEL), headers=headers) as r:
        assert r.status == 200
    same_name = make_wheel("demo", "1.0", "cp312-cp312-manylinux_2_17_aarch64", payload=b"x")
    assert same_name.filename == WHEEL.filename
    async with client.post("/upload/", data=_form(same_name), headers=headers) as r:
        assert r.status == 409
        assert "other bytes" in await r.text()
    async with client.get(f"/files/demo/{WHEEL.filename}") as r:
        assert await r.read() == WHEEL.content  # the first stays
    assert _staging_empty(wheelhouse)


async def test_content_length_over_the_limit_is_413_before_reading(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _proxy(make_proxy, max_upload_size="64K")
    token = _token(wheelhouse)
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    # Announce 1 GiB and send none of it: the answer comes without waiting for the body.
    head = (
        "POST /upload/ HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {_auth(token)['Authorization']}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {1 << 30}\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 30)
    assert status.startswith(b"HTTP/1.1 413"), status
    writer.close()
    await writer.wait_closed()


async def test_streamed_body_over_the_limit_is_413_and_leaves_nothing(
    make_proxy: ProxyFactory, demo: FixtureUpstream
) -> None:
    client, wheelhouse = await _proxy(make_proxy, max_upload_size="64K")
    headers = _auth(_token(wheelhouse))
    big = make_wheel(
        "demo", "1.0", "cp312-cp312-manylinux_2_17_aarch64", payload=os.urandom(48 * 1024)
    )
    form = _form(big)
    form.add_field("description", "x" * 32 * 1024)  # the fields count too
    body = form()
    payload = b"".join([chunk async for chunk in _chunks(body)])

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(payload), 8192):
            yield payload[i : i + 8192]

    async with client.post(
        "/upload/", data=chunked(), headers={**headers, "Content-Type": body.content_type}
    ) as r:
        assert r.status == 413
    assert _staging_empty(wheelhouse)
    assert not (wheelhouse / "demo" / big.filename).exists()


async def _chunks(payload: aiohttp.payload.Payload) -> AsyncIterator[bytes]:
    class Sink:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        async def write(self, data: bytes) -> None:
            self.parts.append(bytes(data))

    sink = Sink()
    await payload.write(sink)  # type: ignore[arg-type]
    for part in sink.parts:
        yield part
