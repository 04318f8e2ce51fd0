# -*- test-case-name: lbproxy.test.test_simulate -*-
"""
The simulator's output: a text table per scenario and a plot (latency CDF
per chooser, share per backend) as SVG written by hand, or as PNG through
matplotlib when it is installed (C{pip install lbproxy[simulate]}).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from lbproxy.simulate.engine import Result
from lbproxy.simulate.scenario import Scenario

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    milliseconds = seconds * 1000
    return f"{milliseconds:.1f}" if milliseconds < 10_000 else f"{milliseconds:.0f}"


def formatTable(scenario: Scenario, results: Sequence[Result]) -> str:
    """
    The table the simulator prints for C{scenario}: one row per chooser.
    """
    moved = scenario.removalTime() is not None
    header = [
        "chooser",
        "done",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max share",
        "min share",
    ]
    if moved:
        header.append("moved")
    rows = [header]
    for result in results:
        shares = result.shares()
        row = [
            result.chooser,
            str(result.completed),
            str(result.errors),
            f"{result.throughput:.0f}",
            _ms(result.percentile(0.5)),
            _ms(result.percentile(0.99)),
            _ms(result.percentile(0.999)),
            f"{max(shares) * 100:.1f} %",
            f"{min(shares) * 100:.1f} %",
        ]
        if moved:
            row.append("-" if result.moved is None else f"{result.moved * 100:.1f} %")
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        f"{scenario.name}: {scenario.description}",
        f"{scenario.requests} requests, seed {scenario.seed}, {len(scenario.backends)} backends "
        f"(mean share {100 / len(scenario.backends):.1f} %)",
        "",
    ]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _cdfPoints(result: Result, count: int = 200) -> list[tuple[float, float]]:
    """
    C{(latency, fraction)} points of C{result}'s latency CDF.
    """
    latencies = result.latencies
    if not latencies:
        return []
    points = []
    for step in range(count + 1):
        fraction = step / count
        index = min(len(latencies) - 1, int(fraction * (len(latencies) - 1)))
        points.append((latencies[index], fraction))
    return points


def writeSVG(path: Path, scenario: Scenario, results: Sequence[Result]) -> None:
    """
    Write the plot as a self-contained SVG, without any plotting library:
    left, the latency CDF per chooser on a logarithmic axis; right, each
    backend's share of the requests per chooser.
    """
    width, height = 1000, 420
    left = (70, 40, 440, 330)  # x, y, w, h of the CDF panel
    right = (590, 40, 380, 330)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">'
        f"{escape(scenario.name)}: latency CDF and share per backend</text>",
    ]
    positive = [r.latencies[0] for r in results if r.latencies] + [
        r.latencies[-1] for r in results if r.latencies
    ]
    low = math.floor(math.log10(max(min(positive), 1e-5))) if positive else -3
    high = math.ceil(math.log10(max(positive))) if positive else 0
    if high <= low:
        high = low + 1
    x0, y0, w, h = left

    def cdfX(seconds: float) -> float:
        return x0 + (math.log10(max(seconds, 10.0**low)) - low) / (high - low) * w

    parts.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    for decade in range(low, high + 1):
        x = cdfX(10.0**decade)
        label = f"{10.0**decade * 1000:g}"
        parts.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + h}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{y0 + h + 16}" text-anchor="middle">{label}</text>')
    for tick in range(0, 11, 2):
        y = y0 + h - tick / 10 * h
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{tick / 10:.1f}</text>')
    parts.append(
        f'<text x="{x0 + w / 2}" y="{y0 + h + 34}" text-anchor="middle">latency (ms, log)</text>'
    )
    for index, result in enumerate(results):
        color = _COLORS[index % len(_COLORS)]
        points = " ".join(
            f"{cdfX(latency):.1f},{y0 + h - fraction * h:.1f}"
            for latency, fraction in _cdfPoints(result)
        )
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"/>'
        )
        legendY = y0 + 10 + index * 16
        parts.append(
            f'<rect x="{x0 + 10}" y="{legendY}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x0 + 26}" y="{legendY + 9}">{escape(result.chooser)}</text>'
        )
    x0, y0, w, h = right
    parts.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    backends = len(scenario.backends)
    top = max((max(r.shares()) for r in results), default=1.0) or 1.0
    group = w / backends
    bar = group * 0.8 / max(len(results), 1)
    for index, result in enumerate(results):
        color = _COLORS[index % len(_COLORS)]
        for backend, share in enumerate(result.shares()):
            barHeight = share / top * (h - 10)
            x = x0 + backend * group + group * 0.1 + index * bar
            parts.append(
                f'<rect x="{x:.1f}" y="{y0 + h - barHeight:.1f}" width="{bar:.1f}" '
                f'height="{barHeight:.1f}" fill="{color}"/>'
            )
    for backend in range(backends):
        x = x0 + (backend + 0.5) * group
        parts.append(
            f'<text x="{x:.1f}" y="{y0 + h + 16}" text-anchor="middle">{backend + 1}</text>'
        )
    parts.append(
        f'<text x="{x0 + w / 2}" y="{y0 + h + 34}" text-anchor="middle">'
        f"backend (bar height: share, top = {top * 100:.1f} %)</text>"
    )
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def writePNG(path: Path, scenario: Scenario, results: Sequence[Result]) -> None:
    """
    Write the plot as a PNG with matplotlib.

    @raise ImportError: Without matplotlib (C{pip install lbproxy[simulate]}).
    """
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    from matplotlib import pyplot  # type: ignore[import-not-found, unused-ignore]

    figure, (cdf, shares) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    for result in results:
        points = _cdfPoints(result)
        cdf.plot([p[0] * 1000 for p in points], [p[1] for p in points], label=result.chooser)
    cdf.set_xscale("log")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction of requests")
    cdf.legend()
    backends = len(scenario.backends)
    width = 0.8 / max(len(results), 1)
    for index, result in enumerate(results):
        shares.bar(
            [b + index * width for b in range(backends)],
            [s * 100 for s in result.shares()],
            width,
            label=result.chooser,
        )
    shares.set_xlabel("backend")
    shares.set_ylabel("share of requests (%)")
    figure.suptitle(scenario.name)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def writePlot(path: Path, scenario: Scenario, results: Sequence[Result]) -> None:
    """
    Write the plot to C{path}: C{.png} through matplotlib, anything else as
    hand-written SVG.
    """
    if path.suffix.lower() == ".png":
        writePNG(path, scenario, results)
    else:
        writeSVG(path, scenario, results)


__all__ = ["formatTable", "writePNG", "writePlot", "writeSVG"]
