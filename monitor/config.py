"""The configuration: YAML in, validated immutable objects out.

Validation happens once, completely: every problem is reported at the same time as
``FILE:LINE:COL: key.path: what is wrong``, so a user fixes a file in one pass.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import idna
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from monitor.config_messages import (
    EXAMPLES,
    did_you_mean,
    meant_key,
    plain_message,
    yaml_syntax,
)
from monitor.errors import ConfigError
from monitor.schedules import (
    Every,
    QuietHours,
    Schedule,
    check_in_zone,
    parse_quiet_hours,
    parse_schedule,
)
from monitor.spikes import PRESETS, Sensitivity, SpikeSettings, settings_for

DEFAULT_CONFIG_NAMES = ("config.yaml",)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


def _kind_of(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"the single value {value!r}"


def _parse_duration(value: Any) -> float:
    """'90s', '15m', '2h', '1d' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 15m, 2h or 1d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        found = _DURATION.match(str(value))
        if not found:
            raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 15m, 2h or 1d")
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def _parse_size(value: Any) -> int:
    """'10 MiB', '512KiB' or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    found = _SIZE.match(str(value))
    if not found:
        raise ValueError(f"{value!r} is not a size; write e.g. 10 MiB or 512 KiB")
    return int(found.group(1)) * _SIZE_UNITS[found.group(2)]


def is_loopback_host(host: str) -> bool:
    """A host on this machine: what goes to it never crosses a network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


def mailbox_address(text: str) -> str:
    """A plain mailbox address (name@domain.tld, nothing that could split a header) as SMTP
    takes it: an international domain in its ASCII form (IDNA), so that name@bücher.de is
    delivered. A name before the @ beyond ASCII would need SMTPUTF8 from every server on
    the way; it is refused here rather than failing at every send."""
    if not _ADDRESS.match(text) or not text.isprintable():
        raise ValueError(f"{text!r} is not an email address like name@example.org")
    local, _, domain = text.rpartition("@")
    domain = domain.lower()  # RFC 5321 2.4: one mailbox, however its domain is written
    if not local.isascii():
        raise ValueError(
            f"{text!r}: letters beyond ASCII before the @ need SMTPUTF8, which monitor does "
            "not use; give the mailbox's ASCII address"
        )
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as error:
            raise ValueError(f"{text!r}: {domain!r} is not a valid domain name: {error}") from None
    return f"{local}@{domain}"


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin"
        ) from None
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration)]
Size = Annotated[int, BeforeValidator(_parse_size)]
Address = Annotated[str, AfterValidator(mailbox_address)]


def _check_schedule(value: str) -> str:
    parse_schedule(value)  # raises ValueError naming the accepted forms
    return value


def _check_quiet_hours(value: str) -> str:
    parse_quiet_hours(value)
    return value


# Characters no header may carry (CR, LF, NUL and the other controls), and the bidi overrides
# and isolates that change how the text around them reads.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _header_text(value: str) -> str:
    """Text that reaches a mail header (a subject, or a watchlist name in one)."""
    if (found := _UNSAFE.search(value)) is not None:
        raise ValueError(
            f"contains the control character U+{ord(found.group()):04X}, which no mail "
            "header may carry; remove it"
        )
    if "=?" in value:  # an RFC 2047 encoded word: mail programs would decode it
        raise ValueError("contains '=?', which mail programs read as an encoded word")
    return value


ScheduleText = Annotated[str, AfterValidator(_check_schedule)]
HeaderText = Annotated[str, AfterValidator(_header_text)]
QuietHoursText = Annotated[str, AfterValidator(_check_quiet_hours)]
NonEmpty = Annotated[str, Field(min_length=1)]


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    """When one recipient gets one watchlist."""

    watchlist: str
    recipient: str
    schedule: Schedule
    quiet: QuietHours | None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class PollingConfig(_Model):
    interval: Duration = 900.0  # default seconds between polls of one feed
    min_interval: Duration = 300.0
    max_interval: Duration = 6 * 3600.0
    concurrency: int = Field(20, ge=1, le=1000)
    per_host: int = Field(2, ge=1, le=16)
    connect_timeout: Duration = 10.0
    timeout: Duration = 30.0
    max_body: Size = 10 * 1024 * 1024
    max_items: int = Field(500, ge=1)
    contact: str | None = None  # URL or address put in the User-Agent for feed operators
    min_gap: Duration = 0.05  # seconds between the starts of two requests to one host
    lease: Duration = 600.0  # how long a claimed feed stays with one worker if it dies
    parse_timeout: Duration = 20.0  # a parse running longer is killed and reported
    parse_memory: Size = 768 * 1024 * 1024  # address-space cap of each parse process
    parse_workers: int | None = Field(None, ge=1, le=64)  # default: one per CPU core

    @model_validator(mode="after")
    def _bounds(self) -> PollingConfig:
        if self.min_interval > self.max_interval:
            raise ValueError("min_interval must not exceed max_interval")
        return self


class FeedConfig(_Model):
    name: NonEmpty
    url: NonEmpty
    interval: Duration | None = None
    language: str | None = None
    enabled: bool = True  # false: kept in the database, never polled, shown as disabled
    group: str | None = None  # a label to sort feeds by in `monitor feeds` and digests
    fulltext: bool | None = None  # fetch each new item's page and match its text; None: default

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^\s/]+", url):
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url


