"""The built site, as a reader sees it in headless Chromium: every page reachable from the
front page renders (a title, no ':::' left unexpanded, no script error), every image loads,
every internal link and anchor leads somewhere, and the search finds `as_completed`.

Chromium is Debian's package (scripts/docs installs it with apt-get when it is missing); the
check is skipped only when scripts/docs said no browser can be had here
(KUBEMAP_DOCS_NO_BROWSER=<why>), and says so loudly. Screenshots of a few pages go to
$KUBEMAP_DOCS_SCREENSHOTS when it is set (never into the repository).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest
from chromium import Browser, Page, find_chromium

pytestmark = pytest.mark.timeout(240)

PAGE_FACTS = """(() => {
  const article = document.querySelector('article.md-content__inner');
  return {
    title: document.title,
    h1: (document.querySelector('article h1') || {}).textContent || '',
    text: article ? article.innerText : '',
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src,
                                                    ok: i.complete && i.naturalWidth > 0})),
  };
})()"""


@dataclass
class Visited:
    url: str
    title: str
    h1: str
    text: str
    ids: set[str]
    links: list[str]
    broken_images: list[str]
    failed_requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def chromium() -> str:
    why = os.environ.get("KUBEMAP_DOCS_NO_BROWSER")
    binary = find_chromium()
    if binary is None and why:
        pytest.skip(f"NO BROWSER CHECK: {why}")
    assert binary, (
        "Chromium is not installed: `apt-get install -y chromium` (scripts/docs does it), or "
        "set KUBEMAP_DOCS_NO_BROWSER=<why> to skip this check"
    )
    return binary


@pytest.fixture(scope="session")
def browser(chromium: str) -> Iterator[Browser]:
    with Browser.start(chromium) as started:
        yield started


@pytest.fixture(scope="session")
def page(browser: Browser) -> Page:
    return browser.open()


def visit(page: Page, url: str, origin: str) -> Visited:
    page.navigate(url)
    page.poll("document.readyState === 'complete'")
    facts = page.evaluate(PAGE_FACTS)
    visited = Visited(
        url=url,
        title=facts["title"],
        h1=facts["h1"].strip(),
        text=facts["text"],
        ids=set(facts["ids"]),
        links=facts["links"],
        broken_images=[i["src"] for i in facts["images"] if not i["ok"]],
    )
    for event in page.drain():
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.responseReceived":
            response = params["response"]
            if response["url"].startswith(origin) and response["status"] >= 400:
                visited.failed_requests.append(f"{response['status']} {response['url']}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            visited.failed_requests.append(f"{params.get('errorText')} ({params.get('type')})")
        elif method == "Runtime.exceptionThrown":
            visited.errors.append(str(params["exceptionDetails"].get("text")))
    return visited


def is_page(url: str, origin: str) -> bool:
    path = urlsplit(url).path
    return url.startswith(origin) and (path.endswith("/") or path.endswith(".html"))


@pytest.fixture(scope="session")
def crawled(page: Page, served: str) -> dict[str, Visited]:
    """Every page reachable by links from the front page, visited once."""
    seen: dict[str, Visited] = {}
    queue = [served]
    while queue:
        url = queue.pop(0)
        if url in seen:
            continue
        visited = visit(page, url, served)
        seen[url] = visited
        for link in visited.links:
            target, _ = urldefrag(link)
            if is_page(target, served) and target not in seen and target not in queue:
                queue.append(target)
    shots = os.environ.get("KUBEMAP_DOCS_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        for url in list(seen)[:: max(1, len(seen) // 6)]:
            page.navigate(url)
            name = urlsplit(url).path.strip("/").replace("/", "-") or "index"
            page.screenshot(Path(shots) / f"{name}.png")
    return seen


def test_every_page_renders(crawled: dict[str, Visited], site: Path) -> None:
    built = {p.relative_to(site).parent.as_posix() for p in site.rglob("index.html")}
    assert len(crawled) >= len(built) - 1, "pages the navigation does not reach"  # 404.html
    problems = []
    for url, visited in crawled.items():
        if not visited.h1 or "kubemap" not in visited.title:
            problems.append(f"{url}: no heading or title ({visited.title!r})")
        if len(visited.text) < 200:
            problems.append(f"{url}: {len(visited.text)} characters of text")
        if "::: " in visited.text:
            problems.append(f"{url}: an unexpanded ':::' directive")
        problems += [f"{url}: script error {e}" for e in visited.errors]
        problems += [f"{url}: request failed: {r}" for r in visited.failed_requests]
    assert problems == []


def test_no_image_fails_to_load(crawled: dict[str, Visited]) -> None:
    broken = [f"{url}: {src}" for url, v in crawled.items() for src in v.broken_images]
    assert broken == []
    assert any("figures/" in link for v in crawled.values() for link in v.links) or any(
        "figures" in v.url for v in crawled.values()
    )


def test_no_internal_link_is_broken(crawled: dict[str, Visited], served: str) -> None:
    import urllib.error
    import urllib.request

    broken = []
    checked: dict[str, bool] = {}
    for url, visited in crawled.items():
        for link in visited.links:
            if not link.startswith(served):
                continue
            target, anchor = urldefrag(link)
            if target in crawled:
                if anchor and anchor not in crawled[target].ids:
                    broken.append(f"{url} -> {link}: no element with id {anchor!r}")
                continue
            if target not in checked:  # an asset or a file, not a page
                try:
                    urllib.request.urlopen(urljoin(served, target), timeout=10).close()
                    checked[target] = True
                except urllib.error.URLError:
                    checked[target] = False
            if not checked[target]:
                broken.append(f"{url} -> {link}")
    assert broken == []


def test_search_finds_as_completed(page: Page, served: str) -> None:
    page.navigate(served)
    page.evaluate("document.querySelector('.md-search__input').focus()")
    page.send("Input.insertText", text="as_completed")
    found = page.poll(
        "Array.from(document.querySelectorAll('.md-search-result__item'))"
        ".map(li => [li.querySelector('a').href, li.innerText])",
        timeout=20,
    )
    assert found, "the search found nothing for as_completed"
    assert any("as_completed" in text for _, text in found), found
    pages = {urldefrag(href)[0] for href, _ in found}
    assert any("reference/python" in p for p in pages), pages
    assert any("guides/" in p for p in pages), pages
