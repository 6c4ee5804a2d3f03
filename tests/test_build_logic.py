"""The builder's pure pieces: failure classification, exit codes, the engine label."""

from __future__ import annotations

import pytest

from builder.build import JOB_LABEL, _container_engine, classify, default_test_command


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
    assert _container_engine("docker", "j1") == f"docker; create_args: --label {JOB_LABEL}=j1"
    assert _container_engine("podman; create_args: --network=host", "j2") == (
        f"podman; create_args: --label {JOB_LABEL}=j2 --network=host"
    )


def test_default_test_command_has_no_placeholders_to_expand() -> None:
    command = default_test_command("yamlext")
    # cibuildwheel expands {project} and {package}: a brace would be mangled.
    assert "{" not in command and "}" not in command
    assert "md.distribution('yamlext')" in command
