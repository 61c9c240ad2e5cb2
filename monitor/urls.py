"""Canonical article URLs: one story link, however many tracking parameters were added."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

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
    A "#!" fragment stays: on such sites (the AJAX crawling scheme) it names the page, and
    /#!/news/1 and /#!/news/2 were one item.

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
    # Parameters are dropped from the query as written, the others kept byte for byte:
    # decoding and re-encoding it rewrote links ("news.php?12345" became "?12345=", a
    # Latin-1 "%FC" became "%EF%BF%BD") that some servers then did not serve. Identity
    # (canonical_identity) decodes and sorts them, as before.
    query = "&".join(
        part
        for part in parts.query.split("&")
        if part and not is_tracking_parameter(unquote_plus(part.partition("=")[0]))
    )
    netloc = parts.netloc.lower()
    if netloc.endswith(":80") and parts.scheme.lower() == "http":
        netloc = netloc[:-3]
    if netloc.endswith(":443") and parts.scheme.lower() == "https":
        netloc = netloc[:-4]
    fragment = parts.fragment if parts.fragment.startswith("!") else ""
    path = parts.path or "/"
    return urlunsplit((parts.scheme.lower(), netloc, path, query, fragment))


# Mobile and AMP mirrors of the desktop host ("m.spiegel.de", "amp.theguardian.com").
_MIRROR_HOST_PREFIXES = ("www.", "m.", "mobile.", "amp.")
# Query switches that select the AMP rendering of the same article.
_AMP_PARAMETERS = frozenset({"amp", "outputtype", "output", "amp_js_v", "usqp"})
_AMP_CACHE_SUFFIX = ".cdn.ampproject.org"


def url_identity(url: str) -> str:
    """What makes two article links the same article.

    Ignored: scheme, `www.`/`m.`/`mobile.`/`amp.` hosts, trailing slashes, parameter order,
    AMP variants (`/amp/` segments, `.amp` suffixes, `?amp`, `outputType=amp`, the Google
    AMP cache) and tracking parameters.
    """
    canonical = canonical_url(_unwrap_amp_cache(url.strip()))
    return canonical_identity(canonical)


def canonical_identity(canonical: str) -> str:
    """`url_identity` of a link canonical_url already returned (parsing saves a pass)."""
    parts = urlsplit(canonical)
    if parts.netloc.endswith(_AMP_CACHE_SUFFIX):  # canonical_url lowercased the host
        parts = urlsplit(canonical_url(_unwrap_amp_cache(canonical)))
    if not parts.netloc:
        return canonical
    host = _desktop_host(parts.netloc)
    path = _non_amp_path(parts.path).rstrip("/") or "/"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode(sorted((k, v) for k, v in pairs if not _is_amp_switch(k, v)))
    page = f"#{parts.fragment}" if parts.fragment else ""  # only "#!" is left: see above
    return f"{host}{path}" + (f"?{query}" if query else "") + page


def _desktop_host(host: str) -> str:
    for prefix in _MIRROR_HOST_PREFIXES:
        rest = host.removeprefix(prefix)
        if rest != host and "." in rest:
            return _desktop_host(rest)
    return host


def _non_amp_path(path: str) -> str:
    segments = [s for s in path.split("/") if s.lower() != "amp"]
    last = segments[-1] if segments else ""
    lowered = last.lower()
    if lowered.endswith(".amp"):
        last = last[:-4]
    elif ".amp." in lowered:  # "story.amp.html" -> "story.html"
        at = lowered.rindex(".amp.")
        last = last[:at] + last[at + 4 :]
    return "/".join([*segments[:-1], last]) if segments else path


def _is_amp_switch(name: str, value: str) -> bool:
    lowered = name.lower()
    if lowered not in _AMP_PARAMETERS:
        return False
    return lowered in ("amp", "amp_js_v", "usqp") or value.lower() == "amp"


def _unwrap_amp_cache(url: str) -> str:
    """https://www-x-de.cdn.ampproject.org/c/s/www.x.de/a -> https://www.x.de/a."""
    parts = urlsplit(url)
    if not parts.netloc.lower().endswith(_AMP_CACHE_SUFFIX):
        return url
    segments = parts.path.split("/")  # "", "c" or "v", optional "s", host, path...
    start = 3 if len(segments) > 3 and segments[2] == "s" else 2
    scheme = "https" if start == 3 else "http"
    rest = "/".join(segments[start:])
    return f"{scheme}://{rest}" + (f"?{parts.query}" if parts.query else "")
