"""``ucsproxy report``: the chaos verdicts as a terminal summary, JSON lines, or one HTML page.

The judging is :mod:`ucsproxy.verdicts`; this module only loads rows and renders.
The HTML page draws its charts with matplotlib's SVG backend (the optional extra
``ucsproxy[report]``) and inlines them, so the page needs no network.
"""

from __future__ import annotations

import html
import io
import json
from collections import Counter
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Sequence

from .verdicts import (GOOD, SEVERITY, Request, Thresholds, Verdict, judge, mailbox_key, tally, to_requests,
                       worst_first)

INSTALL_HINT = ("the HTML report needs matplotlib: pip install 'ucsproxy[report]' "
                "(from a checkout: pip install -e '.[report]')")


class MissingExtra(RuntimeError):
    """The optional charting dependency is not installed."""


def load_rows(source: str | Path) -> list[dict[str, Any]]:
    """Rows of a log or fixture directory, with the same readers replay uses."""
    from .replay import load_rows as replay_rows

    return replay_rows(source)


# ---------------------------------------------------------------------------
# Terminal


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counts.items())


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def summary_text(verdicts: list[Verdict], worst: int = 15) -> str:
    """Counts per mailbox and per fault kind (worst first), then the worst cases."""
    if not verdicts:
        return "no injected faults in this log (delays alone are not judged)"
    bad = [v for v in verdicts if not v.good]
    mailboxes = {v.mailbox or "-" for v in verdicts}
    out = [f"{len(verdicts)} injected fault(s) in {len(mailboxes)} mailbox(es); "
           f"{len(bad)} with a verdict against the client"
           + (f" ({_counts(dict(sorted(Counter(v.verdict for v in bad).items(), key=lambda kv: SEVERITY.index(kv[0]))))})"
              if bad else "")]
    for title, by in (("MAILBOX", "mailbox"), ("FAULT", "action")):
        out.append("")
        rows = [(title, "FAULTS", "VERDICTS (worst first)")]
        for key, counts in tally(verdicts, by).items():
            rows.append((key, str(sum(counts.values())), _counts(counts)))
        out.extend(_table(rows))
    cases = worst_first(bad)[:worst]
    if cases:
        out.append("")
        out.append("WORST CASES" + (f" ({worst} of {len(bad)})" if len(bad) > worst else ""))
        cells: list[tuple[str, ...]] = [("ID", "MAILBOX", "OPERATION", "FAULT", "VERDICT", "NEXT MS", "DETAIL")]
        for v in cases:
            cells.append((str(v.id), v.mailbox or "-", v.operation or "-", v.action, v.verdict,
                          _fmt_ms(v.next_request_after_ms), v.detail))
        out.extend(_table(cells))
    return "\n".join(out)


def json_lines(verdicts: Iterable[Verdict]) -> str:
    return "\n".join(json.dumps(v.to_json(), ensure_ascii=False, sort_keys=True) for v in verdicts)


# ---------------------------------------------------------------------------
# HTML

# One colour per verdict family, also used by the table's badges.
BAD_COLOUR, WARN_COLOUR, GOOD_COLOUR = "#c0392b", "#d68910", "#1e8449"
WARN = frozenset({"gave-up", "no-retry", "constant"})
ACTION_MARKERS = {
    "server-busy": "s", "http-status": "D", "ews-error": "P", "soap-fault": "X", "reset": "v",
    "timeout": "^", "truncate": "<", "malformed": ">", "stale-changekey": "*",
}


def _colour(verdict: str) -> str:
    return GOOD_COLOUR if verdict in GOOD else WARN_COLOUR if verdict in WARN else BAD_COLOUR


def _charts():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingExtra(INSTALL_HINT) from e
    matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                                "axes.spines.right": False, "svg.hashsalt": "ucsproxy"})
    return Figure


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


#: A timeline row per mailbox; a big run shows the mailboxes with the worst verdicts.
MAX_TIMELINES = 12