def _language_code(value: str) -> str:
    """As items carry it: the primary subtag, lowercase (de-AT, DE -> de)."""
    code = value.strip().lower().replace("_", "-").split("-")[0]
    if not _LANGUAGE.match(code):
        raise ValueError(f"{value!r} is not a language code; use ISO 639 codes such as de or en")
    return code


_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
LanguageCode = Annotated[str, AfterValidator(_language_code)]


_NAMED = re.compile(r"^\s*(?P<name>.*?)\s*<(?P<address>[^<>]*)>\s*$", re.DOTALL)


def _recipient(value: Any) -> Any:
    """A recipient is an address (`jane@example.org` or `Jane Doe <jane@example.org>`), or a
    mapping with the address and personal settings."""
    if not isinstance(value, str):
        return value
    named = _NAMED.match(value)
    if named is None:
        return {"address": value}
    name = named["name"]
    if len(name) >= 2 and name[0] == name[-1] == '"':  # "Doe, Jane" <jane@example.org>
        name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    address = named["address"].strip()
    return {"address": address, "name": name} if name else {"address": address}


class Kind(enum.StrEnum):
    """What a recipient may be sent (`kinds:`): an immediate watchlist's alerts, digests,
    spike and silence alerts."""

    ALERTS = "alerts"
    DIGESTS = "digests"
    SPIKES = "spikes"


_CHAT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")


def _chat_url(value: str) -> str:
    if not _SCHEME.match(value):
        raise ValueError(
            f"{value!r} is not a URL like slack://... or https://...; see docs/delivery.md"
        )
    return value


class RecipientConfig(_Model):
    """A mailbox, or a chat channel (an Apprise URL or a signed JSON webhook) under a name.

    A channel's URL usually holds its token: it comes from the environment (url_env) or a
    file (url_file), read when a message is sent; `url` is for URLs that hold no secret."""

    url: Annotated[str, AfterValidator(_chat_url)] | None = None
    url_env: str | None = None  # an environment variable holding the channel's URL
    url_file: str | None = None  # a file holding the channel's URL
    secret_env: str | None = None  # a webhook's signing secret, from the environment
    secret_file: str | None = None  # ... or from a file
    # A mailbox address; a channel's is its name (set below), as status and logs show it.
    address: str = ""
    # The display name in the To header ("Jane Doe"); a channel's name, which names it in
    # status, logs, dead letters and `monitor test-send NAME`.
    name: Annotated[str, AfterValidator(_header_text)] | None = None
    digest: ScheduleText | None = None  # this recipient's own schedule, over the watchlist's
    quiet_hours: QuietHoursText | None = None  # e.g. "22:00-07:00": deferred, never dropped
    kinds: tuple[Kind, ...] | None = None  # what this recipient gets; default: everything

    @property
    def is_channel(self) -> bool:
        return bool(self.url or self.url_env or self.url_file)

    @model_validator(mode="after")
    def _one_kind_of_recipient(self) -> RecipientConfig:
        if not self.is_channel:
            if self.secret_env or self.secret_file:
                raise ValueError("secret_env/secret_file belong to a webhook recipient (url)")
            if not self.address:
                raise ValueError(
                    "give an address (a mailbox) or url_env, url_file or url (a chat channel)"
                )
            object.__setattr__(self, "address", mailbox_address(self.address))
            return self
        problems = []
        if sum(bool(v) for v in (self.url, self.url_env, self.url_file)) > 1:
            problems.append("give one of url, url_env, url_file")
        if not self.name or not _CHAT_NAME.match(self.name):
            problems.append(
                "a channel needs a name (letters, digits, . _ -), e.g. name: press-slack; "
                "it names the channel in status, logs and dead letters"
            )
        if self.url_env and self.url_env not in os.environ:
            problems.append(f"url_env names {self.url_env!r}, which is not set in the environment")
        if self.url_file and not Path(self.url_file).is_file():
            problems.append(f"url_file {self.url_file!r} does not exist")
        if self.secret_env and self.secret_env not in os.environ:
            problems.append(
                f"secret_env names {self.secret_env!r}, which is not set in the environment"
            )
        if self.secret_file and not Path(self.secret_file).is_file():
            problems.append(f"secret_file {self.secret_file!r} does not exist")
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "address", self.name)
        return self

    def channel_url(self) -> str:
        """The channel's URL, its secret parts included, read when it is needed: never stored
        in the config, never logged (channels.masked shows it)."""
        if self.url_env:
            return os.environ.get(self.url_env, "").strip()
        if self.url_file:
            return Path(self.url_file).read_text(encoding="utf-8").strip()
        return self.url or ""

    def service(self) -> str:
        """What carries this recipient's messages, as status and metrics name it: email,
        webhook, or the Apprise URL's scheme (slack, ntfy, tgram, ...)."""
        if not self.is_channel:
            return "email"
        try:
            scheme = self.channel_url().partition("://")[0].lower()
        except OSError:
            return "unknown"
        return "webhook" if scheme in ("http", "https") else scheme or "unknown"

    def secret(self) -> str | None:
        """A webhook's signing secret, read when it is needed."""
        if self.secret_env:
            return os.environ.get(self.secret_env)
        if self.secret_file:
            return Path(self.secret_file).read_text(encoding="utf-8").strip()
        return None


Recipient = Annotated[RecipientConfig, BeforeValidator(_recipient)]


def _check_term(term: str) -> str:
    from monitor.errors import QueryError
    from monitor.query import parse_term

    try:
        parse_term(term)
    except QueryError as error:
        raise ValueError(error.message) from None
    return term


