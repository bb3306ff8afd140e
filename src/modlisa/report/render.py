"""Render the report's sections as Markdown (images linked) and as one self-contained HTML page.

The HTML page embeds every plot as a base64 PNG data URI and every gallery picture as a base64 JPEG data
URI, and carries its CSS inline: it needs no other file and loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from modlisa.report.gallery import Gallery, Picture
from modlisa.report.plots import Plot
from modlisa.report.tables import Table


@dataclass
class Section:
    """A report section: paragraphs (kind "text" or "warning", plain text), then tables, plots, galleries."""

    key: str
    title: str
    paragraphs: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    galleries: list[Gallery] = field(default_factory=list)


# ---------------------------------------------------------------------- Markdown
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    """A GitHub-style pipe table with a bold title line and its notes below."""
    lines = [f"**{table.title}**", "", "| " + " | ".join(_md_cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    for i, row in enumerate(table.rows):
        cells = [_md_cell(c) for c in row]
        if i in table.bold_rows:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"*{_md_cell(n)}*  " for n in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def render_markdown(title: str, meta: list[str], sections: list[Section]) -> str:
    """report.md: title, meta lines, then each section (images linked by file name, beside report.md)."""
    parts = [f"# {title}", "", *[f"{m}  " for m in meta], ""]
    for s in sections:
        parts += [f"## {s.title}", ""]
        for kind, text in s.paragraphs:
            parts += [f"> **Warning:** {text}" if kind == "warning" else text, ""]
        for table in s.tables:
            parts += [markdown_table(table), ""]
        for plot in s.plots:
            parts += [f"![{plot.title}]({plot.path.name})", "", f"*{plot.caption}*", ""]
        for gallery in s.galleries:
            parts += [markdown_gallery(gallery), ""]
    return "\n".join(parts).rstrip() + "\n"


def _md_text(text: str) -> str:
    """Plain text inside a table cell or an image's alt text: pipes and brackets escaped."""
    return _md_cell(text).replace("[", "\\[").replace("]", "\\]")


def _md_caption(p: Picture) -> str:
    return (_md_text(f"IoU {100 * p.iou:.1f} %, {p.kind}: \"{p.query}\" ({PurePath(p.file).name}, ")
            + f"[full size](<{p.original_link}>))")


