"""The HTML report of a load test: one self-contained page, charts drawn as inline SVG by pygal.

Nothing on the page refers to anything outside it (no script, font, style sheet or image is fetched:
pygal's tooltip script is left out), so it opens from a file, an e-mail or an air-gapped machine.
Charts: throughput and latency percentiles against concurrency, and throughput and latency over time,
one line per level; then the figures as tables.
"""

from __future__ import annotations

import html
import os
import re
from typing import Any

from .figures import PERCENTILES, Level, LoadReport

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; }
td.l, th.l { text-align: left; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.charts figure { margin: 0; }
.note { color: #8a4b00; }
"""


def _chart(kind: str, title: str, **config: Any) -> Any:
    import pygal
    from pygal.style import CleanStyle

    cls = getattr(pygal, kind)
    return cls(
        js=[],  # no script from the network: the page must work offline
        disable_xml_declaration=True,
        width=540,
        height=340,
        style=CleanStyle,
        title=title,
        legend_at_bottom=True,
        print_values=False,
        show_dots=True,
        dots_size=2,
        value_formatter=_number,
        **config,
    )


def _log_labels(values: list[float | None]) -> list[float]:
    """1-2-5 labels from below the smallest to above the largest positive value (log charts)."""
    positive = [v for v in values if v is not None and v > 0]
    if not positive:
        return [1.0]
    low, high = min(positive), max(positive)
    labels = []
    decade = 0.001
    while decade <= high * 10:
        for step in (1, 2, 5):
            value = round(decade * step, 6)
            if low / 2.5 <= value <= high * 2.5:
                labels.append(value)
        decade *= 10
    return labels


def _number(value: float) -> str:
    return f"{value:,.3g}" if value < 100 else f"{value:,.0f}"


def _render(chart: Any) -> str:
    """The chart's SVG without pygal's script (its inline configuration for the tooltip script we leave
    out) and without its comments naming web sites."""
    svg: str = chart.render(is_unicode=True)
    svg = re.sub(r"<script\b.*?</script>", "", svg, flags=re.S)
    return re.sub(r"<!--.*?-->", "", svg, flags=re.S)


def charts(report: LoadReport) -> list[str]:
    """The four charts as SVG strings."""
    levels = report.levels
    labels = [str(lv.concurrency) for lv in levels]
    out = []
    tp = _chart(
        "Line",
        "Throughput against concurrency",
        x_title="associations",
        y_title="C-STOREs/s",
        include_x_axis=True,
    )
    tp.x_labels = labels
    tp.add("C-STOREs/s", [lv.stores_per_s for lv in levels])
    tp.add("MB/s", [lv.mb_per_s for lv in levels], secondary=True)
    out.append(_render(tp))
    lat = _chart("Line", "Latency against concurrency (ms, log)", x_title="associations", logarithmic=True)
    lat.x_labels = labels
    for p in PERCENTILES:
        name = f"p{p:g}"
        lat.add(name, [max(lv.latency_ms[name], 0.001) for lv in levels])
    lat.add("max", [max(lv.latency_ms["max"], 0.001) for lv in levels])
    lat.y_labels = _log_labels([v for lv in levels for v in lv.latency_ms.values()])
    out.append(_render(lat))
    # over time: one point per second of the measured window (by due time), one line per level
    seconds = max((len(lv.series) for lv in levels), default=0)
    ticks = [str(t + 1) for t in range(seconds)]
    over = _chart(
        "Line",
        "Throughput over time",
        x_title="second of the level",
        y_title="C-STOREs/s",
        include_x_axis=True,
    )
    over.x_labels = ticks
    for lv in levels:
        over.add(_name(lv), [s["stores_per_s"] for s in lv.series])
    out.append(_render(over))
    lat_time = _chart(
        "Line", "Latency over time (ms, log): p99 and max", x_title="second of the level", logarithmic=True
    )
    lat_time.x_labels = ticks
    lat_time.y_labels = _log_labels(
        [v for lv in levels for st in lv.series for v in (st["p99_ms"], st["max_ms"])]
    )
    for lv in levels:
        # a second without a response has no latency: a gap in the line
        lat_time.add(f"{_name(lv)} p99", [s["p99_ms"] if s["max_ms"] > 0 else None for s in lv.series])
        lat_time.add(f"{_name(lv)} max", [s["max_ms"] if s["max_ms"] > 0 else None for s in lv.series])
    out.append(_render(lat_time))
    return out


def _name(level: Level) -> str:
    return f"{level.concurrency} assoc"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th{' class=l' if i == 0 else ''}>{html.escape(h)}</th>" for i, h in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=l' if i == 0 else ''}>{html.escape(str(v))}</td>" for i, v in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def render_html(report: LoadReport) -> str:
    """The whole page."""
    s = report.settings
    mode = f"open loop at {s['rate_per_s']:g} requests/s" if s.get("rate_per_s") else "closed loop"
    stop = f"{s['count']} C-STOREs" if s.get("count") else f"{s['duration_s']:g} s"
    intro = (
        f"{report.files} file(s), {report.file_bytes:,} bytes, sent to {html.escape(report.peer)}:{report.port} "
        f"({html.escape(str(s.get('called_ae')))}); {mode}; each level {stop} after {s['warmup_s']:g} s of warm-up; "
        f"{'fresh UIDs per C-STORE' if report.fresh_uids else 'the files own UIDs'}; started {html.escape(report.started_at)}."
    )
    head = ["associations", "C-STORE/s", "MB/s", "p50", "p90", "p95", "p99", "p99.9", "max", "setup p50", "setup max",
            "answered", "failed", "gen CPU %", "gen CPU/req µs", "gen RSS MB"]  # fmt: skip
    rows = []
    for lv in report.levels:
        lat = lv.latency_ms
        rows.append(
            [lv.concurrency, f"{lv.stores_per_s:.1f}", f"{lv.mb_per_s:.2f}"]
            + [f"{lat[k]:.2f}" for k in ("p50", "p90", "p95", "p99", "p99.9", "max")]
            + [f"{lv.setup_ms['p50']:.2f}", f"{lv.setup_ms['max']:.2f}", lv.completed, lv.failed]
            + [
                f"{lv.generator.cpu_percent:.0f}",
                f"{lv.generator.cpu_per_request_us:.0f}",
                f"{lv.generator.rss_bytes / 1e6:.0f}",
            ]
        )
    detail = []
    for lv in report.levels:
        items = [f"{k}: {v}" for k, v in lv.statuses.items()]
        items += [f"{k}: {v}" for k, v in lv.failures.items()]
        items += [f"setup {k}: {v}" for k, v in lv.setup_failures.items()]
        detail.append(
            [lv.concurrency, ", ".join(items) or "-", lv.generator.note or "-", "; ".join(lv.errors) or "-"]
        )
    svgs = "".join(f"<figure>{svg}</figure>" for svg in charts(report))
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        f"<title>batchstore load: {html.escape(report.peer)}:{report.port}</title><style>{_STYLE}</style></head><body>"
        f"<h1>batchstore load: {html.escape(report.peer)}:{report.port}</h1><p>{intro}</p>"
        f"<h2>Per level</h2><p>Latency in ms, from each request's {'scheduled time' if s.get('rate_per_s') else 'send'} "
        "to its response (HDR histogram); association setup in ms; gen: the load generator's own processes.</p>"
        + _table(head, rows)
        + "<h2>Charts</h2><div class=charts>"
        + svgs
        + "</div>"
        + "<h2>Statuses, failures, notes</h2>"
        + _table(["associations", "DIMSE statuses and failures", "load generator", "errors"], detail)
        + "</body></html>\n"
    )


def write_html(report: LoadReport, path: str) -> None:
    """Write the page to `path` (a temporary file renamed into place)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(render_html(report))
    os.replace(tmp, path)