def _check_query(query: str, info: ValidationInfo) -> str:
    """A query must parse and must not match texts that contain none of its terms."""
    from monitor.errors import QueryError
    from monitor.query import is_vacuous, parse_query

    owner = f"watchlist {info.data.get('name', '?')!r}: "
    try:
        if is_vacuous(parse_query(query)):
            raise QueryError(
                "the query also matches items without any of its terms (a bare NOT or a "
                "filter such as site:); combine it with a term, as in Musk AND NOT Muskat "
                "or site:n-tv.de AND Grok",
                query,
                0,
            )
    except QueryError as error:
        raise ValueError(f"{owner}{error.message}\n{error.pointer()}") from None
    return query


TermText = Annotated[str, AfterValidator(_check_term)]


class Priority(enum.StrEnum):
    NORMAL = "normal"
    IMMEDIATE = "immediate"  # matches also go out as instant alerts


class EntityConfig(_Model):
    """Something a watchlist watches: a person, company or product, and its other spellings."""

    name: TermText
    aliases: tuple[TermText, ...] = ()


def _spikes_switch(value: Any) -> Any:
    # YAML reads a bare `off` / `on` as a boolean.
    if value is False:
        return "off"
    return "balanced" if value is True else value


class SpikesConfig(_Model):
    """A preset (docs/watchlists.md#spike-and-silence-alerts) with any numbers overridden."""

    preset: Sensitivity = Sensitivity.BALANCED
    window: Duration | None = Field(None, ge=3600)  # count stories over this span, e.g. 24h
    baseline_days: int | None = Field(None, ge=3, le=60)  # against this many days before
    minimum: int | None = Field(None, ge=1)  # at least this many stories in the window
    ratio: float | None = Field(None, ge=1.0)  # at least this many times the usual
    score: float | None = Field(None, ge=0.0)  # at least this far above the usual, in MADs
    warmup_days: int | None = Field(None, ge=1)  # no alert before this much history
    cooldown: Duration | None = Field(None, ge=0)  # no second spike alert sooner than this
    silence_median: float | None = Field(None, ge=1.0)  # silence: usual stories a day, min
    silence_after: Duration | None = Field(None, ge=3600)  # silence: nothing matched so long

    def settings(self) -> SpikeSettings:
        seconds = {
            "window": self.window,
            "cooldown": self.cooldown,
            "silence_after": self.silence_after,
        }
        spans = {k: timedelta(seconds=v) for k, v in seconds.items() if v is not None}
        return settings_for(
            self.preset,
            baseline_days=self.baseline_days,
            minimum=self.minimum,
            ratio=self.ratio,
            score=self.score,
            warmup_days=self.warmup_days,
            silence_median=self.silence_median,
            **spans,
        )


Spikes = Annotated[Sensitivity | SpikesConfig, BeforeValidator(_spikes_switch)]


class WatchlistConfig(_Model):
    name: Annotated[NonEmpty, AfterValidator(_header_text)]  # subjects name watchlists
    terms: tuple[TermText, ...] = ()  # any of them matches
    entities: tuple[EntityConfig, ...] = ()  # any name or alias matches
    query: str | None = None  # boolean query (docs/watchlists.md); any of the three matches
    exclude: tuple[str, ...] | str = ()  # terms (any of them) or a query: the item is skipped
    priority: Priority = Priority.NORMAL
    recipients: tuple[Recipient, ...] = ()
    digest: ScheduleText = "daily 07:00"
    quiet_hours: QuietHoursText | None = None  # e.g. "22:00-07:00"; default: digests.quiet_hours
    languages: tuple[LanguageCode, ...] = ()  # empty: every language
    feeds: tuple[str, ...] = ()  # empty: every feed
    spikes: Spikes = Sensitivity.BALANCED  # spike and silence alerts: fewer|balanced|more|off

    @field_validator("query")
    @classmethod
    def _valid_query(cls, query: str | None, info: ValidationInfo) -> str | None:
        return None if query is None else _check_query(query, info)

    @field_validator("exclude")
    @classmethod
    def _valid_exclude(cls, exclude: tuple[str, ...] | str) -> tuple[str, ...] | str:
        from monitor.errors import QueryError
        from monitor.query import minus_terms, parse_query, parse_term

        if isinstance(exclude, str):
            try:  # a bare NOT is fine here: it only ever removes items
                excluded = minus_terms(parse_query(exclude))
            except QueryError as error:
                raise ValueError(f"{error.message}\n{error.pointer()}") from None
            if excluded:  # Google's -perfume here would remove every item WITHOUT perfume
                raise ValueError(
                    "exclude lists what to remove, so a '-' there would remove every item "
                    f"without {excluded[0]}; write exclude: [{', '.join(excluded)}]"
                )
            return exclude
        for term in exclude:
            try:
                parse_term(term)
            except QueryError as error:
                if error.rewrite is None:
                    raise ValueError(error.message) from None
                raise ValueError(
                    f"exclude lists what to remove; write it without the '-': "
                    f"exclude: [{error.rewrite}]"
                ) from None
        return exclude

    @model_validator(mode="after")
    def _complete(self, info: ValidationInfo) -> WatchlistConfig:
        missing = []
        if not (self.terms or self.entities or self.query):
            missing.append("has no terms; add terms, entities or a query")
        if not self.recipients and not (info.context or {}).get("default_recipients"):
            missing.append("has no recipients; add some here or a top-level recipients list")
        if missing:
            raise ValueError(f"watchlist {self.name!r} " + ", and ".join(missing))
        return self


