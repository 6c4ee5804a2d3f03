"""Headless Chromium (Debian's `chromium`) for the status pages' tests: the DOM after
rendering (`--dump-dom`) and screenshots, and a small reader of that DOM."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import client_env, run

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def chromium() -> str:
    """The browser, or a skip when PYTHONBUILD_SKIP_BROWSER=1; missing otherwise fails."""
    if os.environ.get("PYTHONBUILD_SKIP_BROWSER") == "1":
        pytest.skip("PYTHONBUILD_SKIP_BROWSER=1: the status pages are not tried in a browser")
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed (.ci/check installs it: apt-get install chromium)")
    return found


async def _chromium(home: Path, *args: str) -> str:
    profile = home / "profile"
    code, out = await run(
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-extensions", "--disable-background-networking",
        "--no-proxy-server", f"--user-data-dir={profile}", *args,
        env={**client_env(home), "LANG": "C.UTF-8"},
    )  # fmt: skip
    assert code == 0, out
    return out


async def dump_dom(url: str, home: Path) -> str:
    out = await _chromium(home, "--dump-dom", url)
    # Chromium's own log lines (dbus, ...) share the output; the DOM starts at <html.
    start = out.find("<html")
    assert start >= 0, out
    return out[start : out.rindex("</html>") + len("</html>")]


async def screenshot(url: str, home: Path, name: str, width: int, height: int) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    await _chromium(home, f"--screenshot={path}", f"--window-size={width},{height}",
                    "--hide-scrollbars", url)  # fmt: skip
    assert path.is_file() and path.stat().st_size > 1000, path
    print(f"screenshot: {path}")
    return path


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""
    children: list[Element] = field(default_factory=list)


class Dom(HTMLParser):
    """The dumped DOM as a tree of elements with their text (what a person reads)."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr", "wbr"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self._stack = [self.root]
        self.all: list[Element] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._gap()
        element = Element(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(element)
        self.all.append(element)
        if tag not in self.VOID:
            self._stack.append(element)

    def _gap(self) -> None:
        # Elements are apart as a reader sees them (table cells, lines): a space in the text.
        for element in self._stack:
            element.text += " "

    def handle_endtag(self, tag: str) -> None:
        self._gap()
        for i in range(len(self._stack) - 1, 0, -1):
            if self._stack[i].tag == tag:
                del self._stack[i:]
                return

    def handle_data(self, data: str) -> None:
        for element in self._stack:
            element.text += data

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        key = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [
            e for e in self.all
            if (tag is None or e.tag == tag) and all(e.attrs.get(k) == v for k, v in key.items())
        ]  # fmt: skip

    def one(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find(tag, **attrs)
        assert len(found) == 1, (tag, attrs, found)
        return found[0]


def text_of(element: Element) -> str:
    return " ".join(element.text.split())


def links(element: Element) -> list[str]:
    found = [element.attrs["href"]] if element.tag == "a" and "href" in element.attrs else []
    for child in element.children:
        found += links(child)
    return found
