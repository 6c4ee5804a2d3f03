"""The edge: every domain error a component can raise has exactly one answer, in one table."""

from __future__ import annotations

import pytest

from proxy.server import errors
from proxy.server.app import answer_for
from proxy.server.upstream import UpstreamError, UpstreamTimeout
from proxy.simple.names import InvalidProjectName


def _subclasses(base: type[Exception]) -> list[type[Exception]]:
    found = []
    for sub in base.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def _instance(kind: type[Exception]) -> Exception:
    samples: dict[type[Exception], Exception] = {
        errors.ProjectNotFound: errors.ProjectNotFound("demo"),
        errors.FileNotListed: errors.FileNotListed(),
        errors.NotAcceptable: errors.NotAcceptable(("text/html",)),
        errors.Redirect: errors.Redirect("/simple/demo/", permanent=True),
        errors.FileUnavailable: errors.FileUnavailable("gone"),
    }
    if kind in samples:
        return samples[kind]
    try:
        return kind("why")
    except TypeError:
        return kind("kind", "why")


@pytest.mark.parametrize(
    "kind",
    [k for k in _subclasses(errors.DomainError) if k is not errors.TransferFailed],
    ids=lambda k: k.__name__,
)
def test_every_domain_error_has_an_answer(kind: type[Exception]) -> None:
    assert answer_for(_instance(kind)) is not None


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidProjectName("not a valid project name"), 404),
        (errors.ProjectNotFound("demo"), 404),
        (errors.FileNotListed(), 404),
        (errors.NotAcceptable(("text/html",)), 406),
        (errors.Redirect("/simple/demo/", permanent=True), 301),
        (errors.Redirect("https://pypi.org/simple/demo/", permanent=False), 307),
        (UpstreamError("status", "answered 500"), 502),
        (UpstreamTimeout("timeout", "took over 30s"), 504),
        (errors.FileUnavailable("hash mismatch"), 502),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_statuses_are_the_ones_the_readme_promises(error: Exception, status: int) -> None:
    answer = answer_for(error)
    assert answer is not None
    assert answer.status == status
    if isinstance(error, errors.Redirect):
        assert answer.headers["Location"] == error.location
    if isinstance(error, UpstreamError):
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.text is not None
        assert str(error) in answer.text  # the reason, said


def test_a_transfer_failure_and_a_bug_have_no_status() -> None:
    # A transfer that failed mid-way is aborted by its handler; a bug is a 500.
    assert answer_for(errors.TransferFailed("cut")) is None
    assert answer_for(KeyError("bug")) is None
