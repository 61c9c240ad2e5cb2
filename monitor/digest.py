"""Digest and alert emails: pending matches rendered with Jinja2 into one multipart message
per recipient. Owns Jinja2 and css-inline.

Feed text is hostile: it is autoescaped in HTML, links must be http(s), and it never reaches
a header (subjects are built from watchlist names and counts; header values are single-lined).
"""

from __future__ import annotations

import binascii
import contextlib
import email.policy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email import message_from_bytes, quoprimime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import css_inline
import jinja2
from jinja2.sandbox import SandboxedEnvironment

from monitor.chat import chat_text
from monitor.labels import labels, plain_page_problem, plain_problem, plain_status
from monitor.models import (
    DigestEntry,
    EarlierMessage,
    Hit,
    Item,
    MessageKind,
    OutgoingMessage,
    StoryGrowth,
)
from monitor.spikes import sparkline
from monitor.text import single_line

SNIPPET_CHARS = 280
BODY_SNIPPET_CHARS = 180  # about 25 words of an article: a quote, not a copy (Pressespiegel)
Segments = list[tuple[str, bool]]  # (text, highlighted)


def _where(error: BaseException) -> str:
    """'FILE:LINE: ' of the innermost template frame of a rendering error, if any."""
    found = ""
    frame = error.__traceback__
    while frame is not None:
        name = frame.tb_frame.f_code.co_filename
        if name.endswith(".j2"):
            found = f"{name}:{frame.tb_lineno}: "
        frame = frame.tb_next
    return found