class SmtpConfig(_Model):
    host: NonEmpty
    port: int | None = Field(None, ge=1, le=65535)
    username: str | None = None
    password_env: str | None = None  # name of an environment variable holding the password
    password_file: str | None = None  # path of a file holding the password
    sender: Address = Field(alias="from")
    starttls: bool | None = None  # default: on, unless tls is set
    tls: bool = False  # implicit TLS (port 465)
    verify_certificates: bool = True
    ca_file: str | None = None  # a CA bundle for a server whose certificate a private CA signed
    timeout: Duration = 30.0
    # The wait for the reply to the end of a message: RFC 5321 4.5.3.2.6 gives 10 minutes.
    # A client that gives up sooner sends a copy the server may already have accepted.
    data_timeout: Duration = 600.0
    allow_plaintext_login: bool = False  # log in to a remote server without TLS: explicit only

    @model_validator(mode="after")
    def _consistent(self) -> SmtpConfig:
        problems = []  # all of them, not the first only
        if self.tls and self.starttls:
            problems.append("set either tls (implicit, port 465) or starttls, not both")
        if self.is_plaintext_login and not (self.allow_plaintext_login or self.is_loopback):
            problems.append(
                f"username is set but starttls and tls are off: the password would cross the "
                f"network to {self.host} in clear text; set starttls: true (or tls: true), "
                "or allow_plaintext_login: true if that network is trusted"
            )
        if self.ca_file and not Path(self.ca_file).is_file():
            problems.append(f"ca_file {self.ca_file!r} does not exist")
        if self.username and not (self.password_env or self.password_file):
            problems.append("username is set: add password_env or password_file")
        if self.password_env and self.password_env not in os.environ:
            problems.append(
                f"password_env names {self.password_env!r}, which is not set in the environment"
            )
        if self.password_file and not Path(self.password_file).is_file():
            problems.append(f"password_file {self.password_file!r} does not exist")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def use_starttls(self) -> bool:
        return self.starttls if self.starttls is not None else not self.tls

    @property
    def is_plaintext_login(self) -> bool:
        """A login is configured and nothing encrypts the connection it goes over."""
        return bool(self.username) and not (self.tls or self.use_starttls)

    @property
    def is_loopback(self) -> bool:
        """The server is on this machine: what goes to it never crosses a network."""
        return is_loopback_host(self.host)

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return 465 if self.tls else 587 if self.use_starttls else 25

    def password(self) -> str | None:
        """Read the secret at the moment it is needed; it is never stored in the config."""
        if self.password_env:
            return os.environ.get(self.password_env)
        if self.password_file:
            return Path(self.password_file).read_text(encoding="utf-8").strip()
        return None


class DigestsConfig(_Model):
    max_per_watchlist: int = Field(25, ge=1)
    send_empty: bool = False
    # Labels, dates' words and default subjects in this language (de or en shipped).
    language: str = "en"
    subject: HeaderText | None = None  # default: "monitor digest: {count} new for {watchlists}"
    alert_subject: HeaderText | None = (
        None  # default: the subject set above, else "monitor alert: ..."
    )
    hold: Duration = 300.0  # immediate alerts wait this long to batch a burst into one mail
    quiet_hours: QuietHoursText | None = None  # default for every watchlist, e.g. "22:00-07:00"
    templates_dir: str | None = None  # your own digest/alert templates override the shipped ones
    unsubscribe_url: str | None = None  # an https URL for one-click unsubscribe (RFC 8058)

    @field_validator("subject", "alert_subject")
    @classmethod
    def _placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            value.format(count=0, watchlists="", recipient="")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"bad placeholder {error}; use only {{count}}, {{watchlists}}, {{recipient}}"
            ) from None
        return value

    @field_validator("language")
    @classmethod
    def _shipped_language(cls, value: str) -> str:
        from monitor.labels import LANGUAGES

        code = value.strip().lower()
        if code not in LANGUAGES:
            raise ValueError(
                f"{value!r}: digests are shipped in {' and '.join(sorted(LANGUAGES))}; "
                "write one of them (your own wording goes in templates_dir)"
            )
        return code

    def alert_subject_set(self) -> str | None:
        """The alert subject the user chose: alert_subject, else their subject."""
        return self.alert_subject or self.subject

    @field_validator("unsubscribe_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("one-click unsubscribe needs an https:// URL (RFC 8058)")
        if value is not None and (_UNSAFE.search(value) or re.search(r'[\s<>"]', value)):
            raise ValueError("must be one URL, without spaces, quotes or angle brackets")
        return value

    @field_validator("templates_dir")
    @classmethod
    def _directory(cls, value: str | None) -> str | None:
        # Jinja skips a search path that does not exist: a typo would silently mean the
        # shipped templates.
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"templates_dir {value!r} is not a directory")
        return value


class MetricsConfig(_Model):
    listen: str = "127.0.0.1:9464"  # /metrics and /healthz; a loopback address only

    @field_validator("listen")
    @classmethod
    def _loopback(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ValueError(f"{value!r} is not ADDRESS:PORT, e.g. 127.0.0.1:9464") from None
        if not address.is_loopback:
            # The endpoint has no authentication: reach it from elsewhere via a proxy or tunnel.
            raise ValueError(f"{host} is not a loopback address; use 127.0.0.1 or [::1]")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} needs a port from 1 to 65535, e.g. 127.0.0.1:9464")
        return value


