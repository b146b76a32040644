"""MkDocs hooks (mkdocs.yml `hooks:`): what the site makes at build time, and its links.

- index.md is README.md: the README is the front page, so they cannot say different things.
- reference/maptask.md, reference/workerpool.md and reference/chart-values.md are generated
  from crds/*.yaml and charts/kubemap/values.yaml (docs/docsgen/reference.py),
  reference/cli.md from the click commands (docs/docsgen/cli.py), and
  figures/*.png from bench/RESULTS.md (docs/docsgen/figures.py): made at every build and
  never committed, so nothing can drift from its source and `mkdocs serve` needs no step.
- A relative link to a repository file outside docs/ (`../../bench/RESULTS.md`, README's
  `examples/`) becomes a link to that file on the repository's site; one into docs/ from the
  README (`docs/guides/local.md`) becomes the page's own link. So the same markdown works on
  GitHub and on the site, and --strict still fails a link to a file that does not exist.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(DOCS))

from docsgen.cli import cli_page  # noqa: E402
from docsgen.figures import figures  # noqa: E402
from docsgen.reference import crd_page, values_page  # noqa: E402


def _cli() -> str:
    from kubemap.cli.main import main

    return cli_page(main)


GENERATED = {
    "reference/cli.md": _cli,
    "reference/maptask.md": lambda: crd_page(Path("crds/maptask.yaml")),
    "reference/workerpool.md": lambda: crd_page(Path("crds/workerpool.yaml")),
    "reference/chart-values.md": lambda: values_page(Path("charts/kubemap/values.yaml")),
}
# [text](target) and ![alt](target), not inside code: a target without a scheme or a leading /
_LINK = re.compile(r"(!?\[[^\]\n]*\]\()([^)\s#]+)(#[^)\s]*)?\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
# test="..." and why="..." in a fence's header say where tests/docs runs the block; SuperFences
# would refuse a header with options it does not know and render the block as text
_FENCE_OPTIONS = re.compile(r'^(\s*```\S*)((?:\s+(?:test|why)=(["\']).*?\3)+)\s*$', re.M)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    cwd = os.getcwd()
    os.chdir(REPO)  # the generators name their sources relative to the repository
    try:
        readme = (REPO / "README.md").read_text()
        files.append(File.generated(config, "index.md", content=readme))
        for uri, make in GENERATED.items():
            files.append(File.generated(config, uri, content=make()))
        for name, png in figures(REPO / "bench" / "RESULTS.md").items():
            files.append(File.generated(config, f"figures/{name}.png", content=png))
    finally:
        os.chdir(cwd)
    return files


def _source_dir(page: Page) -> str:
    """Where the page's markdown sits in the repository, for resolving its relative links."""
    if page.file.src_uri == "index.md":
        return ""  # README.md, at the root
    return posixpath.dirname(posixpath.join("docs", page.file.src_uri))


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    repo_url = str(config.extra["repository"]).rstrip("/")
    here = _source_dir(page)
    page_dir = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        opener, target, anchor = match[1], match[2], match[3] or ""
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return match[0]
        in_repo = posixpath.normpath(posixpath.join(here, target))
        if in_repo.startswith("../"):
            raise PluginError(f"{page.file.src_uri}: link {target!r} leaves the repository")
        if in_repo == "docs" or in_repo.startswith("docs/"):
            inside = posixpath.relpath(in_repo, "docs")
            return f"{opener}{posixpath.relpath(inside, page_dir or '.')}{anchor})"
        if not (REPO / in_repo).exists():
            raise PluginError(f"{page.file.src_uri}: link {target!r}: {in_repo} does not exist")
        kind = "tree" if (REPO / in_repo).is_dir() else "blob"
        return f"{opener}{repo_url}/{kind}/main/{in_repo}{anchor})"

    markdown = _FENCE_OPTIONS.sub(r"\1", markdown)
    # links inside code spans and fences stay as they are
    out, last = [], 0
    protected = [m.span() for m in _FENCE.finditer(markdown)]
    protected += [
        m.span()
        for m in _CODE.finditer(markdown)
        if not any(a <= m.start() < b for a, b in protected)
    ]
    for match in _LINK.finditer(markdown):
        if any(a <= match.start() < b for a, b in protected):
            continue
        out.append(markdown[last : match.start()])
        out.append(rewrite(match))
        last = match.end()
    out.append(markdown[last:])
    return "".join(out)
