"""One streaming pass over an email's HTML that yields both what goes on the wire (the
document as written, with chosen links rewritten) and the text/plain part.

Built on the standard library's `html.parser`, without a tree: a tree parser costs more than
everything else an email needs, and an email is sent hundreds of times a second. The
document is copied through token by token, so what the author wrote (entities, quoting,
comments, conditional comments for Outlook) reaches the recipient unchanged; only an
anchor whose link is rewritten is written anew.
"""

from __future__ import annotations

import re
from html import escape, unescape
from html.parser import HTMLParser
from typing import Callable, Mapping

LinkRewrite = Callable[[Mapping[str, str | None]], "str | None"]
"""Given an anchor's attributes, the href to put in its place, or None to keep it."""

BLOCKS = frozenset({"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "hr"})
"""Elements that start a new line in the text part."""
HIDDEN = frozenset({"script", "style", "head", "title", "img"})
"""Elements whose content never reaches the text part."""
VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "keygen", "link", "meta", "param", "source",
    "track", "wbr", "basefont", "bgsound", "frame", "spacer",
})
_SPACE = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _Pass(HTMLParser):
    def __init__(self, rewrite: LinkRewrite | None):
        super().__init__(convert_charrefs=False)
        self.rewrite = rewrite
        self.out: list[str] = []
        self.text: list[str] = []
        self._pending: list[str] = []
        self._hidden: list[str] = []
        self._anchors: list[tuple[str | None, list[str]]] = []

    # -- text nodes ---------------------------------------------------------------------

    def handle_data(self, data: str) -> None:
        self.out.append(data)
        self._pending.append(data)

    def handle_entityref(self, name: str) -> None:
        reference = f"&{name};"
        self.out.append(reference)
        self._pending.append(unescape(reference))

    def handle_charref(self, name: str) -> None:
        reference = f"&#{name};"
        self.out.append(reference)
        self._pending.append(unescape(reference))

    def _flush(self) -> None:
        """A text node ends at the next tag: what the reader sees of it, whitespace folded."""
        if not self._pending:
            return
        node = "".join(self._pending)
        self._pending.clear()
        if not self._hidden:
            self.text.append(_SPACE.sub(" ", node))
        label = node.strip()
        if label:
            for _href, parts in self._anchors:
                parts.append(label)

    # -- tags -----------------------------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._flush()
        self.out.append(self._start(tag, attrs))
        self._open(tag, attrs, void=tag in VOID)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._flush()
        self.out.append(self._start(tag, attrs))
        self._open(tag, attrs, void=True)

    def handle_endtag(self, tag: str) -> None:
        self._flush()
        self.out.append(f"</{tag}>")
        if tag in self._hidden:
            while self._hidden.pop() != tag:
                pass
            return
        if self._hidden:
            return
        if tag == "a" and self._anchors:
            self._close_anchor()
        if tag in BLOCKS and tag != "br":
            self.text.append("\n")

    def _start(self, tag: str, attrs: list[tuple[str, str | None]]) -> str:
        raw = self.get_starttag_text() or ""
        if tag != "a" or self.rewrite is None:
            return raw
        values = dict(attrs)
        if values.get("href") is None:
            return raw
        href = self.rewrite(values)
        if href is None:
            return raw
        values["href"] = href
        ending = "/>" if raw.endswith("/>") else ">"
        written = "".join(f" {name}" if value is None else f' {name}="{escape(value)}"' for name, value in values.items())
        return f"<{tag}{written}{ending}"

    def _open(self, tag: str, attrs: list[tuple[str, str | None]], *, void: bool) -> None:
        if self._hidden:
            if tag in HIDDEN and not void:
                self._hidden.append(tag)
            return
        if tag in HIDDEN:
            if not void:
                self._hidden.append(tag)
            return
        if tag in BLOCKS:
            self.text.append("\n" if tag in ("br", "li", "tr") else "\n\n")
        if tag == "li":
            self.text.append("- ")
        if tag == "a":
            self._anchors.append((dict(attrs).get("href"), []))
            if void:
                self._close_anchor()
        elif void and tag in BLOCKS and tag != "br":
            self.text.append("\n")

    def _close_anchor(self) -> None:
        href, parts = self._anchors.pop()
        if href and href.startswith(("http://", "https://")) and " ".join(parts) != href:
            self.text.append(f" ({href})")

    # -- the rest is copied as written and has no text ----------------------------------------

    def handle_comment(self, data: str) -> None:
        self._flush()
        self.out.append(f"<!--{data}-->")

    def handle_decl(self, decl: str) -> None:
        self._flush()
        self.out.append(f"<!{decl}>")

    def handle_pi(self, data: str) -> None:
        self._flush()
        self.out.append(f"<?{data}>")

    def unknown_decl(self, data: str) -> None:
        self._flush()
        self.out.append(f"<![{data}]>")

    def finish(self) -> tuple[str, str]:
        self.close()
        self._flush()
        while self._anchors:
            self._close_anchor()
        lines = [line.strip() for line in "".join(self.text).splitlines()]
        text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip() + "\n"
        return "".join(self.out), text


def transform(html: str, rewrite: LinkRewrite | None = None) -> tuple[str, str]:
    """(the HTML with the links `rewrite` chose rewritten, the text/plain part). The text part
    keeps paragraphs and shows each web link as `text (url)`, with the URL as written."""
    parser = _Pass(rewrite)
    parser.feed(html)
    return parser.finish()


def append_to_body(html: str, fragment: str) -> str:
    """`fragment` as the body's last content (before the last `</body>`, else at the end)."""
    position = html.lower().rfind("</body>")
    return html + fragment if position < 0 else html[:position] + fragment + html[position:]


def html_to_text(html: str) -> str:
    return transform(html)[1]