def default_templates_dir() -> Path:
    """The templates shipped in the wheel, or the repo's templates/ in a source checkout."""
    packaged = Path(__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"


@dataclass(frozen=True, slots=True)
class DigestSettings:
    sender: str
    zone: ZoneInfo
    max_per_watchlist: int = 25
    subject: str | None = None  # None: the language's default (labels.py)
    alert_subject: str | None = None
    language: str = "en"  # of the labels and default subjects (labels.LANGUAGES)
    names: tuple[tuple[str, str], ...] = ()  # (address, display name) for the To header
    source: str = ""  # which config produced the digest, for the footer
    unsubscribe_url: str | None = None  # https, for RFC 8058 one-click unsubscribe


@dataclass(frozen=True, slots=True)
class FeedHealth:
    """A feed that is not well, as the digest's health section shows it."""

    name: str
    status: str  # a FeedStatus value, or PAGES
    error: str
    since: datetime | None


PAGES = "pages"  # FeedHealth.status of a full-text feed whose pages keep giving no text


@dataclass(frozen=True, slots=True)
class ReadableMessage:
    """A rendered message as its recipient reads it (`digest --preview`)."""

    address: str
    to: str  # the To header, decoded: "Jane Doe <jane@example.org>"
    subject: str
    text: str
    html: str
    mime: bytes


def read_back(message: OutgoingMessage) -> ReadableMessage:
    """The decoded parts of a rendered message: what a mail program shows (a channel's
    message, chat.py's JSON: its title and Markdown text)."""
    if "@" not in message.recipient:
        chat = chat_text(message.mime)
        return ReadableMessage(
            message.recipient, message.recipient, chat.title, chat.text, "", message.mime
        )
    parsed = message_from_bytes(message.mime, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)  # the default policy's class

    def body(subtype: str) -> str:
        part = parsed.get_body((subtype,))
        if not isinstance(part, EmailMessage):
            return ""
        return "\n".join(str(part.get_content()).splitlines())  # the wire's CRLF: \n

    return ReadableMessage(
        message.recipient,
        str(parsed["To"]),
        str(parsed["Subject"]),
        body("plain"),
        body("html"),
        message.mime,
    )


class _HeaderClasses(HeaderRegistry):
    """The email package's header registry, building each header's class once: the stock
    registry builds a new class (type()) for every header of every message and part, a
    sixth of a message's composing time outside the templates."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        if key not in self._classes:
            self._classes[key] = super().__getitem__(name)
        return self._classes[key]


_POLICY = SMTP.clone(header_factory=_HeaderClasses())


_QP_LINE = 76  # RFC 2045's limit for an encoded line


def _text_part(text: str, subtype: str) -> EmailMessage:
    """A text/`subtype` UTF-8 part, quoted-printable (readable in the raw message, no
    spam-filter signal as base64 text is). Encoded by binascii's C encoder: the email
    package's own (set_content) is Python, character by character, and took two fifths
    of a message's composing time outside the templates. Lines are split as set_content
    split them (at \\n, \\r and \\r\\n), so a lone \\r is a line end too, and the text ends
    with one. binascii lets a line that ends in an encoded space run to 77-78 characters;
    such a part is encoded by the email package's encoder instead (RFC 2045: 76)."""
    body = b"\n".join(text.encode("utf-8").splitlines()) + b"\n"
    encoded = binascii.b2a_qp(body, istext=True).decode("ascii")
    if any(len(line) > _QP_LINE for line in encoded.splitlines()):
        encoded = quoprimime.body_encode(body.decode("latin-1"), _QP_LINE)
    part = EmailMessage(policy=_POLICY)
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(encoded)
    return part


def shown_terms(hits: Sequence[Hit]) -> list[str]:
    """The terms found, in order, but not one found only inside another's hit: the alias
    {Musk} in "Elon Musk" is that name, not Musk a second time."""

    def inside(hit: Hit) -> bool:
        return any(
            other.field == hit.field
            and other.term != hit.term
            and other.start <= hit.start
            and hit.end <= other.end
            and (other.end - other.start) > (hit.end - hit.start)
            for other in hits
        )

    return list(dict.fromkeys(hit.term for hit in hits if not inside(hit)))


class Renderer:
    """Renders digests; user templates (templates_dir) override the shipped ones, sandboxed."""

    def __init__(self, settings: DigestSettings, templates_dir: Path | None = None) -> None:
        self.settings = settings
        self._names = dict(settings.names)
        self._labels = labels(settings.language)
        search = [str(templates_dir)] if templates_dir else []
        self._env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader([*search, str(default_templates_dir())]),
            autoescape=jinja2.select_autoescape(["html", "html.j2"], default_for_string=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            # Read once: the templates checked when the config was loaded (problems()) are
            # the ones used until the next reload, not an edit saved meanwhile, unchecked.
            auto_reload=False,
        )

    def render(
        self,
        recipient: str,
        entries: Sequence[DigestEntry],
        now: datetime,
        *,
        kind: MessageKind = MessageKind.DIGEST,
        health: Sequence[FeedHealth] = (),
        already: Sequence[tuple[DigestEntry, EarlierMessage]] = (),
        growth: Sequence[StoryGrowth] = (),
        trends: Mapping[str, Sequence[int]] | None = None,
    ) -> OutgoingMessage:
        """Render one multipart message: a digest, or an alert (immediate watchlists).

        entries: one per story, in the order of their sections; already: stories an earlier
        message carried, one line each; growth: sent stories that gained outlets; trends:
        each watchlist's stories per day, today last, charted in its section."""
        context = self._context(recipient, entries, now, kind, health, trends or {})
        context.update(
            subject=self._subject(kind, recipient, entries, growth),
            already=[self._earlier(entry, sent) for entry, sent in already],
            already_heading=self._already_heading(already),
            growth=[self._growth(line) for line in growth],
            total=len(entries) + len(growth),
        )
        text = self._env.get_template(f"{kind}.txt.j2").render(context)
        # Inlined CSS: Gmail and Outlook drop <style> blocks but keep style attributes.
        html = css_inline.inline(self._env.get_template(f"{kind}.html.j2").render(context))
        message = EmailMessage(policy=_POLICY)
        notes = [i for line in growth for i in line.note_ids]
        message_id = self.message_id(recipient, entries, now, notes)
        message["From"] = self.settings.sender
        message["To"] = self._to(recipient)
        message["Subject"] = single_line(str(context["subject"]))
        message["Date"] = format_datetime(now.astimezone(self.settings.zone))
        message["Message-ID"] = message_id
        message["Auto-Submitted"] = "auto-generated"
        message["List-Id"] = f"monitor digest <digest.{_domain(self.settings.sender)}>"
        if self.settings.unsubscribe_url:
            # Only where something handles it: a mailto: to the sender reached no one, and a
            # client's Unsubscribe button then did nothing. RFC 8058 one-click needs https.
            message["List-Unsubscribe"] = f"<{self.settings.unsubscribe_url}>"
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message["MIME-Version"] = "1.0"
        message.make_alternative()
        message.attach(_text_part(text, "plain"))
        message.attach(_text_part(html, "html"))
        return OutgoingMessage(message_id, recipient, message.as_bytes(), kind)

    def render_notice(
        self,
        template: str,
        recipient: str,
        subject: str,
        context: Mapping[str, object],
        now: datetime,
        seed: str,
        kind: MessageKind = MessageKind.ALERT,
    ) -> OutgoingMessage:
        """Render `template`.txt.j2 and .html.j2 (a spike or silence alert) into one message;
        the Message-ID is derived from `seed`, so the same alert keeps its ID."""
        page = {
            **context,
            "subject": subject,
            "recipient": recipient,
            "health": [],
            "pages_health": [],
            "language": self.settings.language,
            "t": self._labels,
            "generated_at": self._local(now),
            "source": self.settings.source,
        }
        text = self._env.get_template(f"{template}.txt.j2").render(page)
        html = css_inline.inline(self._env.get_template(f"{template}.html.j2").render(page))
        message_id = self.notice_id(template, recipient, seed)
        message = EmailMessage(policy=_POLICY)
        message["From"] = self.settings.sender
        message["To"] = self._to(recipient)
        message["Subject"] = single_line(subject)
        message["Date"] = format_datetime(now.astimezone(self.settings.zone))
        message["Message-ID"] = message_id
        message["Auto-Submitted"] = "auto-generated"
        message["MIME-Version"] = "1.0"
        message.make_alternative()
        message.attach(_text_part(text, "plain"))
        message.attach(_text_part(html, "html"))
        return OutgoingMessage(message_id, recipient, message.as_bytes(), kind)

    def notice_id(self, template: str, recipient: str, seed: str) -> str:
        """A notice's Message-ID: the same alert to the same recipient keeps it."""
        digest = hashlib.sha256(f"{recipient}|{seed}".encode()).hexdigest()[:32]
        return f"<{template}.{digest}@{_domain(self.settings.sender)}>"

    def _to(self, recipient: str) -> Address | str:
        """The recipient with their display name, which the header encodes (RFC 2047),
        quotes and folds: a name is never pasted into the header's text."""
        name = self._names.get(recipient)
        if not name:
            return recipient
        local, _, domain = recipient.rpartition("@")
        return Address(display_name=name, username=local, domain=domain)

    def problems(self) -> list[str]:
        """What keeps a digest or an alert from rendering, found by rendering a sample of
        each (every template they include compiles on the way): a broken user template, or
        a setting a header refuses, is reported when the config is loaded (`monitor check`,
        start, reload), not by every digest tick, for every recipient."""
        now = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
        item = Item(
            "u:example.org/sample", "sample", "g", "https://example.org/sample", "Sample xAI",
            "A sample summary about xAI.", now, "en",
        )  # fmt: skip
        entry = DigestEntry(
            (1,), "sample", item, (Hit("xAI", "title", 7, 10),), watchlists=("sample", "other")
        )
        health = [
            FeedHealth("sample", "degraded", "HTTP 503", now),
            FeedHealth("sample", PAGES, "only 9 words of text", now),
        ]
        # Every section a digest can have: an earlier alert's line, a story that grew.
        already = [
            (replace(entry, delivery_ids=(2,)), EarlierMessage("<m@x>", MessageKind.ALERT, now))
        ]
        growth = [StoryGrowth((3,), 1, item, 2, (("other", "https://example.org/o"),), ("x",))]
        found = []
        try:  # spike and silence alerts (monitor/spike_alerts.py)
            sample = {
                "lines": ["A sample."],
                "stories": [
                    {"title": "Sample", "url": item.url, "outlet": "sample", "also": ["other"]}
                ],
                "outlets": [{"name": "sample", "count": 1}],
                "words": ["sample"],
                "feeds": ["sample: broken"],
            }
            self.render_notice("spike", "sample@example.org", "Sample", sample, now, "sample")
        except jinja2.TemplateSyntaxError as error:
            found.append(f"{error.filename or error.name}:{error.lineno}: {error.message}")
        except Exception as error:
            found.append(f"{_where(error) or 'rendering a sample spike alert: '}{error!r}")
        for kind in MessageKind:
            try:
                self.render(
                    "sample@example.org",
                    [entry],
                    now,
                    kind=kind,
                    health=health,
                    already=already,
                    growth=growth,
                )
            except jinja2.TemplateSyntaxError as error:
                found.append(f"{error.filename or error.name}:{error.lineno}: {error.message}")
            except Exception as error:  # undefined names, bad filters, a header refused
                where = _where(error) or f"rendering a sample {kind}: "
                found.append(f"{where}{type(error).__name__}: {error}")
        return found

    def message_id(
        self,
        recipient: str,
        entries: Sequence[DigestEntry],
        now: datetime | None = None,
        notes: Sequence[int] = (),
    ) -> str:
        """Deterministic: the same recipient and deliveries (and story growth notes) always
        give the same Message-ID, whichever worker composes them. The items' keys count
        too: SQLite gives the ids of deliveries pruned from the end of the table to new
        ones, which must not reuse an old message's ID (a mail client would hide the new
        message as a duplicate).

        An empty digest (send_empty) is identified by its time instead.
        """
        ids = sorted(i for entry in entries for i in entry.delivery_ids)
        keys = sorted({entry.item.key for entry in entries})
        seed_ids = ",".join(map(str, ids)) + "|" + ",".join(keys) if ids else ""
        if notes:  # stories that grew, alone or beside entries
            seed_ids += "|growth:" + ",".join(map(str, sorted(notes)))
        if not seed_ids:
            seed_ids = f"empty:{now.isoformat() if now else ''}"
        seed = f"{recipient}|{seed_ids}".encode()
        return f"<digest.{hashlib.sha256(seed).hexdigest()[:32]}@{_domain(self.settings.sender)}>"

    def _context(
        self,
        recipient: str,
        entries: Sequence[DigestEntry],
        now: datetime,
        kind: MessageKind,
        health: Sequence[FeedHealth],
        trends: Mapping[str, Sequence[int]] | None = None,
    ) -> dict[str, object]:
        groups: dict[str, list[DigestEntry]] = {}
        for entry in entries:
            groups.setdefault(entry.watchlist, []).append(entry)
        cap = self.settings.max_per_watchlist
        watchlists = [
            {
                "name": name,
                "entries": [self._entry(entry) for entry in group[:cap]],
                # Past the cap, items are listed one line each (title, outlet, link), never
                # hidden: a delivery marked sent must be readable in the message.
                "more": [self._brief(entry) for entry in group[cap:]],
                "count": len(group),
                "trend": trend_chart((trends or {}).get(name, ())),
            }
            for name, group in groups.items()  # the order given: the config's (contents.py)
        ]
        language = self.settings.language
        return {
            "language": language,
            "t": self._labels,
            "health": [
                {
                    "name": h.name,
                    "status": plain_status(h.status, language),
                    "error": plain_problem(h.error, language) if h.error else "",
                    "since": self._local(h.since) if h.since else "",
                }
                for h in health
                if h.status != PAGES
            ],
            # Its feed is well and its items are matched on their teasers: not "missing".
            "pages_health": [
                {
                    "name": h.name,
                    "error": plain_page_problem(h.error, language),
                    "since": self._local(h.since) if h.since else "",
                }
                for h in health
                if h.status == PAGES
            ],
            "recipient": recipient,
            "kind": kind,
            "watchlists": watchlists,
            "generated_at": self._local(now),
            "source": self.settings.source,
        }

    def _subject(
        self,
        kind: MessageKind,
        recipient: str,
        entries: Sequence[DigestEntry],
        growth: Sequence[StoryGrowth],
    ) -> str:
        """Counts stories and articles (one entry each, and each story that grew), never
        matches; names the sections, in a digest then the other lists an article matched
        (a reader of one list looks for its name), then the lists of stories that grew."""
        words = self._labels
        if kind is MessageKind.ALERT:
            template = self.settings.alert_subject or words["alert_subject"]
        else:
            template = self.settings.subject or words["subject"]
        names = [entry.watchlist for entry in entries]
        if kind is not MessageKind.ALERT:  # an alert names the lists that made it urgent
            names += [name for entry in entries for name in entry.watchlists]
        names += [name for line in growth for name in line.watchlists[:1]]
        return template.format(
            count=len(entries) + len(growth),
            watchlists=", ".join(dict.fromkeys(names)) or words["your_watchlists"],
            recipient=recipient,
        )

    def _already_heading(self, already: Sequence[tuple[DigestEntry, EarlierMessage]]) -> str:
        alerts = all(sent.kind == MessageKind.ALERT for _, sent in already)
        return self._labels["already_alerted" if alerts else "already_sent"]

    def _earlier(self, entry: DigestEntry, sent: EarlierMessage) -> dict[str, object]:
        how = "alerted" if sent.kind == MessageKind.ALERT else "in_digest_of"
        return {
            **self._brief(entry),
            "when": f"{self._labels[how]} {self._local(sent.at)}",
            "tags": " · ".join(entry.watchlists or (entry.watchlist,)),
        }

    def _growth(self, line: StoryGrowth) -> dict[str, object]:
        item = line.item
        spread = self._labels["now_in"].format(
            outlets=line.outlets,
            count=len(line.new),
            names=", ".join(outlet for outlet, _ in line.new),
        )
        return {
            "title": item.title or item.url,
            "outlet": item.feed,
            "spread": spread,
            "new": [{"outlet": outlet, "url": safe_link(url)} for outlet, url in line.new],
            "tags": " · ".join(line.watchlists),
        }

    def _entry(self, entry: DigestEntry) -> dict[str, object]:
        item = entry.item
        title_spans = [(h.start, h.end) for h in entry.hits if h.field == "title"]
        summary_spans = [(h.start, h.end) for h in entry.hits if h.field == "summary"]
        return {
            "title": item.title or item.url,
            "title_parts": highlight(item.title, title_spans, 0, len(item.title)),
            "url": safe_link(item.url),
            "outlet": item.feed,
            "time": self._local(item.published),
            "snippet": _snippet(entry, summary_spans),
            "in_article": _is_from_article(entry, summary_spans),
            "terms": shown_terms(entry.hits),
            "updated": entry.updated,
            "tags": " · ".join(entry.watchlists or (entry.watchlist,)),
            "shared": len(entry.watchlists) > 1,  # tags worth a line: more than its section
            "also": [
                {"outlet": outlet, "url": safe_link(url)} for outlet, url in entry.also_reported_by
            ],
        }

    def _brief(self, entry: DigestEntry) -> dict[str, str]:
        item = entry.item
        url = safe_link(item.url)
        return {"title": item.title or url, "url": url, "outlet": item.feed}

    def _local(self, moment: datetime) -> str:
        with contextlib.suppress(OverflowError):  # a placeholder date (year 1) stored earlier
            moment = moment.astimezone(self.settings.zone)
        return moment.strftime("%Y-%m-%d %H:%M %Z")


def _snippet(entry: DigestEntry, summary_spans: Sequence[tuple[int, int]]) -> Segments:
    """The summary around its first hit; if only the article's text matched, about 25
    words of it around its first hit (entry.excerpt), never more."""
    if not _is_from_article(entry, summary_spans):
        return snippet(entry.item.summary, summary_spans)
    body_spans = [(h.start, h.end) for h in entry.hits if h.field == "body"]
    return snippet(entry.excerpt, body_spans, BODY_SNIPPET_CHARS)


def _is_from_article(entry: DigestEntry, summary_spans: Sequence[tuple[int, int]]) -> bool:
    """Whether the snippet quotes the article (only its text matched), not the teaser."""
    has_body_hit = any(h.field == "body" for h in entry.hits)
    return has_body_hit and not summary_spans and bool(entry.excerpt)


TREND_HEIGHT = 40  # pixels of the busiest day's bar


def trend_chart(counts: Sequence[int]) -> dict[str, object] | None:
    """A watchlist's recent days as bars of table cells (pixel heights; every mail client
    draws a cell's height and colour, where many block SVG and remote images), and as a
    sparkline for the text part. None without counts."""
    if not counts:
        return None
    top = max(max(counts), 1)
    bars = [
        {"count": count, "height": max(2, round(count / top * TREND_HEIGHT)), "today": False}
        for count in counts
    ]
    bars[-1]["today"] = True
    return {"bars": bars, "spark": sparkline(counts), "days": len(counts), "today": counts[-1]}


def snippet(text: str, spans: Sequence[tuple[int, int]], width: int = SNIPPET_CHARS) -> Segments:
    """A window of text around the first hit, with every hit inside it highlighted."""
    if not text:
        return []
    first = min((start for start, _ in spans), default=0)
    start = max(0, first - width // 3)
    if start:  # do not cut a word in half
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < first else start
    end = min(len(text), start + width)
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > first else end
    parts = highlight(text, spans, start, end)
    if start > 0:
        parts.insert(0, ("… ", False))
    if end < len(text):
        parts.append((" …", False))
    return parts


def highlight(text: str, spans: Sequence[tuple[int, int]], start: int, end: int) -> Segments:
    """Split text[start:end] into plain and highlighted segments."""
    parts: Segments = []
    position = start
    for span_start, span_end in sorted(set(spans)):
        span_start, span_end = max(span_start, position), min(span_end, end)
        if span_start >= span_end:
            continue
        if span_start > position:
            parts.append((text[position:span_start], False))
        parts.append((text[span_start:span_end], True))
        position = span_end
    if position < end:
        parts.append((text[position:end], False))
    return parts


def safe_link(url: str) -> str:
    """Feed links only where a mail client opens them safely: http(s)."""
    return url if url.startswith(("https://", "http://")) else ""


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "monitor.invalid"
