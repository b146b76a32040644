"""The plots of the reliability and performance page, drawn with matplotlib from the tables
of bench/RESULTS.md (the benchmarks and chaos runs write their figures there).

    .venv/bin/python docs/docsgen/figures.py OUTDIR     # writes OUTDIR/<name>.png

docs/hooks.py calls figures() at every build, so a re-measured table redraws its plot.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the PNGs are made in memory
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "RESULTS.md"


@dataclass(frozen=True)
class Table:
    heading: str  # the nearest heading above it
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        return [row[self.header.index(name)] for row in self.rows]


def tables(markdown: str) -> list[Table]:
    """Every pipe table of a markdown text, with the heading it sits under."""
    found: list[Table] = []
    heading = ""
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1]):
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            found.append(Table(heading, header, rows))
            continue
        i += 1
    return found


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def number(cell: str) -> float:
    """The first number in a cell: '643.2' -> 643.2, '1,000' -> 1000, '105 MB' -> 105."""
    match = re.search(r"-?\d[\d,]*(?:\.\d+)?", cell)
    if not match:
        raise ValueError(f"no number in table cell {cell!r}")
    return float(match[0].replace(",", ""))


def find(all_tables: list[Table], heading: str, first_column: str, has: str = "") -> Table:
    """The first table under a heading containing `heading` whose first header cell is
    `first_column` (and with a column named `has`): a renamed table fails loudly."""
    for table in all_tables:
        if (
            heading in table.heading
            and table.header[0] == first_column
            and (not has or has in table.header)
        ):
            return table
    raise LookupError(
        f"bench/RESULTS.md has no table {first_column!r} under a heading with {heading!r}"
    )


def _png(fig: plt.Figure) -> bytes:
    out = io.BytesIO()
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def pool_vs_pods(all_tables: list[Table]) -> bytes:
    """1,000 items of 10 ms on 8 workers: warm pool, one pod per index, Indexed Job."""
    table = [t for t in all_tables if "Warm pools" in t.heading and t.header[0] == "run"][1]
    rows = [r for r in table.rows if number(r[1]) == 1000]
    names = [
        r[0]
        .replace(" (second task on the pool)", "\n(second task)")
        .replace(" (one pod per index)", "\n(pod per index)")
        .replace(", one pod per index", "\none pod per index")
        for r in rows
    ]
    wall = [number(r[table.header.index("wall (s)")]) for r in rows]
    writes = [number(r[table.header.index("API writes")]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.bar(names, wall, color=["#2e7d32", "#c62828", "#ef6c00"][: len(rows)])
    left.set_yscale("log")
    left.set_ylabel("seconds, submit to results (log)")
    left.set_title("1,000 items of 10 ms, 8 workers: wall")
    right.bar(names, writes, color=["#2e7d32", "#c62828", "#ef6c00"][: len(rows)])
    right.set_yscale("log")
    right.set_ylabel("API writes (log)")
    right.set_title("API writes the run caused")
    for axis, values in ((left, wall), (right, writes)):
        for x, y in enumerate(values):
            axis.annotate(f"{y:,g}", (x, y), ha="center", va="bottom", fontsize=8)
        axis.tick_params(axis="x", labelsize=8)
    return _png(fig)


def pool_10k(all_tables: list[Table]) -> bytes:
    """10,000 items of 10 ms on 8 workers, against the ideal (items x 10 ms / workers)."""
    table = find(all_tables, "Warm pools", "run", "x ideal")
    rows = [r for r in table.rows if number(r[1]) == 10000]
    names = [r[0].split(" (")[0].replace("`", "") for r in rows]
    wall = [number(r[table.header.index("wall (s)")]) for r in rows]
    ideal = number(rows[0][table.header.index("ideal (s)")])
    fig, axis = plt.subplots(figsize=(7, 3.4))
    axis.barh(names, wall, color="#1565c0")
    axis.axvline(ideal, color="#555", linestyle="--", label=f"ideal {ideal:g} s")
    for y, x in enumerate(wall):
        axis.annotate(
            f"{x:g} s ({x / ideal:.2f}x)",
            (x, y),
            va="center",
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=8,
        )
    axis.set_xlabel("seconds, submit to results")
    axis.set_title("10,000 items of 10 ms, 8 workers")
    axis.set_xlim(0, max(wall) * 1.35)
    axis.invert_yaxis()
    axis.legend(loc="upper right")
    return _png(fig)


def scale(all_tables: list[Table]) -> bytes:
    """The scale envelope: submit time and memory as the item count grows."""
    table = find(all_tables, "Scale envelope", "run")
    items = [number(r[0]) for r in table.rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(items, [number(c) for c in table.column("submit")], "o-", label="submit (s)")
    left.plot(
        items,
        [number(c) for c in table.column("wall (submit to Succeeded)")],
        "s-",
        label="wall (s)",
    )
    left.set_xscale("log")
    left.set_xlabel("items")
    left.set_title("time")
    left.legend()
    right.plot(
        items, [number(c) for c in table.column("SDK peak RSS")], "o-", label="SDK peak RSS (MB)"
    )
    right.plot(
        items,
        [number(c) for c in table.column("operator peak RSS")],
        "s-",
        label="operator peak RSS (MB)",
    )
    right.set_xscale("log")
    right.set_ylim(0, None)
    right.set_xlabel("items")
    right.set_title("memory")
    right.legend()
    return _png(fig)


def chaos_runs(all_tables: list[Table]) -> bytes:
    """The whole fault-injection suite, run after run: tests passed and wall time."""
    table = find(all_tables, "Faults survived", "run", "code")
    runs = [r[0] for r in table.rows]
    wall = [number(c) for c in table.column("wall")]
    passed = table.column("passed")
    fig, axis = plt.subplots(figsize=(7, 3.2))
    axis.bar(runs, wall, color="#6a1b9a")
    for x, (y, label) in enumerate(zip(wall, passed, strict=True)):
        axis.annotate(label, (x, y), ha="center", va="bottom", fontsize=8)
    axis.set_ylim(0, max(wall) * 1.15)  # room for the labels
    axis.set_xlabel("run of pytest -m chaos tests/chaos")
    axis.set_ylabel("wall (s)")
    axis.set_title("Chaos suite: tests passed per run")
    return _png(fig)


FIGURES: dict[str, Callable[[list[Table]], bytes]] = {
    "pool-vs-pods": pool_vs_pods,
    "pool-10k": pool_10k,
    "scale": scale,
    "chaos-runs": chaos_runs,
}


def figures(results: Path = RESULTS) -> dict[str, bytes]:
    """name -> PNG bytes of every figure."""
    found = tables(results.read_text())
    return {name: draw(found) for name, draw in FIGURES.items()}


if __name__ == "__main__":
    outdir = Path(sys.argv[1] if len(sys.argv) > 1 else "figures")
    outdir.mkdir(parents=True, exist_ok=True)
    for name, png in figures().items():
        (outdir / f"{name}.png").write_bytes(png)
        print(outdir / f"{name}.png")
