"""The words a digest is written in, per shipped language (`digests.language`), and feed
errors said in plain words for its health box.

The stored error keeps the library's text (the log and `monitor feeds` show it); a reader of
a digest gets what happened and, from the status, what it means for them.
"""

from __future__ import annotations

import re

LANGUAGES: dict[str, dict[str, str]] = {
    "en": {
        "subject": "monitor digest: {count} new for {watchlists}",
        "alert_subject": "monitor alert: {count} new for {watchlists}",
        "your_watchlists": "your watchlists",
        "nothing_new": "Nothing new since the last digest.",
        "more": "more",
        "more_for": "more for",
        "also_reported_by": "Also reported by",
        "trend": "stories a day, {days} days; today so far: {today}",
        "spike_subject": "{watchlist}: {count} stories in {hours} h, {factor}x the usual",
        "spike_text": "{count} distinct stories matched {watchlist} in {hours} h "
        "(usually {usual} in {hours} h).",
        "spike_stories": "The stories behind it",
        "spike_outlets": "Outlets with most stories",
        "spike_words": "Words that rose most",
        "silence_subject": "{watchlist}: no stories for {hours} h (usually {usual} a day)",
        "silence_text": "{watchlist} usually matches {usual} stories a day, and has matched "
        "nothing since {since}. A feed or a query has usually broken.",
        "silence_feeds": "These feeds went stale or broken meanwhile:",
        "silence_no_feeds": "No feed reports a problem: check the watchlist's query, "
        "or whether the outlets still cover it.",
        "matched": "matched",
        "in_article": "In the article:",
        "updated": "Updated",
        "feed_health": "Feed health",
        "feed_health_text": "these feeds are not delivering, so items from them may be missing.",
        "pages_health": "Full text",
        "pages_health_text": "monitor gets no article text for these feeds, so their items are "
        "matched on their titles and teasers only.",
        "since": "since",
        "sent_by": "Sent by monitor to",
        "at": "at",
        "configured_in": "configured in",
        "stories_grew": "Stories that grew",
        "now_in": "now in {outlets} outlets (+{count}: {names})",
        "already_alerted": "Already alerted",
        "already_sent": "Already sent",
        "alerted": "alerted",
        "in_digest_of": "in the digest of",
        "status.ok": "ok",
        "status.degraded": "failing",
        "status.stale": "silent",
        "status.broken": "broken",
        "status.pages": "full text failing",
        "status.disabled": "switched off",
        "problem.html": "the server sent a web page, not a feed",
        "problem.empty": "the server sent an empty page",
        "problem.not_feed": "what the server sent is not a feed",
        "problem.not_found": "the address leads to no page (HTTP {code})",
        "problem.gone": "the feed was removed by its publisher (HTTP {code})",
        "problem.forbidden": "the server refuses to let monitor read the feed (HTTP {code})",
        "problem.slow_down": "the server asks monitor to poll less often (HTTP {code})",
        "problem.server_error": "the server has a problem of its own (HTTP {code})",
        "problem.http": "the server answered with an error (HTTP {code})",
        "problem.dns": "the address could not be found",
        "problem.refused": "the server refused the connection",
        "problem.certificate": "the server's certificate could not be verified",
        "problem.timeout": "the server did not answer in time",
        "problem.redirects": "the address redirects in a loop",
        "problem.too_large": "the feed is larger than monitor accepts",
        "problem.closed": "the server hung up without answering",
        "problem.other": "it could not be read (the details are in the log)",
        "page.short": "its article pages show too little text: a consent or bot wall, or a "
        "paywall?",
        "page.not_html": "its links lead to files, not web pages ({detail})",
        "page.robots": "its site's robots.txt asks monitor not to read article pages",
        "page.slow": "its article pages take longer than monitor waits",
        "page.too_large": "its article pages are larger than monitor accepts",
        "page.internal": "its links lead to an internal address, which monitor does not visit",
        "page.other": "its article pages could not be read (`monitor feeds` shows why)",
    },
    "de": {
        "subject": "monitor: {count} neu zu {watchlists}",
        "alert_subject": "monitor-Alarm: {count} neu zu {watchlists}",
        "your_watchlists": "Ihren Themen",
        "nothing_new": "Nichts Neues seit der letzten Übersicht.",
        "more": "weitere",
        "more_for": "weitere zu",
        "trend": "Meldungen pro Tag, {days} Tage; heute bisher: {today}",
        "spike_subject": "{watchlist}: {count} Meldungen in {hours} h, "
        "{factor}-mal so viele wie üblich",
        "spike_text": "{count} verschiedene Meldungen zu {watchlist} in {hours} h "
        "(üblich sind {usual} in {hours} h).",
        "spike_stories": "Die Meldungen dahinter",
        "spike_outlets": "Quellen mit den meisten Meldungen",
        "spike_words": "Am stärksten gestiegene Wörter",
        "silence_subject": "{watchlist}: seit {hours} h keine Meldungen (sonst {usual} am Tag)",
        "silence_text": "{watchlist} hat sonst {usual} Meldungen am Tag und seit {since} "
        "keine mehr. Meist ist ein Feed oder eine Abfrage kaputt.",
        "silence_feeds": "Diese Feeds sind seither verstummt oder gestört:",
        "silence_no_feeds": "Kein Feed meldet ein Problem: prüfen Sie die Abfrage des "
        "Themas, oder ob die Quellen noch darüber berichten.",
        "also_reported_by": "Auch berichtet von",
        "matched": "Treffer",
        "in_article": "Im Artikel:",
        "updated": "Aktualisiert",
        "feed_health": "Feed-Zustand",
        "feed_health_text": "diese Feeds liefern nicht, Meldungen aus ihnen können fehlen.",
        "pages_health": "Volltext",
        "pages_health_text": "für diese Feeds bekommt monitor keinen Artikeltext, ihre Meldungen "
        "werden nur mit Titel und Anreißer abgeglichen.",
        "since": "seit",
        "sent_by": "Gesendet von monitor an",
        "at": "am",
        "configured_in": "eingerichtet in",
        "stories_grew": "Weiter verbreitet",
        "now_in": "jetzt in {outlets} Medien (+{count}: {names})",
        "already_alerted": "Bereits gemeldet",
        "already_sent": "Bereits gesendet",
        "alerted": "gemeldet",
        "in_digest_of": "in der Übersicht vom",
        "status.ok": "in Ordnung",
        "status.degraded": "gestört",
        "status.stale": "still",
        "status.broken": "defekt",
        "status.pages": "Volltext scheitert",
        "status.disabled": "abgeschaltet",
        "problem.html": "der Server schickte eine Webseite, keinen Feed",
        "problem.empty": "der Server schickte eine leere Seite",
        "problem.not_feed": "was der Server schickte, ist kein Feed",
        "problem.not_found": "unter der Adresse gibt es keine Seite (HTTP {code})",
        "problem.gone": "der Anbieter hat den Feed entfernt (HTTP {code})",
        "problem.forbidden": "der Server verweigert monitor den Zugriff (HTTP {code})",
        "problem.slow_down": "der Server bittet, seltener abzufragen (HTTP {code})",
        "problem.server_error": "der Server hat selbst ein Problem (HTTP {code})",
        "problem.http": "der Server antwortete mit einem Fehler (HTTP {code})",
        "problem.dns": "die Adresse wurde nicht gefunden",
        "problem.refused": "der Server lehnte die Verbindung ab",
        "problem.certificate": "das Zertifikat des Servers ließ sich nicht prüfen",
        "problem.timeout": "der Server antwortete nicht rechtzeitig",
        "problem.redirects": "die Adresse leitet im Kreis weiter",
        "problem.too_large": "der Feed ist größer, als monitor annimmt",
        "problem.closed": "der Server beendete die Verbindung ohne Antwort",
        "problem.other": "er ließ sich nicht lesen (Einzelheiten im Log)",
        "page.short": "seine Artikelseiten zeigen zu wenig Text: eine Zustimmungs- oder "
        "Bot-Sperre, oder eine Bezahlschranke?",
        "page.not_html": "seine Links führen zu Dateien, nicht zu Webseiten ({detail})",
        "page.robots": "die robots.txt der Website bittet monitor, keine Artikelseiten zu lesen",
        "page.slow": "seine Artikelseiten laden länger, als monitor wartet",
        "page.too_large": "seine Artikelseiten sind größer, als monitor annimmt",
        "page.internal": "seine Links führen zu einer internen Adresse, die monitor nicht besucht",
        "page.other": "seine Artikelseiten ließen sich nicht lesen (`monitor feeds` zeigt, warum)",
    },
}