def _timeline_mailboxes(requests: list[Request], verdicts: list[Verdict]) -> tuple[dict[str, list[Request]], int]:
    """The mailboxes to draw (at most MAX_TIMELINES, worst verdicts first, shown in order of appearance)."""
    by_mailbox: dict[str, list[Request]] = {}
    for r in requests:
        by_mailbox.setdefault(r.mailbox_key, []).append(r)
    if len(by_mailbox) <= MAX_TIMELINES:
        return by_mailbox, 0
    worst: dict[str, tuple[int, int]] = {}
    for v in verdicts:
        key = mailbox_key(v.mailbox)
        severity, bad = worst.get(key, (len(SEVERITY), 0))
        worst[key] = (min(severity, v.severity), bad - (0 if v.good else 1))
    chosen = set(sorted(by_mailbox, key=lambda k: worst.get(k, (len(SEVERITY), 0)))[:MAX_TIMELINES])
    return {k: rs for k, rs in by_mailbox.items() if k in chosen}, len(by_mailbox) - len(chosen)


def _titled(svg: str, titles: dict[str, str]) -> str:
    """A hover text (SVG <title>) on each group whose id is in ``titles``: no script needed."""
    for gid, text in titles.items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{html.escape(text)}</title>', 1)
    return svg


def _timeline_svg(Figure, requests: list[Request], verdicts: list[Verdict], t0: float) -> tuple[str, int]:
    by_mailbox, hidden = _timeline_mailboxes(requests, verdicts)
    judged = {v.id: v for v in verdicts}
    titles = {}
    heights = [max(1.2, 0.32 * len({r.operation for r in rs}) + 0.7) for rs in by_mailbox.values()]
    fig = Figure(figsize=(11, sum(heights) + 0.6), layout="constrained")
    axes = fig.subplots(len(by_mailbox), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, rs in zip(axes, by_mailbox.values()):
        mailbox = rs[0].mailbox or "-"
        ops = sorted({r.operation or "(not EWS)" for r in rs})
        y = {op: i for i, op in enumerate(ops)}
        for v in verdicts:
            if mailbox_key(v.mailbox) == rs[0].mailbox_key and v.window_ms:
                lo, hi = ((w - t0) / 1000 for w in v.window_ms)
                ax.axvspan(lo, hi, color=_colour(v.verdict), alpha=0.13, lw=0)
        plain = [r for r in rs if r.id not in judged and r.action in (None, "delay")]
        for failed, colour, label in ((False, "#5d6d7e", "answered"), (True, "#e67e22", "error answer")):
            pts = [r for r in plain if _failed(r) == failed]
            ax.scatter([(r.at_ms - t0) / 1000 for r in pts], [y[r.operation or "(not EWS)"] for r in pts],
                       marker="|", s=120, color=colour, label=label, linewidths=1.4)
        for r in rs:
            found = judged.get(r.id)
            if found is None:
                continue
            x = (r.at_ms - t0) / 1000
            ax.scatter([x], [y[r.operation or "(not EWS)"]], marker=ACTION_MARKERS.get(found.action, "o"), s=60,
                       color=_colour(found.verdict), edgecolors="black", linewidths=0.5, zorder=3, gid=f"ucs-v{found.id}")
            titles[f"ucs-v{found.id}"] = f"#{found.id} {found.operation} {found.action}: {found.verdict}. {found.detail}"
        ax.set_yticks(range(len(ops)), ops)
        ax.set_ylim(-0.7, len(ops) - 0.3)
        ax.set_title(mailbox, loc="left", fontsize=9, fontweight="bold")
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("seconds since the first request")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles: list[Any] = [Line2D([], [], marker="|", ls="", color="#5d6d7e", markersize=10, label="request"),
               Line2D([], [], marker="|", ls="", color="#e67e22", markersize=10, label="error answer")]
    shown = sorted({v.action for v in verdicts})
    handles += [Line2D([], [], marker=ACTION_MARKERS.get(a, "o"), ls="", color="#888", markeredgecolor="black",
                       label=a) for a in shown]
    handles += [Patch(color=c, alpha=0.5, label=text) for c, text in
                ((GOOD_COLOUR, "good verdict / back-off window"), (WARN_COLOUR, "doubtful"), (BAD_COLOUR, "bad"))]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 7), frameon=False)
    return _titled(_svg(fig), titles), hidden