class DedupeConfig(_Model):
    realert_on_update: bool = False  # a known item whose title/summary changed alerts again
    window: Duration = 72 * 3600.0  # a story only gathers items first seen this close together
    similarity: float = Field(0.39, ge=0.05, le=1.0)  # word-set Jaccard that makes one story


class FulltextConfig(_Model):
    """Article pages: fetched once per new item of a full-text feed, politely (fulltext.py)."""

    default: bool = False  # whether feeds without their own `fulltext:` fetch pages
    min_gap: Duration = 2.0  # seconds between two page requests to one host
    timeout: Duration = 20.0  # a page slower than this is skipped
    max_size: Size = 5 * 1024 * 1024  # a larger page is skipped
    per_cycle: int = Field(200, ge=1, le=100_000)  # pages fetched at most per poll cycle
    max_age: Duration = 86400.0  # an item first seen longer ago gets no page any more
    min_words: int = Field(40, ge=0)  # less extracted text: a wall (consent, paywall), not text
    robots_ttl: Duration = 86400.0  # how long a host's robots.txt is trusted


class RetentionConfig(_Model):
    items: Duration = 30 * 86400.0  # items (texts, matches, sent deliveries) deleted after this
    keys: Duration = 365 * 86400.0  # their URL/GUID hashes kept this long: never a re-alert

    @model_validator(mode="after")
    def _keys_outlive_items(self) -> RetentionConfig:
        if self.keys < self.items:
            raise ValueError("keys must be kept at least as long as items; raise retention.keys")
        return self


def database_url(value: str) -> str:
    """`value` as SQLAlchemy spells it: a plain path is a SQLite file, and libpq's
    `postgres://` (what PostgreSQL hosts hand out) is `postgresql://`, which SQLAlchemy
    alone knows."""
    if "://" not in value:
        return f"sqlite:///{value}"
    scheme, rest = value.split("://", 1)
    if scheme == "postgres" or scheme.startswith("postgres+"):
        return f"postgresql{scheme.removeprefix('postgres')}://{rest}"
    return value


class Config(_Model):
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "Europe/Berlin"
    database: str = "sqlite:///monitor.db"
    outbox: str = "outbox"
    recipients: tuple[Recipient, ...] = ()  # default for watchlists that name none
    polling: PollingConfig = PollingConfig()
    digests: DigestsConfig = DigestsConfig()
    smtp: SmtpConfig | None = None
    metrics: MetricsConfig | None = None  # the HTTP endpoint is off unless configured
    dedupe: DedupeConfig = DedupeConfig()
    retention: RetentionConfig = RetentionConfig()
    fulltext: FulltextConfig = FulltextConfig()
    # An item dated longer ago than this when monitor could first have read it (a feed's
    # archive on its first poll) is stored, deduplicated and searchable, but never alerted.
    backlog: Duration = 48 * 3600.0
    feeds: tuple[FeedConfig, ...] = ()  # none: check and test work, run and poll refuse
    watchlists: tuple[WatchlistConfig, ...] = Field(min_length=1)
    source: str = Field("<memory>", exclude=True)  # the file this came from, for messages

    @field_validator("database")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return database_url(value)

    def spike_settings(self, watchlist: WatchlistConfig) -> SpikeSettings:
        """The watchlist's spike and silence thresholds: its preset and overrides."""
        spikes = watchlist.spikes
        return PRESETS[spikes] if isinstance(spikes, Sensitivity) else spikes.settings()

    def display_names(self) -> dict[str, str]:
        """address -> the display name given with it (anywhere in the config)."""
        names: dict[str, str] = {}
        for recipient in self._everyone():
            if recipient.name and not recipient.is_channel:
                names.setdefault(recipient.address, recipient.name)
        return names

    def recipients_of(self, watchlist: WatchlistConfig) -> tuple[str, ...]:
        """The addresses (a channel's: its name) that receive this watchlist, each once."""
        return tuple(plan.recipient for plan in self.deliveries_of(watchlist))

    def service_of(self, recipient: str) -> str:
        """email, webhook, slack, ...: a recipient no longer configured is email when it is
        an address (a channel's name holds no @), else "removed"."""
        channel = self.channels().get(recipient)
        if channel is not None:
            return channel.service()
        return "email" if "@" in recipient else "removed"

    def channels(self) -> dict[str, RecipientConfig]:
        """Every chat channel recipient, by name (its address in the outbox)."""
        return {r.address: r for r in self._everyone() if r.is_channel}

    def _everyone(self) -> list[RecipientConfig]:
        """Every recipient the config names: the top-level ones, then each watchlist's."""
        return [*self.recipients, *(r for w in self.watchlists for r in w.recipients)]

    def deliveries_of(self, watchlist: WatchlistConfig) -> tuple[DeliveryPlan, ...]:
        """Per recipient: when this watchlist is sent, and when not (quiet hours). A
        recipient whose `kinds` leave out what this watchlist sends it has no plan."""
        return tuple(
            plan
            for plan, kinds in self._plans(watchlist)
            if (Kind.ALERTS if plan.schedule.every is Every.IMMEDIATE else Kind.DIGESTS) in kinds
        )

    def spike_deliveries_of(self, watchlist: WatchlistConfig) -> tuple[DeliveryPlan, ...]:
        """The recipients of this watchlist's spike and silence alerts (`kinds` with spikes)."""
        return tuple(plan for plan, kinds in self._plans(watchlist) if Kind.SPIKES in kinds)

    def _plans(self, watchlist: WatchlistConfig) -> list[tuple[DeliveryPlan, tuple[Kind, ...]]]:
        """Each recipient's plan for this watchlist, with the kinds of message it takes."""
        defaults = {r.address: r for r in _each_once(self.recipients)}
        plans = []
        for recipient in _each_once(watchlist.recipients or self.recipients):
            fallback = defaults.get(recipient.address)
            own = "immediate" if watchlist.priority is Priority.IMMEDIATE else watchlist.digest
            digest = recipient.digest or (fallback and fallback.digest) or own
            quiet = (
                recipient.quiet_hours
                or (fallback and fallback.quiet_hours)
                or watchlist.quiet_hours
                or self.digests.quiet_hours
            )
            plan = DeliveryPlan(
                watchlist.name,
                recipient.address,
                parse_schedule(digest),
                parse_quiet_hours(quiet) if quiet else None,
            )
            plans.append((plan, recipient.kinds or (fallback and fallback.kinds) or tuple(Kind)))
        return plans

    def fulltext_feeds(self) -> set[str]:
        """The names of the feeds whose items' pages are fetched and matched."""
        default = self.fulltext.default
        return {f.name for f in self.feeds if (default if f.fulltext is None else f.fulltext)}

    def feed_interval(self, feed: FeedConfig) -> float:
        return feed.interval or self.polling.interval

    def feed_urls(self) -> dict[str, str]:
        """name -> URL of every configured feed, switched off or not (store.sync_feeds)."""
        return {feed.name: feed.url for feed in self.feeds}

    def polled_feeds(self) -> set[str]:
        """The names of the feeds to poll: configured and not switched off."""
        return {feed.name for feed in self.feeds if feed.enabled}

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


