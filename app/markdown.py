"""Messages as markdown: text blocks as the HTML Qt's rich text shows, code blocks apart.

markdown-it-py parses (CommonMark, plus tables and strikethrough as models write them) and
Pygments highlights. Qt's own markdown (md4c) was the other choice; it cannot highlight code
and hands back one document, where the view needs each code block as its own widget (kept
whitespace, no wrapping, a Copy button) and a streaming reply re-rendered block by block.

Nothing here can fetch anything: raw HTML in a message is shown as text, an image is shown
as its alt text, and a link is only an ``<a href>`` the view opens on click.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.lexers.special import TextLexer
from pygments.styles import get_style_by_name
from pygments.util import ClassNotFound

LIGHT_STYLE, DARK_STYLE = "default", "github-dark"
SAFE_SCHEMES = ("http", "https", "mailto")  # the only links the view opens


@dataclass(frozen=True)
class Segment:
    """One block of a message: rich text (``html``), or a code block (``html`` highlighted,
    ``source`` exactly as written, ``language`` as the fence named it)."""

    kind: str  # "text" or "code"
    html: str
    source: str = ""
    language: str = ""


def render(text: str, dark: bool = False, hard_breaks: bool = False) -> list[Segment]:
    """``text`` as segments, one per top-level block (a paragraph, a list, a table, a code
    block), so that a streaming reply changes only its last one. An unclosed code fence (a
    reply still streaming) runs to the end.

    Args:
        dark: highlight code for a dark background.
        hard_breaks: a single newline is a line break (for what people type).
    """
    parser = _parser(hard_breaks)
    env: dict[str, Any] = {"dark": dark}
    tokens = parser.parse(text, env)
    segments: list[Segment] = []
    pending: list[Token] = []

    def flush() -> None:
        if pending:
            segments.append(Segment("text", parser.renderer.render(pending, parser.options, env)))
            pending.clear()

    for token in tokens:
        if token.level == 0 and token.type in ("fence", "code_block"):
            flush()
            language = token.info.split()[0] if token.info.strip() else ""
            source = token.content.removesuffix("\n")
            segments.append(Segment("code", highlight_code(source, language, dark), source,
                                    language))  # fmt: skip
        else:
            pending.append(token)
            if token.level == 0 and token.nesting <= 0:
                flush()  # a whole top-level block: its own segment
    flush()
    return segments


def highlight_code(source: str, language: str, dark: bool) -> str:
    """``source`` as a ``<pre>`` with inline colours (Qt's rich text takes no classes)."""
    try:
        lexer = get_lexer_by_name(language) if language else TextLexer()
    except (ClassNotFound, ImportError):  # an unknown name, or a lexer a bundle left out
        lexer = TextLexer()
    return str(highlight(source, lexer, _formatter(dark))).strip()


def code_background(dark: bool) -> str:
    """The background colour the code's highlighting is made for."""
    return str(get_style_by_name(DARK_STYLE if dark else LIGHT_STYLE).background_color)


@lru_cache(maxsize=2)
def _formatter(dark: bool) -> HtmlFormatter:
    return HtmlFormatter(
        style=DARK_STYLE if dark else LIGHT_STYLE, noclasses=True, nowrap=False, nobackground=True
    )


@lru_cache(maxsize=2)
def _parser(hard_breaks: bool) -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": False, "breaks": hard_breaks, "typographer": False})
    parser.enable(["table", "strikethrough"])
    parser.validateLink = _safe_link  # type: ignore[method-assign]
    parser.add_render_rule("image", _image_as_text)
    parser.add_render_rule("code_inline", _inline_code)
    parser.add_render_rule("table_open", _table_open)
    return parser


def _safe_link(url: str) -> bool:
    """Only web and mail links become links; anything else stays text."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    return scheme in SAFE_SCHEMES


def _image_as_text(self: Any, tokens: list[Token], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    return f"<i>[image: {html.escape(alt or 'no description')}]</i>"


def _inline_code(self: Any, tokens: list[Token], idx: int, options: Any, env: Any) -> str:
    shade = "rgba(255,255,255,0.12)" if env.get("dark") else "rgba(0,0,0,0.07)"
    text = html.escape(tokens[idx].content)
    return f'<code style="background-color: {shade}">{text}</code>'


def _table_open(self: Any, tokens: list[Token], idx: int, options: Any, env: Any) -> str:
    # Qt's rich text draws cell borders only from these attributes.
    colour = "#555a61" if env.get("dark") else "#c8ccd2"
    return (
        f'<table border="1" cellspacing="0" cellpadding="5" '
        f'style="border-collapse: collapse; border-color: {colour}; margin: 4px 0">\n'
    )
