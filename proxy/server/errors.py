"""Domain errors: what went wrong, in the proxy's words. None of them carries an HTTP
status; the edge (proxy.server.app) maps each to one, in one table.

As simple-repository's `errors.py` does: components raise these, the router answers.
The transport's own failures (UpstreamError, UpstreamTimeout) live beside the
transport in proxy.server.upstream; a bad client path raises
proxy.simple.names.InvalidProjectName.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of the errors a component raises for the edge to answer."""


class ProjectNotFound(DomainError):
    """Neither upstream nor the wheelhouse has a project of this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no project named {name}")
        self.name = name


class FileNotListed(DomainError):
    """The file is not on the project's page (nor one of our wheels)."""

    def __init__(self) -> None:
        super().__init__("no such file")


class NotAcceptable(DomainError):
    """Nothing the client's Accept (or ?format=) allows is a format we serve."""

    def __init__(self, offered: tuple[str, ...]) -> None:
        super().__init__(f"acceptable: {', '.join(offered)}")
        self.offered = offered


class Redirect(DomainError):
    """The answer is elsewhere: a normalized name, or upstream for unsupported projects.

    `permanent` is for what never changes (a name's normal form); anything that may
    change (a project becoming supported) is temporary, since pip caches a 301 for good.
    """

    def __init__(self, location: str, *, permanent: bool) -> None:
        super().__init__(location)
        self.location = location
        self.permanent = permanent


class FileUnavailable(DomainError):
    """A file could not be fetched or kept: upstream failed, lied, or the disk did."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransferFailed(DomainError):
    """A file failed after its response began: the transfer is aborted, never ended
    cleanly (there is no status left to choose)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
