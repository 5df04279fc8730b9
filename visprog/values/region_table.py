"""Objects as an HTML table: the one region table, for the trace page and for a notebook
(`Objects._repr_html_`).

A column only for what some region has (a label, a score, a mask, extra fields); a long
table shows its first rows and folds the rest under "show all" (a <details>, no script);
past `max_rows` regions are only counted. Text from models and users is escaped. It reads
the Objects' fields only, so it imports nothing of `values.objects`.
"""
from __future__ import annotations

import html
from typing import Any, Callable

MAX_TABLE_ROWS = 50  # regions listed; the rest are counted
FOLDED_ROWS = 5  # rows shown before a longer table folds ("show all")


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def region_table(objs: Any, *, color: Callable[[int], tuple[int, int, int]] | None = None,
                 max_rows: int = MAX_TABLE_ROWS, folded_rows: int = FOLDED_ROWS) -> str:
    """The regions of `objs` (an `Objects`) as HTML; `color(i)`: region i's colour in a
    drawing beside the table, shown as a swatch by its number."""
    listed = objs[:max_rows]
    extras = [", ".join(f"{k}={v}" for k, v in r.extra.items()
                        if isinstance(v, (str, int, float, bool))) for r in listed]

    def number(i: int, r: Any) -> str:
        if color is None:
            return str(i)
        return ('<span class="swatch" style="background:#%02x%02x%02x"></span>%d'
                % (*color(i), i))

    columns: list[tuple[str, Callable[[int, Any], str]]] = [("#", number)]
    if any(label is not None for label in listed.labels):
        columns.append(("label", lambda i, r: _esc(r.label if r.label is not None else "")))
    if listed.has_score.any():
        columns.append(("score", lambda i, r: "" if r.score is None else f"{float(r.score):.3f}"))
    columns.append(("box (x1, y1, x2, y2)",
                    lambda i, r: "[" + ", ".join(f"{v:.1f}" for v in r.box) + "]"))
    if listed.has_mask.any():
        columns.append(("mask", lambda i, r: "yes" if r.mask is not None else ""))
    if any(extras):
        columns.append(("extra", lambda i, r: _esc(extras[i])))
    head = "<tr>" + "".join(f"<th>{name}</th>" for name, _ in columns) + "</tr>"
    rows = ["<tr>" + "".join(f"<td>{cell(i, r)}</td>" for _, cell in columns) + "</tr>"
            for i, r in enumerate(listed)]
    more = len(objs) - len(listed)
    if more > 0:
        rows.append(f'<tr><td colspan="{len(columns)}" class="muted">... {more} more '
                    f'(the JSON trace lists them all)</td></tr>')
    if len(rows) <= folded_rows + 1:  # folding a row or two away would only add a click
        return f'<table class="regions">{head}{"".join(rows)}</table>'
    return (f'<table class="regions">{head}{"".join(rows[:folded_rows])}</table>'
            f'<details class="more"><summary>show all {len(objs)} regions</summary>'
            f'<table class="regions">{head}{"".join(rows[folded_rows:])}</table></details>')
