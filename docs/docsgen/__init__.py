"""Generators of the docs site's reference pages and figures, run by docs/hooks.py at every
build (and importable by tests/docs). Nothing they make is committed: each page is made from
its source (crds/*.yaml, charts/kubemap/values.yaml, bench/RESULTS.md) when the site is built,
so a page cannot disagree with the file it documents."""