# The library's error text (fetch.py, parse.py, poller.py) -> a problem, first match wins.
_PROBLEMS = (
    ("html", re.compile(r"an HTML page, not a feed")),
    ("empty", re.compile(r"empty document")),
    ("not_found", re.compile(r"^HTTP 404\b")),
    ("gone", re.compile(r"^HTTP 410\b")),
    ("forbidden", re.compile(r"^HTTP 40[13]\b")),
    ("slow_down", re.compile(r"^HTTP 429\b")),
    ("server_error", re.compile(r"^HTTP 5\d\d\b")),
    ("http", re.compile(r"^HTTP \d{3}\b")),
    (
        "dns",
        re.compile(
            r"Name or service not known|nodename nor servname|name resolution|"
            r"No address associated|Could not contact DNS|Domain name not found",
            re.IGNORECASE,
        ),
    ),
    ("refused", re.compile(r"Connection refused|Errno 111\]|Connect call failed", re.I)),
    ("certificate", re.compile(r"certificate|SSL|TLS", re.IGNORECASE)),
    ("timeout", re.compile(r"timed out", re.IGNORECASE)),
    ("redirects", re.compile(r"too many redirects", re.IGNORECASE)),
    ("too_large", re.compile(r"exceeds the .*cap|too large", re.IGNORECASE)),
    ("closed", re.compile(r"closed the connection", re.IGNORECASE)),
    ("not_feed", re.compile(r"not a feed", re.IGNORECASE)),
)
_STATUS_CODE = re.compile(r"^HTTP (\d{3})")

