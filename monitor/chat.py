"""A chat message from a recipient's due entries: short, one line per story, in Markdown.

Stored in the outbox like a mail (the same claim, lease and marks) as a JSON document: the
webhook posts its bytes as they are (the signature covers them), the Apprise channels send
its `text`, which Apprise turns into each service's markup (Slack's mrkdwn, Telegram's
HTML, ...). A message never exceeds its service's size: lines past the limit are cut and
counted ("+3 more").
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from monitor.models import DigestEntry, Hit, MessageKind, OutgoingMessage, StoryGrowth

# Markdown's inline markup in feed text is escaped, so a title "[click](http://evil)" or
# "*" stays text; lines start with "• ", so block markup (#, -, 1.) cannot begin one.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
# Angle brackets end a Slack link's text, and Slack's converter passes them on: shown as
# look-alikes instead.
_ANGLES = str.maketrans({"<": "‹", ">": "›"})
_SPACES = re.compile(r"\s+")
_KINDS = {MessageKind.ALERT: "alert", MessageKind.DIGEST: "digest"}


@dataclass(frozen=True, slots=True)
class ChatText:
    """What a channel sends: the title and the body in Markdown."""

    title: str
    text: str


def render_chat(
    message_id: str,
    recipient: str,
    entries: Sequence[DigestEntry],
    now: datetime,
    kind: MessageKind,
    limit: int,
    growth: Sequence[StoryGrowth] = (),
) -> OutgoingMessage:
    """The message for a channel recipient; `limit` is its service's size in characters.
    Entries come ranked (contents.py); stories sent before that grew follow them."""
    stories = list(entries)
    watchlists = sorted({e.watchlist for e in stories} | {w for g in growth for w in g.watchlists})
    count = len(stories)
    noun = "story" if count == 1 else "stories"
    title = f"monitor {_KINDS[kind]}: {count} {noun} for {', '.join(watchlists)}"
    if growth and not stories:
        title = (
            f"monitor {_KINDS[kind]}: {len(growth)} earlier stories grew ({', '.join(watchlists)})"
        )
    lines = [story_line(entry) for entry in stories] + [growth_line(g) for g in growth]
    text = fit(lines, limit - len(title) - 2)
    document = {
        "message_id": message_id,
        "kind": _KINDS[kind],
        "recipient": recipient,
        "created_at": now.isoformat(),
        "title": title,
        "text": text,
        "stories": [_story(entry) for entry in stories],
    }
    body = json.dumps(document, ensure_ascii=False, sort_keys=True).encode()
    return OutgoingMessage(message_id, recipient, body, kind)


@dataclass(frozen=True, slots=True)
class NoticeStory:
    """A story a spike alert shows: outlet, title, link, the other outlets."""

    outlet: str
    title: str
    url: str
    also_reported_by: tuple[str, ...] = ()


def render_notice_chat(
    message_id: str,
    recipient: str,
    title: str,
    paragraphs: Sequence[str],
    stories: Sequence[NoticeStory],
    now: datetime,
    limit: int,
) -> OutgoingMessage:
    """A spike or silence alert for a channel: its sentences, then a line per story."""
    lines = [escape(p).strip() for p in paragraphs if p.strip()]
    for story in stories:
        link = _link(story.url)
        name = escape(story.title or story.url).strip() or "(untitled)"
        line = f"• {escape(story.outlet).strip()}: " + (f"[{name}]({link})" if link else name)
        if story.also_reported_by:
            line += f" · also reported by {len(story.also_reported_by)}"
        lines.append(line)
    document = {
        "message_id": message_id,
        "kind": "spike",
        "recipient": recipient,
        "created_at": now.isoformat(),
        "title": title,
        "text": fit(lines, limit - len(title) - 2),
        "stories": [
            {
                "outlet": story.outlet,
                "title": story.title,
                "url": story.url if _link(story.url) else None,
                "also_reported_by": list(story.also_reported_by),
            }
            for story in stories
        ],
    }
    body = json.dumps(document, ensure_ascii=False, sort_keys=True).encode()
    return OutgoingMessage(message_id, recipient, body, MessageKind.ALERT)


def chat_text(mime: bytes) -> ChatText:
    """The title and text of a stored chat message."""
    document = json.loads(mime)
    return ChatText(str(document["title"]), str(document["text"]))


def story_line(entry: DigestEntry) -> str:
    """`• Outlet: [Title with **term**](url) (also reported by 2)`, in Markdown."""
    item = entry.item
    title = _highlighted(item.title, [h for h in entry.hits if h.field == "title"])
    link = _link(item.url)
    line = f"• {escape(item.feed).strip()}: " + (f"[{title}]({link})" if link else title)
    others = [h.term for h in entry.hits if h.field != "title"]
    if others and not any(h.field == "title" for h in entry.hits):
        line += " · matched **" + escape(others[0]) + "**"
    if entry.also_reported_by:
        line += f" · also reported by {len(entry.also_reported_by)}"
    if entry.updated:
        line += " · updated"
    return line


def growth_line(growth: StoryGrowth) -> str:
    """`• heise: [Title](url) · now in 5 outlets (+1: SPIEGEL)`."""
    item = growth.item
    link = _link(item.url)
    title = _highlighted(item.title, [])
    line = f"• {escape(item.feed).strip()}: " + (f"[{title}]({link})" if link else title)
    joined = ", ".join(escape(outlet) for outlet, _ in growth.new)
    return line + f" · now in {growth.outlets} outlets (+{len(growth.new)}: {joined})"


def fit(lines: Sequence[str], limit: int) -> str:
    """The lines that fit in `limit` characters, and "+N more" for those cut."""
    kept: list[str] = []
    used = 0
    for position, line in enumerate(lines):
        rest = len(lines) - position - 1
        reserve = len(f"\n+{rest} more") if rest else 0
        if used + len(line) + 1 + reserve > limit:
            more = len(lines) - position
            tail = f"+{more} more"
            while kept and used + len(tail) + 1 > limit:  # room for the count, always
                used -= len(kept.pop()) + 1
                more += 1
                tail = f"+{more} more"
            return "\n".join([*kept, tail])
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept)


def escape(text: str) -> str:
    """Feed text as literal Markdown on one line (a newline would start a block)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _SPACES.sub(" ", text).translate(_ANGLES))


def _highlighted(title: str, hits: Sequence[Hit]) -> str:
    """The title, escaped, with each matched term in bold (non-overlapping, left to right)."""
    parts = []
    position = 0
    for hit in sorted(hits, key=lambda h: h.start):
        if hit.start < position or hit.end > len(title):
            continue
        parts.append(escape(title[position : hit.start]))
        parts.append(f"**{escape(title[hit.start : hit.end])}**")
        position = hit.end
    parts.append(escape(title[position:]))
    return "".join(parts).strip() or "(untitled)"


def _link(url: str) -> str | None:
    """Only http(s) links; characters that would end a Markdown link are percent-encoded."""
    if not url.lower().startswith(("https://", "http://")):
        return None
    return quote(url, safe=":/?#[]@!$&'*+,;=%~-._")


def _story(entry: DigestEntry) -> dict[str, object]:
    return {
        "watchlist": entry.watchlist,
        "outlet": entry.item.feed,
        "title": entry.item.title,
        "url": entry.item.url if _link(entry.item.url) else None,
        "published": entry.item.published.isoformat(),
        "matched": sorted({h.term for h in entry.hits}),
        "also_reported_by": [outlet for outlet, _ in entry.also_reported_by],
        "updated": entry.updated,
    }
