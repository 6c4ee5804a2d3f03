"""The builder's pure pieces: failure classification, exit codes, the engine label."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.classify import classify
from builder.invocation import (
    JOB_LABEL,
    CibwOptions,
    GroupRun,
    Recipe,
    compose,
    default_test_command,
    labelled_engine,
)
from proxy.platforms import Identifier


@pytest.mark.parametrize(
    ("log", "code", "kind", "detail"),
    [
        ("", 5, "pure Python", "the project builds a pure-Python wheel"),
        ("", 3, "unsupported interpreter", "cibuildwheel matched nothing"),
        ("Building wheel...\n", None, "timeout", "longer than build_timeout"),
        (
            "ext.c:3:10: fatal error: yaml.h: No such file or directory\n",
            1,
            "missing system library",
            "header yaml.h not found",
        ),
        (
            "/usr/bin/ld: cannot find -lssl: No such file or directory\n",
            1,
            "missing system library",
            "library ssl not found",
        ),
        (
            "ERROR: Package 'x' requires a different Python: 3.13.0 not in '<3.12'\n",
            1,
            "unsupported interpreter",
            "do not support this Python",
        ),
        (
            "Repairing wheel...\n ok\nTesting wheel...\nImportError: boom\n",
            1,
            "test failed",
            "its test command failed",
        ),
        (
            "Building wheel...\nerror: command '/usr/bin/gcc' failed with exit code 1\n",
            1,
            "compiler error",
            "gcc failed",
        ),
        ("something else went wrong: error 42\n", 1, "build failed", "error 42"),
    ],
)
def test_failures_are_classified_from_the_log(
    log: str, code: int | None, kind: str, detail: str
) -> None:
    got_kind, got_detail = classify(log, code)
    assert got_kind == kind
    assert detail in got_detail
    assert "\n" not in got_detail


def test_testing_after_a_repair_failure_is_not_a_test_failure() -> None:
    log = "Testing wheel...\n(a previous identifier)\nRepairing wheel...\nerror: auditwheel\n"
    assert classify(log, 1)[0] != "test failed"


def test_every_container_carries_the_job_label_and_keeps_create_args() -> None:
    assert labelled_engine("docker", "j1") == f"docker; create_args: --label {JOB_LABEL}=j1"
    assert labelled_engine("podman; create_args: --network=host", "j2") == (
        f"podman; create_args: --label {JOB_LABEL}=j2 --network=host"
    )


def test_default_test_command_has_no_placeholders_to_expand() -> None:
    command = default_test_command("yamlext")
    # cibuildwheel expands {project} and {package}: a brace would be mangled.
    assert "{" not in command and "}" not in command
    assert "md.distribution('yamlext')" in command


_OPTIONS = CibwOptions(
    command=("/venv/bin/python", "-m", "cibuildwheel"),
    proxy_url="http://10.0.0.2:8080/simple/",
    container_engine="docker; create_args: --network=host",
    images={"manylinux_aarch64": "local/aarch64"},
)


def _run(*identifiers: str, recipe: Recipe | None = None) -> GroupRun:
    return GroupRun(
        project="yamlext",
        sdist=Path("/w/sdists/yamlext-1.0.tar.gz"),
        identifiers=tuple(Identifier.parse(i) for i in identifiers),
        recipe=recipe or Recipe(),
        output_dir=Path("/w/staging/j1"),
        label="j1",
    )


@pytest.mark.parametrize(
    ("base", "run", "options", "command_tail", "expected", "absent"),
    [
        (  # Linux: the engine carries the label, the image its arch's variable
            {"PATH": "/bin", "CIBW_SKIP": "*"},
            _run("cp312-manylinux_aarch64", "cp313-manylinux_aarch64"),
            _OPTIONS,
            ("--platform", "linux"),
            {
                "PATH": "/bin",
                "CIBW_BUILD": "cp312-manylinux_aarch64 cp313-manylinux_aarch64",
                "CIBW_ARCHS": "aarch64",
                "CIBW_ENVIRONMENT": "PIP_INDEX_URL=http://10.0.0.2:8080/simple/",
                "CIBW_CONTAINER_ENGINE": f"docker; create_args: --label {JOB_LABEL}=j1 "
                "--network=host",
                "CIBW_MANYLINUX_AARCH64_IMAGE": "local/aarch64",
                "CIBW_BUILD_VERBOSITY": "1",
            },
            ("CIBW_SKIP", "CIBW_BEFORE_BUILD"),
        ),
        (  # the project's recipe: its environment after the index, its hooks and test
            {},
            _run(
                "cp311-musllinux_x86_64",
                recipe=Recipe(
                    environment='CFLAGS="-O2 -g"',
                    before_build="yum -y install x",
                    test_command="pytest {project}/tests",
                ),
            ),
            _OPTIONS,
            ("--platform", "linux"),
            {
                "CIBW_ENVIRONMENT": 'PIP_INDEX_URL=http://10.0.0.2:8080/simple/ CFLAGS="-O2 -g"',
                "CIBW_BEFORE_BUILD": "yum -y install x",
                "CIBW_TEST_COMMAND": "pytest {project}/tests",
            },
            ("CIBW_MUSLLINUX_X86_64_IMAGE",),
        ),
        (  # macOS: no container engine, no image; a URL that needs quoting is quoted
            {"HOME": "/h"},
            _run("cp312-macosx_arm64"),
            CibwOptions(
                command=("cibuildwheel",), proxy_url="http://h/simple/?a b", container_engine="x"
            ),
            ("--platform", "macos"),
            {
                "HOME": "/h",
                "CIBW_ARCHS": "arm64",
                "CIBW_ENVIRONMENT": "PIP_INDEX_URL='http://h/simple/?a b'",
            },
            ("CIBW_CONTAINER_ENGINE",),
        ),
    ],
)
def test_the_invocation_is_composed_from_environment_run_and_options(
    base: dict[str, str],
    run: GroupRun,
    options: CibwOptions,
    command_tail: tuple[str, str],
    expected: dict[str, str],
    absent: tuple[str, ...],
) -> None:
    invocation = compose(base, run, options)
    assert invocation.command == (
        *options.command,
        *command_tail,
        "--output-dir",
        "/w/staging/j1",
        "/w/sdists/yamlext-1.0.tar.gz",
    )
    for key, value in expected.items():
        assert invocation.env[key] == value, key
    for key in absent:
        assert key not in invocation.env
    assert "md.distribution('yamlext')" in invocation.env["CIBW_TEST_COMMAND"] or (
        run.recipe.test_command == invocation.env["CIBW_TEST_COMMAND"]
    )
    assert base.get("CIBW_SKIP") in (None, "*")  # the caller's mapping is left as it was


def test_one_run_is_one_os_and_arch() -> None:
    with pytest.raises(ValueError, match="one OS and arch"):
        _run("cp312-manylinux_x86_64", "cp312-manylinux_aarch64")


LOGS = Path(__file__).parent / "fixtures" / "cibw-logs"


@pytest.mark.parametrize(
    ("log", "detail"),
    [
        (  # cibuildwheel 4.3 with docker 20.10: a registry that refuses the connection
            "image-cannot-be-pulled.log",
            "image 127.0.0.1:9/nonexistent:1 cannot be pulled: Error response from daemon: "
            'Get "http://127.0.0.1:9/v2/": dial tcp 127.0.0.1:9: connect: connection refused',
        ),
        (
            "container-cannot-start.log",
            "the container engine cannot start a container: Error response from daemon: "
            "Unknown runtime specified no-such-runtime",
        ),
        (
            "engine-not-answering.log",
            "the container engine does not answer: Cannot connect to the Docker daemon at "
            "unix:///tmp/nonexistent.sock. Is the docker daemon running?",
        ),
    ],
)
def test_infrastructure_failures_carry_the_cause_from_the_real_log(log: str, detail: str) -> None:
    kind, got = classify((LOGS / log).read_text(), 1)
    assert (kind, got) == ("infrastructure", detail)


def test_a_failing_command_line_is_never_the_detail() -> None:
    log = (
        "Building wheel...\nsomething broke\n"
        "cibuildwheel: error: Command ['python', '-m', 'build', '--outdir', '/tmp/x-error-y',"
        " '--no-isolation'] failed with code 1.\n"
    )
    kind, detail = classify(log, 1)
    assert kind == "build failed"
    assert "Command [" not in detail
