"""Server-side SVG bar charts of traffic: no JavaScript library, no CDN.

``bar_chart()`` turns [{period, rx, tx}] (as ``accounting.traffic`` returns
them) into an SVG string with one stacked bar per period: download (what the
server sent, ``tx``) below, upload (``rx``) on top.  Every piece of text goes
through ``html.escape``, so a label can never become markup.  Colours come
from CSS classes (``chart-down``, ``chart-up``) with fill attributes as a
fallback, so the page's stylesheet can theme them.
"""

import datetime
import html
import math

from . import accounting

UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def format_bytes(count):
    """1234567 -> '1.2 MB' (decimal units, like the quota)."""
    count = float(count or 0)
    unit = 0
    while count >= 1000 and unit < len(UNITS) - 1:
        count /= 1000
        unit += 1
    if unit == 0:
        return f"{int(count)} B"
    return f"{count:.1f} {UNITS[unit]}" if count < 100 else f"{count:.0f} {UNITS[unit]}"


def _nice_ceiling(value):
    """The smallest 1, 2 or 5 x 10^n at or above value (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def _e(text):
    return html.escape(str(text), quote=True)


def bar_chart(points, title, width=640, height=220, label=lambda period: period, max_labels=12):
    """An SVG stacked bar chart of [{period, rx, tx}]; returns the markup as a string."""
    left, right, top, bottom = 64, 8, 24, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([p["rx"] + p["tx"] for p in points] or [0])
    ceiling = _nice_ceiling(peak)
    total_rx = sum(p["rx"] for p in points)
    total_tx = sum(p["tx"] for p in points)
    summary = f"{title}: {format_bytes(total_tx)} down, {format_bytes(total_rx)} up"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{_e(summary)}">',
        f"<title>{_e(summary)}</title>",
        f'<text class="chart-title" x="{left}" y="16" font-size="13">{_e(title)}</text>',
    ]
    for i in range(5):                                    # horizontal grid with byte labels
        value = ceiling * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line class="chart-grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#8884" stroke-width="1"/>')
        parts.append(f'<text class="chart-axis" x="{left - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{_e(format_bytes(value))}</text>')
    if points:
        slot = plot_w / len(points)
        bar = max(1.0, slot * 0.8)
        every = max(1, math.ceil(len(points) / max_labels))
        for index, point in enumerate(points):
            x = left + index * slot + (slot - bar) / 2
            down_h = plot_h * point["tx"] / ceiling
            up_h = plot_h * point["rx"] / ceiling
            base = top + plot_h
            tip = (f"{label(point['period'])}: {format_bytes(point['tx'])} down, "
                   f"{format_bytes(point['rx'])} up")
            parts.append(f"<g><title>{_e(tip)}</title>")
            if down_h > 0:
                parts.append(f'<rect class="chart-down" x="{x:.1f}" y="{base - down_h:.1f}" width="{bar:.1f}" '
                             f'height="{down_h:.1f}" fill="#3b82f6"/>')
            if up_h > 0:
                parts.append(f'<rect class="chart-up" x="{x:.1f}" y="{base - down_h - up_h:.1f}" '
                             f'width="{bar:.1f}" height="{up_h:.1f}" fill="#f59e0b"/>')
            parts.append("</g>")
            if index % every == 0:
                parts.append(f'<text class="chart-axis" x="{x + bar / 2:.1f}" y="{height - bottom + 16}" '
                             f'font-size="11" text-anchor="middle">{_e(label(point["period"]))}</text>')
    else:
        parts.append(f'<text class="chart-axis" x="{left + plot_w / 2}" y="{top + plot_h / 2}" font-size="12" '
                     f'text-anchor="middle">no traffic yet</text>')
    legend_y = height - 8
    parts += [
        f'<rect class="chart-down" x="{left}" y="{legend_y - 9}" width="10" height="10" fill="#3b82f6"/>',
        f'<text class="chart-axis" x="{left + 14}" y="{legend_y}" font-size="11">download '
        f'{_e(format_bytes(total_tx))}</text>',
        f'<rect class="chart-up" x="{left + 170}" y="{legend_y - 9}" width="10" height="10" fill="#f59e0b"/>',
        f'<text class="chart-axis" x="{left + 184}" y="{legend_y}" font-size="11">upload '
        f'{_e(format_bytes(total_rx))}</text>',
        "</svg>",
    ]
    return "\n".join(parts)


def client_daily_chart(db, client_id, today=None, days=30):
    """The last `days` days of one client, as SVG."""
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    start = today - datetime.timedelta(days=days - 1)
    points = accounting.traffic(db, client_id, start, today, "day")
    return bar_chart(points, f"Traffic by day, last {days} days", label=lambda day: day[5:])


def client_monthly_chart(db, client_id, today=None, months=12):
    """The last `months` calendar months of one client, as SVG."""
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    year, month = today.year, today.month - (months - 1)
    while month < 1:
        year, month = year - 1, month + 12
    points = accounting.traffic(db, client_id, datetime.date(year, month, 1), today, "month")
    return bar_chart(points, f"Traffic by month, last {months} months", label=lambda m: m[2:])
