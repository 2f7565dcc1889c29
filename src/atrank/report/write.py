"""Writers of report sections: PNG files, one self-contained ``report.html``, Weights & Biases.

:func:`write_pngs` saves every figure once and hands back the sections with the PNG files in
place of the figures (closed), so the HTML page and W&B reuse the files.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from atrank.report.section import Section, Table

#: Resolution of the PNG files (inches of the figures x this = pixels).
DPI = 100
#: zlib level of the PNG files: 1 saves a fifth of the drawing time for ~8% larger files.
PNG_COMPRESSION = 1


def png_name(key: str, name: str) -> str:
    """The PNG file of figure ``name`` of the section ``key``."""
    return f"{key.replace('/', '_')}_{name}.png"


def _png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": PNG_COMPRESSION})
    return buf.getvalue()


def write_pngs(sections: list[Section], folder: Path) -> list[Section]:
    """Saves every figure as ``folder/<key>_<name>.png``.

    Returns:
        The sections, their figures replaced by the written files' paths (a figure already
        given as a path is kept as is).
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for sec in sections:
        saved: dict[str, Any] = {}
        for name, fig in sec.figures.items():
            if isinstance(fig, Path):
                saved[name] = fig
                continue
            path = folder / png_name(sec.key, name)
            path.write_bytes(_png_bytes(fig))
            saved[name] = path
        out.append(replace(sec, figures=saved))  # (a Figure without pyplot: freed with it)
    return out


def format_value(v: Any) -> str:
    """A table cell as text: floats to 4 decimals, None as empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e6 else f"{v:.4g}"
    return str(v)


def _html_table(name: str, table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>"
        for row in table.rows
    )
    caption = html.escape(name)
    return f"<table><caption>{caption}</caption><tr>{head}</tr>{body}</table>"


def _html_figure(key: str, name: str, fig: Any) -> str:
    data = fig.read_bytes() if isinstance(fig, Path) else _png_bytes(fig)
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    alt = html.escape(f"{key}/{name}")
    return f'<figure><img src="{src}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 1.5em .8em 0; font-size: 13px;
        display: inline-table; vertical-align: top; }
caption { text-align: left; font-weight: 600; padding-bottom: .3em; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f4f4f4; }
figure { display: inline-block; margin: .5em 1em .5em 0; }
figcaption { font-size: 11px; color: #777; }
img { max-width: 100%; }
p.note { color: #8a5a00; background: #fff7e6; padding: .3em .6em; margin: .3em 0; }
"""


def write_html(sections: list[Section], path: Path, title: str = "ATRank-MT run report") -> Path:
    """Writes one self-contained HTML page: every section's notes, tables and figures.

    Figures are embedded as base64 PNG data (no file beside the page is needed); every text
    is escaped.

    Returns:
        The path written.
    """
    toc = "".join(
        f'<li><a href="#{html.escape(s.key)}">{html.escape(s.title)}</a></li>' for s in sections
    )
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>{toc}</ul>",
    ]
    for sec in sections:
        parts.append(f'<h2 id="{html.escape(sec.key)}">{html.escape(sec.title)}</h2>')
        parts += [f'<p class="note">{html.escape(n)}</p>' for n in sec.notes]
        parts += [_html_table(n, t) for n, t in sec.tables.items()]
        parts.append("<div>")
        parts += [_html_figure(sec.key, n, f) for n, f in sec.figures.items()]
        parts.append("</div>")
    parts.append("</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path


def wandb_payload(sections: list[Section]) -> dict[str, Any]:
    """What :func:`log_wandb` logs: ``<key>/<name>`` -> ``wandb.Image``, ``wandb.Table`` or a
    W&B chart (the sections' curves, drawn by W&B's own presets); notes as a table."""
    import wandb

    from atrank.report.figures import ChartSection

    out: dict[str, Any] = {}
    for sec in sections:
        for name, fig in sec.figures.items():
            image = str(fig) if isinstance(fig, Path) else fig
            out[f"{sec.key}/{name}"] = wandb.Image(image, caption=sec.title)
        for name, t in sec.tables.items():
            out[f"{sec.key}/{name}"] = _wandb_table(t)
        if sec.notes:
            out[f"{sec.key}/notes"] = wandb.Table(columns=["note"], data=[[n] for n in sec.notes])
        if isinstance(sec, ChartSection):
            for name, curve in sec.curves.items():
                out[f"{sec.key}/{name}_chart"] = _wandb_chart(curve, sec.title)
    return out


def _wandb_table(t: Table) -> Any:
    import wandb

    return wandb.Table(
        columns=list(t.columns), data=[list(r) for r in t.rows], allow_mixed_types=True
    )


def _wandb_chart(curve: Any, title: str) -> Any:
    import wandb

    table = _wandb_table(curve.points)
    name = f"{title}: {curve.title}"
    if curve.kind == "auc":  # the preset of wandb.plot.roc_curve / pr_curve, on our points
        return wandb.plot.plot_table(
            "wandb/area-under-curve/v0",
            table,
            {"x": curve.x, "y": curve.y, "class": "class"},
            {"title": name, "x-axis-title": curve.x, "y-axis-title": curve.y},
        )
    return wandb.plot.line(table, curve.x, curve.y, stroke="class", title=name)


def log_wandb(sections: list[Section], run: Any, step: int | None = None) -> None:
    """Logs the sections to a W&B run (images, tables, native charts) in one call.

    Args:
        sections: the sections (figures as written PNG paths or figures).
        run: the ``wandb`` run (``WandbLogger.experiment``).
        step: the trainer's global step, logged as ``trainer/global_step`` (the x-axis
            Lightning's WandbLogger defines).
    """
    payload = wandb_payload(sections)
    if step is not None:
        payload["trainer/global_step"] = step
    run.log(payload)
