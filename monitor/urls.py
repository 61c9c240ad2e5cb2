"""Canonical article URLs: one story link, however many tracking parameters were added."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_TRACKING_PREFIXES = ("utm_", "mc_", "pk_", "piwik_", "matomo_", "at_", "oly_", "_hs")
_TRACKING_NAMES = frozenset(
    {
        "fbclid",
        "gclid",
        "dclid",
        "gbraid",
        "wbraid",
        "msclkid",
        "yclid",
        "igshid",
        "mkt_tok",
        "ref",
        "ref_src",
        "ref_url",
        "referrer",
        "cmpid",
        "wt_mc",
        "wt.mc_id",
        "ncid",
        "sr_share",
        "spm",
        "icid",
        "ito",
        "xtor",
        "_ga",
        "_gl",
        "smid",
    }
)


def is_tracking_parameter(name: str) -> bool:
    lowered = name.lower()
    return lowered in _TRACKING_NAMES or lowered.startswith(_TRACKING_PREFIXES)


def canonical_url(url: str) -> str:
    """The link without tracking parameters or fragment; scheme and host lowercased.

    This is the link we show and store. Identity for deduplication is `url_identity`,
    which also ignores scheme, `www.` and trailing slashes.
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return url
    query = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if not is_tracking_parameter(name)
    ]
    netloc = parts.netloc.lower()
    if netloc.endswith(":80") and parts.scheme.lower() == "http":
        netloc = netloc[:-3]
    if netloc.endswith(":443") and parts.scheme.lower() == "https":
        netloc = netloc[:-4]
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", urlencode(query), ""))


def url_identity(url: str) -> str:
    """What makes two article links the same article: no scheme, no www., no trailing slash."""
    canonical = canonical_url(url)
    parts = urlsplit(canonical)
    if not parts.netloc:
        return canonical
    host = parts.netloc.removeprefix("www.")
    path = parts.path.rstrip("/") or "/"
    query = "&".join(sorted(parts.query.split("&"))) if parts.query else ""
    return f"{host}{path}" + (f"?{query}" if query else "")
