"""Markdown previews as HTML fit to show in the admin: markdown-it-py (CommonMark) with raw
HTML off, then nh3 (ammonia) with its default allow-list less images, image maps and areas —
a remote image in a file under review would tell its author who looked, and when. Links keep
nh3's `rel="noopener noreferrer"`."""

from __future__ import annotations

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

from artifacts import content

MARKDOWN_TYPES = frozenset({"text/markdown", "text/x-markdown"})
_RENDERER = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_TAGS = nh3.ALLOWED_TAGS - {"img", "map", "area"}


def is_markdown(content_type: str) -> bool:
    return content.base_content_type(content_type) in MARKDOWN_TYPES


def render(text: str) -> str:
    """Markdown → sanitised HTML (done once, at capture)."""
    return sanitise(_RENDERER.render(text))


def sanitise(html: str) -> str:
    return nh3.clean(html, tags=_TAGS)


def safe(html: str) -> SafeString:
    """HTML that `render` made (the only writer of Artifact.preview_html) as the templates
    show it. Not sanitised a second time: nh3 costs about a millisecond per preview, and a
    run review page may show dozens."""
    return mark_safe(html)  # noqa: S308 (made by render: sanitised by nh3)
