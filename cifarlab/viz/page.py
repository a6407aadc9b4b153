"""Self-contained HTML pages: `string.Template` files from templates/, PNGs inlined as data
URIs (the page opens offline, mailed or copied alone), every inserted text escaped.

Numbers are emitted as `<td data-key="KEY" data-value="REPR">shown</td>`: the shown text is
rounded for people, the attribute keeps the exact value for programs (and tests)."""

from __future__ import annotations

import base64
import datetime
import string
from html import escape
from pathlib import Path

from .. import __version__

TEMPLATES = Path(__file__).parent / "templates"


def render(template: str, **fields: str) -> str:
    """Fill templates/<template>: a page's body (its sections), set in page.html, the frame
    every page shares (head, style, title and subtitle, footer); every `$name` must be given.
    The texts are joined before filling, so a filled-in `$` is never read as a field."""
    frame = (TEMPLATES / "page.html").read_text().replace("$body", (TEMPLATES / template).read_text())
    return string.Template(frame).substitute(style=style(), **fields)


def render_document(template: Path, **fields: str) -> str:
    """Fill a whole HTML document of another package (its own head and scripts) that uses the
    same style sheet (`$style`); every `$name` must be given."""
    return string.Template(template.read_text()).substitute(style=style(), **fields)


def style() -> str:
    return (TEMPLATES / "style.css").read_text()


def footer(detail: str = "") -> str:
    """The footer every page ends with: the version and when it was made, then `detail`."""
    return escape(f"cifarlab {__version__} · generated {datetime.datetime.now().isoformat(timespec='seconds')}{detail}")


def image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}" data-file="{escape(path.name)}">'


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def number(key: str, value, shown: str, tag: str = "td", css: str = "num") -> str:
    """An element showing `shown` that carries the exact `value` for programs."""
    css = f' class="{css}"' if css else ""
    return f'<{tag}{css} data-key="{escape(key)}" data-value="{escape(repr(value))}">{escape(shown)}</{tag}>'


def table(header: list[str] | None, rows: list[list[str]], numeric_from: int = 1) -> str:
    """Rows are lists of ready cells (`<td>` elements, e.g. from `number` or `cell`)."""
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    if header is None:
        return f"<table><tbody>{body}</tbody></table>"
    head = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{escape(h)}</th>' for i, h in enumerate(header))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell(text) -> str:
    return f"<td>{escape(str(text))}</td>"


def card(label: str, key: str, value, shown: str) -> str:
    shown = number(key, value, shown, tag="div", css="value")
    return f'<div class="card"><div class="label">{escape(label)}</div>{shown}</div>'