def _each_once(recipients: tuple[RecipientConfig, ...]) -> list[RecipientConfig]:
    """An address listed twice (a@example.org, a@EXAMPLE.org) is one mailbox: its first
    entry, with that entry's settings, gets one copy."""
    seen: dict[str, RecipientConfig] = {}
    for recipient in recipients:
        seen.setdefault(recipient.address, recipient)
    return list(seen.values())


def config_warnings(config: Config) -> list[str]:
    """What `check` points out without refusing: the config works, maybe not as meant."""
    warnings = []
    if config.smtp is not None and config.smtp.is_plaintext_login:
        why = (
            "a loopback server: it never leaves this machine"
            if config.smtp.is_loopback
            else "allow_plaintext_login: true"
        )
        warnings.append(f"smtp: the password goes to {config.smtp.host} in clear text ({why})")
    addresses = [r.address for r in config._everyone()]
    return warnings + list(_short_spans(config)) + list(_case_twins(addresses))


def _short_spans(config: Config) -> Iterator[str]:
    """Spans meant in days that are under an hour: `items: 30` counts seconds, and deletes
    every item half a minute after it came; surely a missing `d`."""
    spans = {
        "retention.items": config.retention.items,
        "retention.keys": config.retention.keys,
        "dedupe.window": config.dedupe.window,
        "backlog": config.backlog,
    }
    for key, seconds in spans.items():
        if seconds < 3600:
            yield (
                f"{key}: {seconds:g} seconds; a number without a unit counts seconds: "
                f"write {seconds:g}d for days, {seconds:g}h for hours"
            )


def _case_twins(addresses: list[str]) -> Iterator[str]:
    """Addresses that differ only in the case of the part before the @: RFC 5321 lets a
    server tell them apart, almost none does, and then one person gets two messages."""
    first: dict[str, str] = {}
    for address in dict.fromkeys(addresses):  # exact repeats are one recipient already
        twin = first.setdefault(address.lower(), address)
        if twin != address:
            yield (
                f"recipients: {twin} and {address} differ only in upper/lower case before the "
                "@ and each gets its own messages; most servers deliver both to one mailbox: "
                "write it one way"
            )


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Mark:
    line: int  # 1-based
    column: int  # 1-based


_Path = tuple[str | int, ...]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{source}: cannot read the config file: {error.strerror}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{source}: not UTF-8 text ({error.reason})"]) from None
    return parse_config(text, source, base=Path(path).absolute().parent)