def _latency_svg(Figure, requests: list[Request]) -> str:
    by_op: dict[str, list[float]] = {}
    for r in requests:
        if r.duration_ms is not None and r.action != "timeout":
            by_op.setdefault(r.operation or "(not EWS)", []).append(float(r.duration_ms))
    ops = sorted(by_op, key=lambda op: -len(by_op[op]))
    fig = Figure(figsize=(5.4, 0.42 * len(ops) + 1.0))
    ax = fig.subplots()
    if ops:
        ax.boxplot([by_op[op] for op in ops], orientation="horizontal",
                   tick_labels=[f"{op} ({len(by_op[op])})" for op in ops], flierprops={"markersize": 3})
        ax.invert_yaxis()
        if max(max(v) for v in by_op.values()) > 20 * max(min(min(v) for v in by_op.values()), 0.1):
            ax.set_xscale("log")
    ax.set_xlabel("duration ms (timeouts left out)")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def _failed(r: Request) -> bool:
    return not r.ok or r.response_class == "Error"


def _rates_svg(Figure, requests: list[Request], t0: float, t1: float) -> str:
    span = max(t1 - t0, 1.0)
    bins = max(1, min(40, len(requests) // 3 or 1))
    width = span / bins
    total, errors, faults = [0] * bins, [0] * bins, [0] * bins
    for r in requests:
        i = min(bins - 1, int((r.at_ms - t0) / width))
        total[i] += 1
        if r.action not in (None, "delay"):
            faults[i] += 1
        elif _failed(r):
            errors[i] += 1
    xs = [(i + 0.5) * width / 1000 for i in range(bins)]
    fig = Figure(figsize=(5.4, 2.8))
    ax = fig.subplots()
    ax2 = ax.twinx()
    ax2.bar(xs, total, width=width / 1000 * 0.9, color="#d5dbdb", label="requests")
    ax2.set_ylabel("requests per bin", color="#7f8c8d")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    pct = lambda part: [100 * p / t if t else float("nan") for p, t in zip(part, total)]  # noqa: E731
    ax.plot(xs, pct(faults), color=BAD_COLOUR, marker="o", ms=3, label="injected faults %")
    ax.plot(xs, pct(errors), color="#e67e22", marker="o", ms=3, label="other errors %")
    ax.set_ylim(0, 105)
    ax.set_ylabel("% of requests")
    ax.set_xlabel(f"seconds since the first request ({width / 1000:.2g} s bins)")
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    return _svg(fig)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#1c2833;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d5dbdb;padding-bottom:4px}
.sub{color:#566573;margin:0 0 16px}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #d5dbdb;border-radius:8px;padding:10px 14px;min-width:150px}
.card b{font-size:22px;display:block}.row{display:flex;gap:18px;flex-wrap:wrap}.row>div{flex:1;min-width:420px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeded;vertical-align:top}
th{background:#f4f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.b{display:inline-block;padding:1px 7px;border-radius:10px;color:#fff;font-size:12px;white-space:nowrap}
svg{width:100%;height:auto}
"""


def _badge(verdict: str, n: int | None = None) -> str:
    text = verdict if n is None else f"{verdict} {n}"
    return f'<span class="b" style="background:{_colour(verdict)}">{html.escape(text)}</span>'


def html_page(rows: list[dict[str, Any]], verdicts: list[Verdict], title: str,
              thresholds: Thresholds = Thresholds()) -> str:
    """One self-contained page: cards, timeline, latency, rates, tallies, the verdict table."""
    Figure = _charts()
    requests = to_requests(rows)
    if not requests:
        raise ValueError("the log holds no exchanges to report on")
    t0, t1 = requests[0].at_ms, max(r.end_ms for r in requests)
    bad = [v for v in verdicts if not v.good]
    started = datetime.fromtimestamp(t0 / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    esc = html.escape
    timeline, hidden = _timeline_svg(Figure, requests, verdicts, t0)
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(title)}: chaos verdicts</title><style>{CSS}</style></head><body>",
        f"<h1>Chaos verdicts: {esc(title)}</h1>",
        f'<p class=sub>{len(requests)} requests from {started}, over {(t1 - t0) / 1000:.1f} s. '
        f"Retry storm: more than {thresholds.storm_retries} retries within {thresholds.storm_window_ms:.0f} ms.</p>",
        '<div class=cards>',
        f"<div class=card><b>{len(requests)}</b>requests</div>",
        f"<div class=card><b>{len(verdicts)}</b>injected faults</div>",
        f'<div class=card><b style="color:{BAD_COLOUR if bad else GOOD_COLOUR}">{len(bad)}</b>verdicts against the client</div>',
        f"<div class=card><b>{len({r.mailbox_key for r in requests})}</b>mailboxes</div></div>",
        "<h2>Timeline per mailbox</h2>",
        "<p class=sub>Each mark is a request; faulted requests are drawn by fault kind in their verdict's colour "
        "(hover for the verdict); shaded: the back-off a ServerBusy or Retry-After asked for."
        + (f" The {MAX_TIMELINES} mailboxes with the worst verdicts; {hidden} more are in the tables." if hidden else "")
        + "</p>",
        timeline,
        "<div class=row><div><h2>Latency per operation</h2>", _latency_svg(Figure, requests), "</div>",
        "<div><h2>Errors and faults over time</h2>", _rates_svg(Figure, requests, t0, t1), "</div></div>",
        "<div class=row>",
    ]
    for heading, by in (("By mailbox", "mailbox"), ("By fault kind", "action")):
        parts.append(f"<div><h2>{heading}</h2><table><tr><th>{'mailbox' if by == 'mailbox' else 'fault'}</th>"
                     "<th>faults</th><th>verdicts</th></tr>")
        for key, counts in tally(verdicts, by).items():
            parts.append(f"<tr><td>{esc(key)}</td><td class=n>{sum(counts.values())}</td><td>"
                         + " ".join(_badge(k, n) for k, n in counts.items()) + "</td></tr>")
        parts.append("</table></div>")
    parts.append("</div><h2>Verdicts, worst first</h2><table><tr><th>id</th><th>time</th><th>mailbox</th>"
                 "<th>operation</th><th>fault</th><th>verdict</th>"
                 "<th title='from the end of the faulted answer to the next request of its mailbox'>next ms</th><th>detail</th></tr>")
    for v in worst_first(verdicts):
        parts.append(
            f"<tr><td class=n>{v.id}</td><td>{esc((v.started_at or '')[11:23])}</td><td>{esc(v.mailbox or '-')}</td>"
            f"<td>{esc(v.operation or '-')}</td><td>{esc(v.action)}{' ' + esc(v.code) if v.code else ''}</td>"
            f"<td>{_badge(v.verdict)}</td><td class=n>{_fmt_ms(v.next_request_after_ms)}</td><td>{esc(v.detail)}</td></tr>")
    parts.append("</table><p class=sub>ucsproxy report</p></body></html>")
    return "\n".join(parts)


def write_html(path: str | Path, rows: list[dict[str, Any]], verdicts: list[Verdict], title: str,
               thresholds: Thresholds = Thresholds()) -> None:
    Path(path).write_text(html_page(rows, verdicts, title, thresholds), encoding="utf-8")


def failing(verdicts: Iterable[Verdict], fail_on: frozenset[str]) -> dict[str, int]:
    """``{verdict: count}`` of the verdicts named in ``--fail-on``, worst first."""
    counts = Counter(v.verdict for v in verdicts if v.verdict in fail_on)
    return dict(sorted(counts.items(), key=lambda kv: SEVERITY.index(kv[0])))


__all__ = ["INSTALL_HINT", "MissingExtra", "failing", "html_page", "json_lines", "judge", "load_rows",
           "summary_text", "write_html"]
