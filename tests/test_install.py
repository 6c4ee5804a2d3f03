"""Installing as the README says: the project is on no package index, so from a checkout or a
wheel `python -m build` makes, and nothing tells anyone to install it by name."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import aiohttp

from tests.conftest import client_env, run, write_config
from tests.upstream import FixtureUpstream

ROOT = Path(__file__).resolve().parent.parent

# `pip install pythonbuild`, `pip install 'pythonbuild[builder]'`, `uv pip install pythonbuild`,
# `pipx install pythonbuild`: a name an index would resolve (and anyone could register there).
# A path ('/opt/pythonbuild[builder]', ./pythonbuild) or a wheel file is fine.
BY_NAME = re.compile(
    r"\b(?:pip|pipx|uv pip|uv tool)\s+install\s+(?:-\S+\s+)*['\"]?pythonbuild(?![\w/.-])"
)


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode()  # fmt: skip
    return [ROOT / name for name in out.split("\0") if name and (ROOT / name).is_file()]


def test_the_pattern_catches_what_it_should() -> None:
    for bad in ("pip install 'pythonbuild[builder]'", "pip install pythonbuild",
                "uv pip install -U pythonbuild", "pipx install pythonbuild"):  # fmt: skip
        assert BY_NAME.search(bad), bad
    for fine in ("pip install '/opt/pythonbuild[builder]'", "pip install -e '.[builder]'",
                 "pip install dist/pythonbuild-0.1.0-py3-none-any.whl",
                 "pip install ./pythonbuild"):  # fmt: skip
        assert not BY_NAME.search(fine), fine


def test_no_doc_or_message_says_to_install_it_by_name() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in tracked_files()
        if path.suffix in {".md", ".py", ".ini", ".service", ".sh", ".toml", ".txt", ""}
        and path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if BY_NAME.search(line)
    ]
    assert found == []


def checkout_copy(folder: Path) -> Path:
    """The checkout's files (no .venv, no build leftovers), as a clone would have them."""
    archive = folder / "checkout.tar"
    with tarfile.open(archive, "w") as tar:
        for path in tracked_files():
            tar.add(path, arcname=str(path.relative_to(ROOT)))
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "checkout", filter="data")
    return folder / "checkout"


async def test_a_wheel_built_with_python_m_build_installs_a_working_proxy(
    upstream: FixtureUpstream, tmp_path: Path
) -> None:
    checkout = checkout_copy(tmp_path)
    env = client_env(tmp_path / "home")
    # --no-isolation: the build backend (setuptools) of this environment, no index needed.
    code, out = await run(
        sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
        str(tmp_path / "dist"), str(checkout), env=env,
    )  # fmt: skip
    assert code == 0, out
    [wheel] = (tmp_path / "dist").glob("pythonbuild-*-py3-none-any.whl")
    # A venv of its own, with the wheel installed by pip, and the dependencies only: this
    # environment's site-packages as a plain path (its editable install of the checkout is a
    # .pth import hook that would shadow the wheel, and plain-path folders run no .pth).
    venv = tmp_path / "venv"
    code, out = await run(sys.executable, "-m", "venv", "--without-pip", str(venv), env=env)
    assert code == 0, out
    [site] = (venv / "lib").glob("python3.*/site-packages")
    (site / "dependencies.pth").write_text(str(Path(aiohttp.__file__).parent.parent) + "\n")
    code, out = await run(
        sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
        "--no-deps", str(wheel), env=env,
    )  # fmt: skip
    assert code == 0, out
    code, out = await run(
        str(venv / "bin" / "python"), "-P", "-c",  # -P: not this folder, the checkout
        "import proxy, builder; print(proxy.__file__, builder.__file__)", env=env,
    )  # fmt: skip
    assert code == 0 and all(p.startswith(str(site)) for p in out.split()), out
    target = venv

    config = write_config(tmp_path / "proxy", upstream.url)
    proc = await asyncio.create_subprocess_exec(
        str(target / "bin" / "pythonbuild-proxy"), "--config", str(config),
        env={**env, "NO_PROXY": "127.0.0.1,localhost"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"listening on" in line, line
        base = line.decode().split()[-1].removesuffix("/simple/")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/health") as resp:
                assert resp.status == 200
            # The status page's templates are package data: installed with the wheel.
            async with http.get(f"{base}/") as resp:
                assert resp.status == 200 and "pythonbuild status" in await resp.text()
        code, out = await run(
            str(target / "bin" / "pythonbuild-builder"), "--config", str(config), env=env
        )
        assert code == 0, out
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