def markdown_gallery(gallery: Gallery) -> str:
    """A heading, then per tag (best, worst) a table: a row of linked thumbnails, a row of captions."""
    lines = [f"### Gallery: {gallery.title}", ""]
    for tag in ("best", "worst"):
        pictures = gallery.of(tag)
        if not pictures:
            continue
        lines += ["| " + " | ".join(p.label for p in pictures) + " |", "|" + "|".join("---" for _ in pictures) + "|",
                  "| " + " | ".join(f"![{_md_text(p.caption())}]({p.link})" for p in pictures) + " |",
                  "| " + " | ".join(_md_caption(p) for p in pictures) + " |", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------- HTML
CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d2329;
       background: #f4f6f8; margin: 0; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.3em; }
h2 { font-size: 1.3em; margin-top: 1.8em; padding-bottom: 0.25em; border-bottom: 2px solid #e3e8ee; }
h3 { font-size: 1.02em; margin: 1.4em 0 0.4em; color: #2f3b47; }
p.meta { color: #5b6874; margin: 0.1em 0; font-size: 0.92em; }
nav { margin: 1em 0; font-size: 0.92em; } nav a { margin-right: 1.1em; color: #1f5fa8; text-decoration: none; }
.warning { background: #fff6e0; border-left: 4px solid #e0a100; padding: 0.55em 0.9em; margin: 0.8em 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.86em; margin: 0.3em 0; }
th, td { border: 1px solid #dfe4ea; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #eef2f6; font-weight: 600; }
td { max-width: 340px; overflow-wrap: anywhere; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.bold td { font-weight: 700; background: #eaf3ff !important; }
p.note { color: #5b6874; font-size: 0.84em; margin: 0.25em 0; max-width: 1050px; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e8ee; }
figcaption { color: #5b6874; font-size: 0.85em; margin-top: 0.3em; }
h4 { font-size: 0.95em; margin: 0.9em 0 0.3em; color: #2f3b47; }
.pics { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure.pic { margin: 0; width: 260px; }
figure.pic img { width: 100%; height: auto; }
figure.pic figcaption { color: #1d2329; overflow-wrap: anywhere; }
figure.pic .iou { font-variant-numeric: tabular-nums; font-weight: 600; }
figure.pic .file { color: #5b6874; }
p.legend { color: #5b6874; font-size: 0.85em; }
"""
_NUMERIC = re.compile(r"^[-+]?(\d+(\.\d+)?|nan|inf)( / [-+]?\d+(\.\d+)?)?$|^—$")


def _td(text: str, align_numbers: bool) -> str:
    cls = ' class="num"' if align_numbers and _NUMERIC.match(text) else ""
    return f"<td{cls}>{html.escape(text)}</td>"


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for i, row in enumerate(table.rows):
        cls = ' class="bold"' if i in table.bold_rows else ""
        body.append(f"<tr{cls}>" + "".join(_td(c, table.align_numbers) for c in row) + "</tr>")
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in table.notes)
    return (f"<h3>{html.escape(table.title)}</h3>\n<div class=\"scroll\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>\n{notes}")


def png_data_uri(plot: Plot) -> str:
    return "data:image/png;base64," + base64.b64encode(plot.path.read_bytes()).decode("ascii")


def html_figure(plot: Plot) -> str:
    return (f'<figure><img src="{png_data_uri(plot)}" alt="{html.escape(plot.title)}">'
            f"<figcaption><strong>{html.escape(plot.title)}.</strong> {html.escape(plot.caption)}</figcaption>"
            "</figure>")


def jpeg_data_uri(path: PurePath) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def html_picture(p: Picture) -> str:
    """One gallery picture: the embedded thumbnail and its caption (rank, IoU, short/long, query, file)."""
    data = (f'data-tag="{p.tag}" data-rank="{p.rank}" data-iou="{p.iou!r}" data-file="{html.escape(p.file)}" '
            f'data-short-long="{"long" if p.is_sentence else "short"}"')
    return (f'<figure class="pic" {data}><img src="{jpeg_data_uri(p.thumb)}" alt="{html.escape(p.caption())}">'
            f'<figcaption><strong>{html.escape(p.label)}</strong> · <span class="iou">IoU {100 * p.iou:.1f} %</span>'
            f' · {html.escape(p.kind)}<br><q>{html.escape(p.query)}</q><br>'
            f'<span class="file">{html.escape(PurePath(p.file).name)}</span></figcaption></figure>')


def html_gallery(gallery: Gallery) -> str:
    parts = [f'<div class="gallery" data-run="{html.escape(gallery.run)}" data-name="{html.escape(gallery.name)}">'
             f"<h3>Gallery: {html.escape(gallery.title)}</h3>"]
    for tag in ("best", "worst"):
        pictures = gallery.of(tag)
        if pictures:
            parts.append(f"<h4>{tag.capitalize()} {len(pictures)} by IoU</h4>"
                         f'<div class="pics">{"".join(html_picture(p) for p in pictures)}</div>')
    parts.append("</div>")
    return "\n".join(parts)


def render_html(title: str, meta: list[str], sections: list[Section]) -> str:
    """report.html: one self-contained page (inline CSS, plots as data URIs, no external resources)."""
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    parts = [f"<h1>{html.escape(title)}</h1>", *[f'<p class="meta">{html.escape(m)}</p>' for m in meta],
             f"<nav>{nav}</nav>"]
    for s in sections:
        parts.append(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>')
        for kind, text in s.paragraphs:
            parts.append(f'<p class="warning"><strong>Warning:</strong> {html.escape(text)}</p>' if kind == "warning"
                         else f"<p>{html.escape(text)}</p>")
        parts += [html_table(t) for t in s.tables]
        parts += [html_figure(p) for p in s.plots]
        parts += [html_gallery(g) for g in s.galleries]
        parts.append("</section>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
            "</body>\n</html>\n")