# A page's stored error (fulltext.py, pages.py, fetch.py) -> a page problem, first match wins.
_PAGE_PROBLEMS = (
    ("short", re.compile(r"words of text")),
    ("not_html", re.compile(r"^not an HTML page \((?P<detail>.*)\)$")),
    ("robots", re.compile(r"robots\.txt")),
    ("slow", re.compile(r"took longer than|timed out", re.IGNORECASE)),
    ("too_large", re.compile(r"exceeds the .*cap")),
    ("internal", re.compile(r"internal address")),
)


def labels(language: str) -> dict[str, str]:
    """The words for `language` (a code checked by the config)."""
    return LANGUAGES[language]


def plain_problem(error: str, language: str = "en") -> str:
    """A feed's stored error as its reader would say it: "HTTP 404 NOT FOUND" -> "the
    address leads to no page (HTTP 404)"."""
    words = LANGUAGES[language]
    problem = next((name for name, pattern in _PROBLEMS if pattern.search(error)), "other")
    code = _STATUS_CODE.match(error)
    return words[f"problem.{problem}"].format(code=code.group(1) if code else "")


def plain_page_problem(error: str, language: str = "en") -> str:
    """Why a full-text feed's pages give no text, as its reader would say it: "only 9 words
    of text (...)" -> "its article pages show too little text: ..."."""
    for name, pattern in _PAGE_PROBLEMS:
        if found := pattern.search(error):
            return LANGUAGES[language][f"page.{name}"].format(**found.groupdict())
    return LANGUAGES[language]["page.other"]


def plain_status(status: str, language: str = "en") -> str:
    """A feed status (FeedStatus value) in the reader's words."""
    return LANGUAGES[language].get(f"status.{status}", status)