def parse_config(text: str, source: str = "<string>", base: Path | None = None) -> Config:
    """Validate YAML text into a Config. With `base` (the config file's directory), relative
    paths in it are taken from there, not from wherever a command is run: a `monitor status`
    from another directory found no database there, created an empty one, and a `monitor
    poll` beside it sent every digest again."""
    data, values, keys, problems = _read_yaml(text, source)
    if data is None:  # an empty file, or only comments
        raise ConfigError(
            [f"{source}:1:1: config: the file is empty; copy config.example.yaml and edit it"]
        )
    if not isinstance(data, dict):
        raise ConfigError(
            [
                f"{source}:1:1: config: expected keys (feeds:, watchlists:, recipients:, ...), "
                f"not {_kind_of(data)}; config.example.yaml shows them"
            ]
        )
    if base is not None:
        data = _anchored(data, base)
    try:
        context = {"default_recipients": bool(data.get("recipients"))}
        config = Config.model_validate({**data, "source": source}, context=context)
    except ValidationError as error:
        errors = error.errors()
        nested = {tuple(e["loc"][:i]) for e in errors for i in range(1, len(e["loc"]))}
        # A list whose entries failed also reports "too short"; the entries' errors say more.
        errors = [e for e in errors if not (e["type"] == "too_short" and tuple(e["loc"]) in nested)]
        # "link: unknown key; did you mean url?" says all: not also "url: required key is missing".
        unknown = [e["loc"] for e in errors if e["type"] == "extra_forbidden"]
        meant = {(*loc[:-1], meant_key(loc, Config)) for loc in unknown}
        errors = [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"]) in meant)]
        described = [_describe(source, e, values, keys, data) for e in errors]
        problems += list(dict.fromkeys(described))  # a union's members say it once
    else:
        problems += _cross_checks(config, source, values)
        if not problems:
            return config
    raise ConfigError(problems)


def _anchored(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """`data` with its relative file paths joined to `base`: the SQLite database, the
    outbox, templates_dir, smtp's password_file and ca_file."""

    def join(value: Any) -> Any:
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            return value
        return str(base / value)

    data = dict(data)
    for key in ("database", "outbox"):  # the defaults are relative paths too
        data.setdefault(key, Config.model_fields[key].default)
    database = data["database"]
    if isinstance(database, str):
        if "://" not in database:
            data["database"] = join(database)
        elif database.startswith("sqlite:///") and database[10:] not in ("", ":memory:"):
            data["database"] = "sqlite:///" + join(database[10:])
    data["outbox"] = join(data["outbox"])
    for section, names in (("digests", ("templates_dir",)), ("smtp", ("password_file", "ca_file"))):
        if isinstance(data.get(section), dict):
            data[section] = {
                key: join(value) if key in names else value for key, value in data[section].items()
            }
    return data


def _syntax_problem(error: yaml.MarkedYAMLError, text: str, source: str) -> str:
    """FILE:LINE:COL: YAML syntax: what is wrong, in words (config_messages.yaml_syntax)."""
    mark = error.problem_mark or error.context_mark
    said = str(error.problem or error.context)
    if said.startswith("expected ',' or") and "<scalar>" not in said and error.context_mark:
        mark = error.context_mark  # a [ or { never closed: point at it, not at the end
    if mark is None:
        return f"{source}: YAML syntax: {said}"
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    column, said = yaml_syntax(said, line, mark.column + 1)
    return f"{source}:{mark.line + 1}:{column}: YAML syntax: {said}"


def _read_yaml(
    text: str, source: str
) -> tuple[Any, dict[_Path, _Mark], dict[_Path, _Mark], list[str]]:
    try:
        loader = _BoundedLoader(text)  # checks every character first
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        column = error.position - text.rfind("\n", 0, error.position)
        raise ConfigError(
            [
                f"{source}:{line}:{column}: the character U+{error.character:04X} is not "
                "allowed in YAML (a control character, often pasted from a word processor); "
                "delete it"
            ]
        ) from None
    try:
        node = loader.get_single_node()
        values: dict[_Path, _Mark] = {}
        keys: dict[_Path, _Mark] = {}
        problems: list[str] = []
        if node is not None:
            _index(node, (), values, keys, problems, source)
        data = loader.construct_document(node) if node is not None else None
    except _AliasBomb as error:
        raise ConfigError([f"{source}:{error.line}:{error.column}: {error}"]) from None
    except yaml.MarkedYAMLError as error:
        raise ConfigError([_syntax_problem(error, text, source)]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"{source}: YAML: {error}"]) from None
    finally:
        loader.dispose()
    return data, values, keys, problems


# How many values aliases may add to a config when expanded. Real configs reuse a recipient
# list or a few terms (hundreds of values); a "billion laughs" of nested aliases, 482 bytes
# of YAML, expands to billions and kept `check` busy for minutes at 4 GB.
MAX_ALIAS_VALUES = 100_000


class _AliasBomb(Exception):
    def __init__(self, message: str, mark: Any) -> None:  # a yaml.Mark (the stubs disagree)
        super().__init__(message)
        self.line, self.column = mark.line + 1, mark.column + 1


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting what aliases expand to as it composes the document:
    the count stops at MAX_ALIAS_VALUES, at the alias that passes it, before any walk of
    the tree (each alias is one shared node there, each walk expands it)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_values = 0
        self._sizes: dict[int, int] = {}
        self._open: list[str | None] = []  # anchors of the collections being composed

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            self._count(event)
            return super().compose_node(parent, index)
        self._open.append(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()

    def _count(self, alias: yaml.AliasEvent) -> None:
        """Add what `alias` expands to; refuse a loop, or too many values in all."""
        if alias.anchor in self._open:
            raise _AliasBomb(
                f"alias *{alias.anchor} is inside the value it refers to (a loop); "
                "remove the alias",
                alias.start_mark,
            )
        target = self.anchors.get(alias.anchor)
        if target is None:  # PyYAML reports the undefined alias
            return
        self.alias_values += self._expanded(target)
        if self.alias_values > MAX_ALIAS_VALUES:
            raise _AliasBomb(
                f"alias *{alias.anchor} makes the config expand to more than "
                f'{MAX_ALIAS_VALUES:,} values (nested aliases, a "billion laughs"?); '
                "write the values out, or use fewer levels of aliases",
                alias.start_mark,
            )

    def _expanded(self, node: yaml.Node) -> int:
        """How many values `node` stands for, its aliases expanded (memoised per node)."""
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        if not isinstance(node, yaml.CollectionNode):
            return 1
        children = (
            [part for pair in node.value for part in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
        )
        size = 1
        for child in children:
            size += self._expanded(child)
            if size > MAX_ALIAS_VALUES:
                break
        self._sizes[id(node)] = size
        return size


def _index(
    node: yaml.Node,
    path: _Path,
    values: dict[_Path, _Mark],
    keys: dict[_Path, _Mark],
    problems: list[str],
    source: str,
) -> None:
    """Record where each value (and each mapping key) starts, by its key path."""
    values[path] = _Mark(node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            mark = _Mark(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in seen:
                problems.append(
                    f"{source}:{mark.line}:{mark.column}: {_dotted((*path, key))}: "
                    "key appears twice; keep one"
                )
            seen.add(key)
            keys[(*path, key)] = mark
            _index(value_node, (*path, key), values, keys, problems, source)
    elif isinstance(node, yaml.SequenceNode):
        for position, child in enumerate(node.value):
            _index(child, (*path, position), values, keys, problems, source)


def _dotted(path: _Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(
    source: str,
    error: Any,
    values: dict[_Path, _Mark],
    keys: dict[_Path, _Mark],
    data: dict[str, Any],
) -> str:
    loc: _Path = tuple(part for part in error["loc"] if not _is_pydantic_tag(part))
    kind = error["type"]
    message = plain_message(error, loc, Config)
    if kind == "extra_forbidden":
        mark = keys.get(loc) or _nearest(loc, values)
    elif kind == "missing":
        mark = _nearest(loc, values)
    else:
        # Name the key the user wrote: "recipients[0]", not the model's inner "...address".
        while loc and loc not in values and loc[:-1] in values:
            loc = loc[:-1]
        mark = values.get(loc) or _nearest(loc, values)
    return f"{source}:{mark.line}:{mark.column}: {_dotted(loc)}: {_naming(message, loc, data)}"


def _naming(message: str, loc: _Path, data: dict[str, Any]) -> str:
    """The message, saying which watchlist or feed it is about (after its first line):
    "watchlists[2].terms[0]" alone makes the reader count entries."""
    if len(loc) < 3 or loc[0] not in ("watchlists", "feeds") or not isinstance(loc[1], int):
        return message
    entries = data.get(str(loc[0]))
    entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
    name = entry.get("name") if isinstance(entry, dict) else None
    kind = "watchlist" if loc[0] == "watchlists" else "feed"
    if not isinstance(name, str) or not name.strip() or f"{kind} '" in message:
        return message
    first, newline, rest = message.partition("\n")
    return f"{first} (in {kind} {' '.join(name.split())[:60]!r}){newline}{rest}"


def _is_pydantic_tag(part: Any) -> bool:
    # Union members and function validators appear in loc as tags such as 'function-after[...]'.
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float"})


def _nearest(loc: _Path, values: dict[_Path, _Mark]) -> _Mark:
    for length in range(len(loc), -1, -1):
        if loc[:length] in values:
            return values[loc[:length]]
    return _Mark(1, 1)


def _cross_checks(config: Config, source: str, values: dict[_Path, _Mark]) -> list[str]:
    """Checks that span several entries: unique names, references between sections."""
    problems: list[str] = []

    def report(loc: _Path, message: str) -> None:
        mark = values.get(loc) or _nearest(loc, values)
        problems.append(f"{source}:{mark.line}:{mark.column}: {_dotted(loc)}: {message}")

    for section, entries in (("feeds", config.feeds), ("watchlists", config.watchlists)):
        for index, duplicate in _duplicates([entry.name for entry in entries]):
            report((section, index, "name"), f"name {duplicate!r} is used twice; names must differ")
    feed_names = {feed.name for feed in config.feeds}
    year = datetime.now(config.zone).year
    for index, watchlist in enumerate(config.watchlists):
        try:
            check_in_zone(parse_schedule(watchlist.digest), config.zone, year)
        except ValueError as error:
            report(("watchlists", index, "digest"), str(error))
        for position, recipient in enumerate(watchlist.recipients):
            try:
                if recipient.digest:
                    check_in_zone(parse_schedule(recipient.digest), config.zone, year)
            except ValueError as error:
                report(("watchlists", index, "recipients", position, "digest"), str(error))
        for position, feed in enumerate(watchlist.feeds):
            if feed not in feed_names:
                report(("watchlists", index, "feeds", position), _no_feed_named(feed, feed_names))
    return problems


def _no_feed_named(name: str, feed_names: set[str]) -> str:
    meant = did_you_mean(name, sorted(feed_names))
    if meant is not None:
        return f"no feed is named {name!r}; did you mean {meant!r}?"
    if not feed_names:
        return f"no feed is named {name!r}: there are no feeds; add {EXAMPLES['feeds']}"
    return f"no feed is named {name!r}; the feeds are {', '.join(sorted(feed_names))}"


def missing_feeds(config: Config) -> str | None:
    """Why `run` and `poll` cannot work with this config (it has no feeds), or None. The
    other commands can: a watchlist is tried with `test` before any feed is chosen."""
    if config.feeds:
        return None
    return (
        f"feeds: no feeds are configured; run and poll need at least one: add {EXAMPLES['feeds']}"
    )


def _duplicates(names: list[str]) -> Iterator[tuple[int, str]]:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            yield index, name
        seen.add(name)


def find_config(explicit: str | None) -> Path:
    """--config, else $MONITOR_CONFIG, else ./config.yaml."""
    if explicit:
        return Path(explicit)
    if os.environ.get("MONITOR_CONFIG"):
        return Path(os.environ["MONITOR_CONFIG"])
    return Path(DEFAULT_CONFIG_NAMES[0])
