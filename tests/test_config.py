"""proxy.config: the bundled defaults, path and URL handling, one-line errors, the CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from yarl import URL

from proxy.config import Config, ConfigError, HostPort, load_config
from tests.readme import readme_block

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "config.ini"


def write(tmp_path: Path, text: str, name: str = "pythonbuild.ini") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


# -- the bundled config.ini --------------------------------------------------------------


def test_bundled_config_gives_the_documented_defaults() -> None:
    config = load_config(BUNDLED)
    proxy = config.proxy
    assert config.path == BUNDLED
    assert proxy.host == "127.0.0.1"
    assert proxy.port == 8080
    assert proxy.upstream == URL("https://pypi.org/simple/")
    assert proxy.page_ttl == 600
    assert proxy.page_swr == 3600
    assert proxy.root_ttl == 3600
    assert proxy.negative_ttl == 60
    assert proxy.upstream_timeout == 30
    assert proxy.unsupported == "proxy"


def test_the_readme_configuration_block_loads_as_written(tmp_path: Path) -> None:
    # Every option the README documents, with its inline comments, read as a user
    # who copies the block gets it.
    config = load_text(tmp_path, readme_block("## Configuration", "ini"))
    proxy = config.proxy
    assert proxy.upstream == URL("https://pypi.org/simple/")
    assert proxy.cache_max_size == 50 << 30
    assert proxy.file_hosts == (HostPort("files.pythonhosted.org"),)
    assert proxy.max_page_size == 64 << 20
    assert (proxy.scrub_rate, proxy.scrub_interval) == (10 << 20, 3600)
    assert (proxy.access_log, proxy.workers) == (True, 4)
    assert str(proxy.public_url) == "https://pypi.example.lan/"
    assert sorted(config.projects) == ["grpcio"]


def test_bundled_config_paths_are_under_the_repository() -> None:
    config = load_config(BUNDLED)
    assert config.proxy.cache_dir == REPO / "var" / "cache"
    assert config.wheelhouse.path == REPO / "var" / "wheelhouse"


def test_bundled_config_lists_its_projects() -> None:
    config = load_config(BUNDLED)
    assert sorted(config.projects) == ["grpcio", "grpcio-tools", "lxml"]
    assert config.is_supported(canonicalize_name("LXML"))
    assert not config.is_supported(canonicalize_name("six"))


def test_empty_file_gives_the_same_defaults_as_the_bundled_one(tmp_path: Path) -> None:
    empty = load_text(tmp_path, "")
    bundled = load_config(BUNDLED)
    assert empty.proxy.host == bundled.proxy.host
    assert empty.proxy.port == bundled.proxy.port
    assert empty.proxy.upstream == bundled.proxy.upstream
    assert empty.proxy.page_ttl == bundled.proxy.page_ttl
    assert empty.proxy.root_ttl == bundled.proxy.root_ttl
    assert empty.proxy.negative_ttl == bundled.proxy.negative_ttl
    assert empty.proxy.upstream_timeout == bundled.proxy.upstream_timeout
    assert empty.proxy.unsupported == bundled.proxy.unsupported
    assert empty.proxy.cache_dir == tmp_path.resolve() / "var" / "cache"
    assert empty.wheelhouse.path == tmp_path.resolve() / "var" / "wheelhouse"
    assert dict(empty.projects) == {}


# -- values ------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[proxy]\ncache_dir = c\n[wheelhouse]\npath = ../w\n", "etc/pb.ini")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../etc/pb.ini"))
    etc = (tmp_path / "etc").resolve()
    assert config.proxy.cache_dir == etc / "c"
    assert config.wheelhouse.path == etc / "../w"
    assert config.proxy.cache_dir.is_absolute()


def test_absolute_paths_stay_as_written(tmp_path: Path) -> None:
    cache = tmp_path / "abs-cache"
    config = load_text(tmp_path, f"[proxy]\ncache_dir = {cache}\n")
    assert config.proxy.cache_dir == cache


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("https://mirror.example/simple", "https://mirror.example/simple/"),
        ("https://mirror.example/pypi/simple", "https://mirror.example/pypi/simple/"),
        ("https://mirror.example/simple/", "https://mirror.example/simple/"),
        ("https://mirror.example", "https://mirror.example/"),
        ("http://127.0.0.1:3141/root/pypi/+simple", "http://127.0.0.1:3141/root/pypi/+simple/"),
    ],
)
def test_upstream_always_ends_with_a_slash(tmp_path: Path, written: str, expected: str) -> None:
    upstream = load_text(tmp_path, f"[proxy]\nupstream = {written}\n").proxy.upstream
    assert upstream == URL(expected)
    assert upstream.path.endswith("/")
    # What the slash is for: project pages resolve below the root, not beside it.
    assert str(upstream.join(URL("six/"))) == f"{expected}six/"


def test_all_proxy_options_are_read(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[proxy]\n"
        "host = 0.0.0.0\n"
        "port = 0\n"
        "page_ttl = 0\n"
        "root_ttl = 1.5\n"
        "negative_ttl = 1e3\n"
        "upstream_timeout = 0.25  # inline comment\n"
        "unsupported = redirect ; inline comment\n",
    )
    proxy = config.proxy
    assert (proxy.host, proxy.port) == ("0.0.0.0", 0)
    assert (proxy.page_ttl, proxy.root_ttl, proxy.negative_ttl) == (0, 1.5, 1000)
    assert proxy.upstream_timeout == 0.25
    assert proxy.unsupported == "redirect"


def test_builder_defaults_and_project_overrides(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        "[builder]\nwork_dir = b\npythons = cp311 cp312\nlatest = 2\n"
        "manylinux_aarch64_image = local/img:1\nenvironment = A=1\n"
        "[project:grpcio]\nversions = >=1.48,<2\nplatforms = macosx_arm64\n"
        "environment = GRPC_PYTHON_BUILD_WITH_CYTHON=1\n[project:lxml]\n",
    )
    builder = config.builder
    assert builder.work_dir == tmp_path / "b"
    assert builder.images == {"manylinux_aarch64": "local/img:1"}
    assert builder.parallel == 1
    assert str(builder.proxy_url) == "http://127.0.0.1:8080/simple/"
    assert builder.cibuildwheel == (sys.executable, "-m", "cibuildwheel")
    grpcio = config.projects[canonicalize_name("grpcio")].build
    assert str(grpcio.versions) == "<2,>=1.48"
    assert grpcio.pythons == ("cp311", "cp312")  # inherited
    assert grpcio.platforms == ("macosx_arm64",)  # overridden
    assert grpcio.latest == 2
    assert grpcio.environment == "GRPC_PYTHON_BUILD_WITH_CYTHON=1"
    lxml = config.projects[canonicalize_name("lxml")].build
    assert lxml.environment == "A=1"
    assert lxml.platforms == ("manylinux_x86_64", "manylinux_aarch64")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[builder]\nanything = goes\n", "unknown option anything"),
        ("[project:x]\nvesrions = 1\n", "unknown option vesrions"),
        ("[project:x]\nversions = >=>1\n", "versions"),
        ("[project:x]\npythons = py3\n", "pythons"),
        ("[project:x]\nplatforms = solaris_sparc\n", "platforms"),
        ("[builder]\nlatest = 0\n", "latest"),
        ("[builder]\nparallel = many\n", "parallel"),
        ("[builder]\nproxy_url = ftp://x/\n", "proxy_url"),
        ("[builder]\ncibuildwheel = python 'unclosed\n", "cibuildwheel: cannot split"),
        ("[builder]\ncibuildwheel =\n", "cibuildwheel: must not be empty"),
    ],
)
def test_bad_builder_options_are_config_errors(tmp_path: Path, text: str, match: str) -> None:
    assert_one_line_error(write(tmp_path, text), match)


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        ("", "http://127.0.0.1:8080/simple/"),
        ("port = 9090\n", "http://127.0.0.1:9090/simple/"),
        ("host = 0.0.0.0\nport = 3141\n", "http://127.0.0.1:3141/simple/"),
        ("host = ::\nport = 3141\n", "http://[::1]:3141/simple/"),
        ("host = 10.1.2.3\n", "http://10.1.2.3:8080/simple/"),
        ("host = ::1\nport = 81\n", "http://[::1]:81/simple/"),
        ("host = pypi.lan\n", "http://pypi.lan:8080/simple/"),
    ],
)
def test_proxy_url_defaults_to_this_configs_proxy(
    tmp_path: Path, proxy: str, expected: str
) -> None:
    config = load_text(tmp_path, f"[proxy]\n{proxy}")
    assert str(config.builder.proxy_url) == expected
    written = load_text(tmp_path, f"[proxy]\n{proxy}[builder]\nproxy_url = http://b:1/simple/\n")
    assert str(written.builder.proxy_url) == "http://b:1/simple/"


def test_the_cibuildwheel_command_is_split_as_a_shell_would(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[builder]\ncibuildwheel = '/opt/my tools/py' -m cibuildwheel\n")
    assert config.builder.cibuildwheel == ("/opt/my tools/py", "-m", "cibuildwheel")


def test_project_names_are_normalized(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[project:Foo_Bar]\n[project: Zope.Interface ]\n")
    assert sorted(config.projects) == ["foo-bar", "zope-interface"]
    assert config.projects[canonicalize_name("foo-bar")].name == "foo-bar"


def test_percent_signs_are_not_interpolated(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[proxy]\nupstream = https://mirror.example/a%20b/simple/\n")
    assert config.proxy.upstream.raw_path == "/a%20b/simple/"


# -- errors: one line, naming the file -----------------------------------------------------


def assert_one_line_error(path: Path, match: str) -> ConfigError:
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(str(path)), message
    return info.value


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("[proxy]\nport = http\n", "port: 'http' is not a TCP port", id="bad-port"),
        pytest.param("[proxy]\nport = 70000\n", "port: '70000' is not a TCP port", id="port-70000"),
        pytest.param("[proxy]\nport = -1\n", "port: '-1' is not a TCP port", id="port-negative"),
        pytest.param("[proxy]\nport = 80.0\n", "port: '80.0'", id="port-float"),
        pytest.param("[proxy]\nport =\n", "port: must not be empty", id="port-empty"),
        pytest.param("[proxy]\nhost =   \n", "host: must not be empty", id="host-empty"),
        pytest.param("[proxy]\npage_ttl = -1\n", "page_ttl: '-1' is out of range", id="ttl-neg"),
        pytest.param("[proxy]\nroot_ttl = nan\n", "root_ttl: 'nan' is out of range", id="nan"),
        pytest.param("[proxy]\nnegative_ttl = inf\n", "'inf' is out of range", id="inf"),
        pytest.param("[proxy]\npage_ttl = soon\n", "'soon' is not a number", id="ttl-word"),
        pytest.param("[proxy]\nupstream_timeout = 0\n", "upstream_timeout", id="timeout-0"),
        pytest.param(
            "[proxy]\nunsupported = foo\n", "unsupported must be proxy or redirect", id="unsup"
        ),
        pytest.param("[proxy]\nupstream = ftp://x\n", "not an http", id="upstream-ftp"),
        pytest.param("[proxy]\nupstream = pypi.org\n", "not an http", id="upstream-no-scheme"),
        pytest.param("[proxy]\nupstream = https://\n", "not an http", id="upstream-no-host"),
        pytest.param(
            "[proxy]\nupstream = https://x/simple/?a=b\n", "query or fragment", id="upstream-query"
        ),
        pytest.param(
            "[proxy]\nupstream = https://x/simple/#top\n", "query or fragment", id="upstream-frag"
        ),
        pytest.param("[prxy]\nport = 1\n", r"unknown section \[prxy\]", id="unknown-section"),
        pytest.param("[project:not a name!]\n", "not a valid project name", id="bad-project"),
        pytest.param("[project:]\n", "not a valid project name", id="empty-project"),
        pytest.param("[project:-lead]\n", "not a valid project name", id="leading-dash"),
        pytest.param(
            "[project:Foo_Bar]\n[project:foo-bar]\n",
            "project foo-bar is configured twice",
            id="duplicate-project",
        ),
        pytest.param("[proxy]\n[proxy]\n", "already exists", id="duplicate-section"),
        pytest.param("[proxy]\nport = 1\nport = 2\n", "already exists", id="duplicate-option"),
        pytest.param("this is not an INI file\nat all\n", "no section headers", id="not-ini"),
        pytest.param('{"proxy": {"port": 8080}}\n', "no section headers", id="json"),
        pytest.param("[proxy]\njust words here\n", "parsing errors", id="option-without-value"),
    ],
)
def test_invalid_config_raises_one_line_config_error(tmp_path: Path, text: str, match: str) -> None:
    assert_one_line_error(write(tmp_path, text), match)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    assert_one_line_error(tmp_path / "nope.ini", "no such file")


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    assert_one_line_error(tmp_path, "cannot read")


def test_binary_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.ini"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    assert_one_line_error(path, "cannot read")


def test_config_error_names_section_and_option(tmp_path: Path) -> None:
    error = assert_one_line_error(write(tmp_path, "[proxy]\npage_ttl = -5\n"), "page_ttl")
    assert "[proxy] page_ttl" in str(error)


def test_superscript_digit_port_is_a_config_error(tmp_path: Path) -> None:
    assert_one_line_error(write(tmp_path, "[proxy]\nport = ²\n"), "port")


# -- the command lines ---------------------------------------------------------------------


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("module", ["proxy", "builder"])
def test_cli_with_missing_config_exits_2_with_one_line(module: str) -> None:
    result = run_cli(module, "--config", "/nonexistent")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert result.stderr == f"pythonbuild-{module}: /nonexistent: no such file\n"
    assert result.stdout == ""


@pytest.mark.parametrize("module", ["proxy", "builder"])
@pytest.mark.parametrize(
    "text", ["[proxy]\nport = 70000\n", "not ini\n", "[project:a]\n[project:A]\n"]
)
def test_cli_with_invalid_config_exits_2_with_one_line(
    tmp_path: Path, module: str, text: str
) -> None:
    path = write(tmp_path, text)
    result = run_cli(module, "--config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"pythonbuild-{module}: {path}: ")


def test_builder_cli_lists_the_bundled_projects() -> None:
    result = run_cli("builder", "--config", str(BUNDLED))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "pythonbuild-builder: 3 supported project(s): grpcio, grpcio-tools, lxml\n"
    )


def test_misspelled_option_is_a_config_error(tmp_path: Path) -> None:
    assert_one_line_error(write(tmp_path, "[proxy]\npage_tll = 5\n"), "unknown option page_tll")


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.ini"
    path.write_bytes(b"\xef\xbb\xbf[proxy]\nport = 9000\n")
    assert load_config(path).proxy.port == 9000


@pytest.mark.parametrize(
    ("written", "expected"),
    [("50G", 50 << 30), ("512M", 512 << 20), ("1.5T", int(1.5 * (1 << 40))), ("4096", 4096)],
)
def test_cache_max_size_units(tmp_path: Path, written: str, expected: int) -> None:
    config = load_text(tmp_path, f"[proxy]\ncache_max_size = {written}\n")
    assert config.proxy.cache_max_size == expected


def test_workers_default_to_the_number_of_cores(tmp_path: Path) -> None:
    assert load_text(tmp_path, "[proxy]\n").proxy.workers == (os.cpu_count() or 1)
    assert load_text(tmp_path, "[proxy]\nworkers = 3\n").proxy.workers == 3


@pytest.mark.parametrize("written", ["0", "-1", "two", "1.5", "99999"])
def test_bad_workers_is_a_config_error(tmp_path: Path, written: str) -> None:
    assert_one_line_error(write(tmp_path, f"[proxy]\nworkers = {written}\n"), "workers")


def test_public_url_is_unset_by_default_and_ends_in_a_slash_when_set(tmp_path: Path) -> None:
    assert load_text(tmp_path, "[proxy]\n").proxy.public_url is None
    assert load_text(tmp_path, "[proxy]\npublic_url =\n").proxy.public_url is None
    config = load_text(tmp_path, "[proxy]\npublic_url = https://pypi.example.lan/pypi\n")
    assert str(config.proxy.public_url) == "https://pypi.example.lan/pypi/"


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("ftp://pypi.example.lan/", "not an http"),
        ("pypi.example.lan:8080", "not an http"),
        ("https://pypi.example.lan/?x=1", "query or fragment"),
        ("https://pypi.example.lan/#top", "query or fragment"),
        ("https://ci:secret@pypi.example.lan/", "user or password"),
    ],
)
def test_bad_public_url_is_a_config_error(tmp_path: Path, written: str, why: str) -> None:
    assert_one_line_error(write(tmp_path, f"[proxy]\npublic_url = {written}\n"), why)


@pytest.mark.parametrize("written", ["lots", "0", "-5G", "G", "1e400"])
def test_bad_cache_max_size_is_a_config_error(tmp_path: Path, written: str) -> None:
    assert_one_line_error(
        write(tmp_path, f"[proxy]\ncache_max_size = {written}\n"), "cache_max_size"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("proxy", "--no-such-flag"),
        ("proxy",),
        ("builder", "--config", str(BUNDLED), "no-such-command"),
        ("builder", "--config", str(BUNDLED), "publish"),
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
