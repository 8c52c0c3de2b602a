"""Check a signer of your own against the contract the cache relies on.

The cache serves a URL from Redis only if it begins with ``signer.url_prefix(object_key)``, and
it rounds expiries so that *stable* signers give byte-identical URLs in every process. A signer
whose ``url_prefix()`` disagrees with ``sign()`` never breaks a page: it silently turns every
Redis hit into a new signing. :func:`check_signer` finds that, and the other ways a signer can
break the contract, and raises ``AssertionError`` with a message that names the problem and
says what to fix. Run it in your test suite::

    from sqla_signed_urls.testing import check_signer

    def test_my_signer_keeps_the_contract() -> None:
        check_signer(MySigner())

Signers with ``takes_signed_at`` (V4 schemes) are given ``signed_at``, as ``SignedURLs`` gives
it, and must write it as their signing time. It signs a built-in list of awkward keys (spaces,
``+``, ``%``, ``#``, ``?``, ``&``, ``=``, accents, CJK, emoji, a 900-byte key, ``//``), offline
and in a few milliseconds for the built-in signers. Pass ``keys=[...]`` to check your own keys
instead. Signatures and security tokens are shown as ``...`` in the messages.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, unquote, urlsplit

from ..exceptions import SigningError
from ..signers.base import Signer

__all__ = ["check_signer"]

#: Keys every signer must sign correctly, with what makes each one hard. Users' object keys
#: hold all of these (uploaded file names keep their spaces, ``#``, ``?`` and emoji).
_HARD_KEYS: tuple[tuple[str, str], ...] = (
    ("a plain key", "avatar.png"),
    ("a nested path", "avatars/2024/05/7.png"),
    ("a key that begins with another key", "avatars/2024/05/7.png~1"),
    ("a key with spaces", "posts/my holiday photo.jpg"),
    ("a key with '+'", "posts/a+b c.png"),
    ("a key with '%'", "reports/100%.pdf"),
    ("a key with a percent escape in it", "reports/50%25 off%2F.pdf"),
    ("a key with '~'", "drafts/~draft~.txt"),
    ("a key with '#'", "notes/#1 todo.txt"),
    ("a key with '?'", "faq/why?.md"),
    ("a key with '&' and '='", "docs/q&a=yes&x=1.txt"),
    ("a key with accents", "files/résumé naïve.pdf"),
    ("a key in CJK characters", "用户/头像/张三的照片.png"),
    ("a key with an emoji", "stickers/😀 party 🎉.gif"),
    (
        "a 900-byte key",
        "archive/" + "/".join(f"folder-{i:03d}-中文" for i in range(49)) + "/last file.bin",
    ),
    ("a key with '//'", "uploads//double-slash.png"),
)
#: Keys a signer may refuse with ``SigningError`` (servers that merge slashes, such as Werkzeug
#: and nginx by default, rewrite their URL path); a URL it does give must still be right.
_MAY_REFUSE = frozenset({"uploads//double-slash.png"})

#: Keys of unreserved characters and slashes (signers often have a fast path for them).
_PLAIN = re.compile(r"[A-Za-z0-9_.~/-]+").fullmatch
#: What a URL may hold unquoted (RFC 3986: unreserved, reserved and "%").
_URL_CHAR = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]").fullmatch
#: A signing time as SigV4 and OSS V4 write it: 20240501T120000Z.
_ISO_BASIC = re.compile(r"\d{8}T\d{6}Z").fullmatch
#: Query parameters that hold a signature or a credential: shown as ``...`` in messages.
_SECRET_PARAMS = frozenset(
    {
        "signature",
        "x-oss-signature",
        "x-amz-signature",
        "sig",
        "security-token",
        "x-oss-security-token",
        "x-amz-security-token",
    }
)
#: Query parameters that carry the URL's expiry: an absolute Unix time (``Expires`` of OSS V1,
#: ``expires`` of LocalSigner) or a lifetime in seconds (``x-oss-expires``, ``X-Amz-Expires``).
_EXPIRY_PARAMS = frozenset({"expires", "x-oss-expires", "x-amz-expires"})
#: Expiry values at least this large are Unix times; smaller ones are lifetimes.
_UNIX_TIME = 10**9
#: How far ahead to sign when the signer names no limit.
_NO_LIMIT_TTL = 30 * 24 * 3600
#: Clock shifts between two signings of the stability check.
_CLOCK_SHIFTS = (61, 3601)
#: How long before the clock the stability check's ``signed_at`` lies: far enough that a URL
#: carrying the wall clock instead is told apart from one carrying ``signed_at``.
_SIGNED_BEFORE = 300

_HOW_TO_QUOTE = (
    "percent-quote the key in the URL path, such as urllib.parse.quote(key, safe='/') "
    "(which quotes '#', '?', '%', '+' and spaces)"
)


def check_signer(signer: Signer, *, keys: Sequence[str] | None = None) -> None:
    """Raise ``AssertionError`` naming the first way ``signer`` breaks the signer contract.

    Checked: the attributes (``name``, ``stable``, ``max_url_ttl``); for every key, that
    ``sign()`` gives an http(s) URL (or a path beginning with ``/``) whose path decodes to the
    key, that begins with ``url_prefix(key)``, that ``url_is_for()`` accepts and that holds
    only characters a URL may carry unquoted; that ``url_prefixes()`` agrees with
    ``url_prefix()``; that no two keys share a URL and no URL passes as another key's; that
    ``stable = True`` holds when the clock (``time.time``) moves and the URL carries no
    signing time (for a signer with ``takes_signed_at``: none but the ``signed_at`` it was
    given, with a lifetime ending at ``expires_at``); and that signing ``max_url_ttl`` seconds
    ahead (30 days when ``None``) works and, where the URL shows its expiry, stays within the
    limit.

    ``keys`` replaces the built-in list of hard keys. A ``SigningError`` for a checked key is
    a failure naming the key; only the built-in key with ``//`` may be refused, as servers
    that merge slashes rewrite its path.
    """
    _check_attributes(signer)
    checked = _keys_to_check(keys)
    now = int(time.time())
    expires_at = now + _lifetime(signer, 3600)
    urls = dict(_sign_each(signer, checked, expires_at, now, own_keys=keys is not None))
    for key, url in urls.items():
        _check_url(signer, key, url)
    _check_prefix_batches(signer, checked)
    _check_distinct(signer, urls)
    _check_no_url_fits_another_key(signer, urls)
    _check_stable(signer, checked[0])
    _check_max_url_ttl(signer, checked[0])


# -- the checks ----------------------------------------------------------------------------


def _check_attributes(signer: Signer) -> None:
    if not isinstance(signer, Signer):
        raise AssertionError(
            f"check_signer() takes a sqla_signed_urls.signers.Signer, got "
            f"{type(signer).__name__}: subclass Signer and implement sign()"
        )
    cls = type(signer).__name__
    name = getattr(signer, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise AssertionError(
            f"{cls}.name is {name!r}: set name to a non-empty str that identifies where the "
            "URLs point (such as 'cdn:images'); it is part of the fingerprint of every "
            "cached URL, so switching buckets never serves a URL for the old one"
        )
    if not isinstance(signer.stable, bool):
        raise AssertionError(
            f"{cls}.stable is {signer.stable!r}: set it to True when one key and one "
            "expires_at always give the same URL, False otherwise"
        )
    ttl = signer.max_url_ttl
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        raise AssertionError(
            f"{cls}.max_url_ttl is {ttl!r}: set it to the longest URL lifetime the scheme "
            "accepts, in seconds (a positive int), or None when there is no limit"
        )


def _keys_to_check(keys: Sequence[str] | None) -> list[str]:
    if keys is None:
        return [key for _, key in _HARD_KEYS]
    if isinstance(keys, str):
        raise TypeError(f"check_signer(keys={keys!r}): pass a list of keys, not one str")
    if not keys:
        raise ValueError("check_signer(keys=[]): pass at least one object key")
    for key in keys:
        if not isinstance(key, str) or not key:
            raise TypeError(f"check_signer(keys=...): {key!r} is not a non-empty str")
    return list(dict.fromkeys(keys))


def _sign_each(
    signer: Signer, keys: Sequence[str], expires_at: int, signed_at: int, *, own_keys: bool
) -> Iterator[tuple[str, str]]:
    """Yield ``(key, url)`` for each key the signer signs (it may refuse only the built-in
    keys that servers rewrite)."""
    for key in keys:
        try:
            url = _sign(signer, key, expires_at, signed_at)
        except SigningError as exc:
            if own_keys:
                raise AssertionError(
                    f"{_call(signer, key)} raised SigningError({_show(str(exc))}) for one of "
                    "the keys you passed: sign it, or leave it out of keys if your app never "
                    "stores such a key"
                ) from exc
            if key in _MAY_REFUSE:
                continue
            raise AssertionError(
                f"{_call(signer, key)} raised SigningError({_show(str(exc))}) for "
                f"{_describe(key)}: users' object keys look like this (uploaded file names "
                "keep their characters); sign it, or, if your keys never look like this, "
                "pass the keys you do use: check_signer(signer, keys=[...])"
            ) from exc
        yield key, url


def _check_url(signer: Signer, key: str, url: str) -> None:
    call = _call(signer, key)
    parts = urlsplit(url)
    absolute = parts.scheme in ("http", "https") and bool(parts.netloc)
    if not (absolute or (url.startswith("/") and not url.startswith("//"))):
        raise AssertionError(
            f"{call} gave {_show_url(url)}, which is not an http(s) URL: return an "
            "absolute http:// or https:// URL, or a path beginning with '/' for files your "
            "own app serves"
        )
    try:
        path = unquote(parts.path, errors="strict")
    except UnicodeDecodeError:
        raise AssertionError(
            f"{call} gave {_show_url(url)}, whose path is not percent-encoded UTF-8: "
            f"{_HOW_TO_QUOTE}"
        ) from None
    if not path.endswith("/" + key):
        raise AssertionError(
            f"{call} gave {_show_url(url)}, whose path decodes to {_show(path)}, which does "
            f"not end with the key {_show(key)}, so the URL points to another object"
            f"{_unquoted(key, url)}: {_HOW_TO_QUOTE}"
        )
    prefix = _url_prefix(signer, key)
    if prefix is not None and not url.startswith(prefix):
        raise AssertionError(
            f"{call} gave {_show_url(url)}, which does not begin with "
            f"url_prefix({_show(key)}) = {_show(prefix)}{_parting(_redact(url), prefix)}: "
            "make url_prefix() return how every URL for the key begins, or None when that "
            "cannot be told (until then every URL found in Redis is signed again)"
        )
    if not signer.url_is_for(url, key):
        raise AssertionError(
            f"{call} gave {_show_url(url)}, but url_is_for(that URL, {_show(key)}) is "
            "False: url_is_for() must accept every URL sign() makes for the key (until then "
            "every URL found in Redis is signed again)"
        )
    raw = sorted({char for char in url if not _URL_CHAR(char)})
    if raw:
        raise AssertionError(
            f"{call} gave {_show_url(url)}, which holds characters a URL cannot carry "
            f"unquoted ({', '.join(map(repr, raw))}): HTML, JSON and HTTP headers need them "
            f"percent-quoted; {_HOW_TO_QUOTE}"
        )


def _check_prefix_batches(signer: Signer, keys: Sequence[str]) -> None:
    cls = type(signer).__name__
    singles = {key: _url_prefix(signer, key) for key in keys}
    plain = [key for key in keys if _PLAIN(key)]
    for batch in (list(keys), list(reversed(keys)), plain, keys[:1]):
        if not batch:
            continue
        got = list(signer.url_prefixes(batch))
        if len(got) != len(batch):
            raise AssertionError(
                f"{cls}.url_prefixes() of {len(batch)} keys gave {len(got)} prefixes: "
                "return one prefix (or None) per key, in order"
            )
        for position, (key, prefix) in enumerate(zip(batch, got, strict=True)):
            if prefix != singles[key]:
                raise AssertionError(
                    f"{cls}.url_prefixes([...]) gave {_show(prefix)} for {_show(key)} "
                    f"(position {position} of {len(batch)}), but url_prefix({_show(key)}) = "
                    f"{_show(singles[key])}: the two must agree, key by key and in order; "
                    "remove the url_prefixes() override or make it return url_prefix(key) "
                    "for each key"
                )


def _check_distinct(signer: Signer, urls: dict[str, str]) -> None:
    seen: dict[str, str] = {}
    for key, url in urls.items():
        other = seen.setdefault(url, key)
        if other != key:
            raise AssertionError(
                f"{type(signer).__name__}.sign() gave the same URL {_show_url(url)} for "
                f"{_show(other)} and {_show(key)}: two keys are two objects; {_HOW_TO_QUOTE}"
            )


def _check_no_url_fits_another_key(signer: Signer, urls: dict[str, str]) -> None:
    cls = type(signer).__name__
    for other in urls:
        prefix = _url_prefix(signer, other)
        if prefix is None:
            continue
        for key, url in urls.items():
            if key == other:
                continue
            if url.startswith(prefix):
                raise AssertionError(
                    f"{_call(signer, key)} gave {_show_url(url)}, which begins with "
                    f"url_prefix({_show(other)}) = {_show(prefix)}: a URL for one key would "
                    "pass as the URL of another, so a forged or corrupted cache entry could "
                    "send a page to the wrong file; end the prefix with the whole quoted "
                    "path and the '?'"
                )
            if signer.url_is_for(url, other):
                raise AssertionError(
                    f"{cls}.url_is_for(url, {_show(other)}) is True for the URL "
                    f"{_show_url(url)} that sign() made for {_show(key)}: accept only URLs "
                    "for the key itself, so a forged or corrupted cache entry cannot send a "
                    "page to the wrong file"
                )


def _check_stable(signer: Signer, key: str) -> None:
    """``stable = True`` must survive the clock moving between two signings."""
    if not signer.stable:
        return
    now = int(time.time())
    lifetime = _lifetime(signer, 7200)
    shifts = tuple(shift for shift in _CLOCK_SHIFTS if shift < lifetime) or (lifetime // 2,)
    expires_at = now + lifetime
    signed_at = None
    same = "the same expires_at"
    if signer.takes_signed_at:
        # As SignedURLs does: a signing time at most max_url_ttl before the expiry.
        signed_at = now - _SIGNED_BEFORE
        expires_at = signed_at + lifetime
        same = "the same expires_at and signed_at"
    first = _sign(signer, key, expires_at, signed_at)
    for shift in shifts:
        try:
            with _clock_at(now + shift):
                later = _sign(signer, key, expires_at, signed_at)
        except SigningError as exc:
            raise AssertionError(
                f"{_call(signer, key)} raised SigningError({_show(str(exc))}) with the clock "
                f"{shift} s later and {same}, {expires_at - now - shift} s ahead: sign any "
                "expires_at in the future"
            ) from exc
        if later != first:
            shown_first, shown_later = _redact(first), _redact(later)
            where = (
                " (only the signature differs)"
                if shown_first == shown_later
                else _parting(shown_later, shown_first)
            )
            fix = (
                "write signed_at as the signing time instead of reading the clock, or set "
                "stable = False on the class"
                if signer.takes_signed_at
                else "set stable = False on the class, or make sign() depend only on the key "
                "and expires_at"
            )
            raise AssertionError(
                f"{type(signer).__name__}.stable is True, but signing {_show(key)} with "
                f"{same} {shift} s later gave another URL: {_show_url(first)}, then "
                f"{_show_url(later)}{where}; a URL that depends on the clock (or on chance) is "
                f"not stable: {fix}"
            )
    if signed_at is not None:
        _check_signed_at(signer, key, first, expires_at, signed_at)
    clock = _clock_reading(first, now)
    if clock is not None:
        raise AssertionError(
            f"{type(signer).__name__}.stable is True, but {_call(signer, key)} gave "
            f"{_show_url(first)}, which carries the signing time ({clock}): the next second "
            "gives another URL; set stable = False on the class, or leave the clock out of "
            "the URL"
        )


def _check_signed_at(signer: Signer, key: str, url: str, expires_at: int, signed_at: int) -> None:
    """A signer that takes ``signed_at`` writes it as the signing time, with the lifetime
    that makes the URL valid until exactly ``expires_at``."""
    cls = type(signer).__name__
    call = _call(signer, key, f"expires_at={expires_at}, signed_at={signed_at}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if _ISO_BASIC(value) and value != stamp:
            raise AssertionError(
                f"{cls}.takes_signed_at is True, but {call} gave {_show_url(url)}, whose "
                f"signing time {name}={value} is not signed_at ({stamp}): write signed_at as "
                "the signing time, so every process signing within one window makes the same "
                "URL (or set takes_signed_at = False and stable = False)"
            )
        lifetime = int(value) if value.isdigit() else None
        if (
            name.lower() in _EXPIRY_PARAMS
            and lifetime is not None
            and lifetime < _UNIX_TIME
            and signed_at + lifetime != expires_at
        ):
            raise AssertionError(
                f"{call} gave {_show_url(url)}, whose {name}={value} makes it valid until "
                f"{signed_at + lifetime}, not until expires_at: write expires_at - signed_at "
                "as the lifetime"
            )


def _clock_reading(url: str, now: int) -> str | None:
    """The query parameter of ``url`` that holds the time ``now`` (within a minute), if any:
    signers that read the clock through ``datetime`` escape the patched ``time.time``."""
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name.lower() in _EXPIRY_PARAMS:
            continue
        when: float | None = None
        if value.isdigit() and len(value) in (10, 13):  # Unix seconds or milliseconds
            when = int(value) / (1000 if len(value) == 13 else 1)
        elif _ISO_BASIC(value):
            parsed = dt.datetime.strptime(value, "%Y%m%dT%H%M%SZ")
            when = parsed.replace(tzinfo=dt.timezone.utc).timestamp()
        if when is not None and abs(when - now) <= 60:
            return f"{name}={value}"
    return None


def _check_max_url_ttl(signer: Signer, key: str) -> None:
    limit = signer.max_url_ttl
    lifetime = _lifetime(signer, _NO_LIMIT_TTL)
    ahead = "max_url_ttl" if limit is not None else "30 days (max_url_ttl is None)"
    now = int(time.time())
    try:
        url = _call_sign(signer, key, now + lifetime, now)
    except Exception as exc:
        fix = (
            "max_url_ttl must be a lifetime sign() accepts; lower it"
            if limit is not None
            else "set max_url_ttl to the longest URL lifetime, in seconds, the scheme accepts"
        )
        raise AssertionError(
            f"{_call(signer, key, f'expires_at=now + {lifetime}')} ({ahead} ahead) raised "
            f"{type(exc).__name__}({_show(str(exc))}): {fix}"
        ) from exc
    if not isinstance(url, str):
        raise AssertionError(f"{_call(signer, key)} returned {url!r}: return the URL as a str")
    if limit is None:
        return
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name.lower() not in _EXPIRY_PARAMS or not value.isdigit():
            continue
        seconds = int(value)
        lives = seconds - now if seconds >= _UNIX_TIME else seconds
        if lives > limit:
            raise AssertionError(
                f"{_call(signer, key, f'expires_at=now + {lifetime}')} gave "
                f"{_show_url(url)}, whose {name}={value} makes it live {lives} s, more than "
                f"max_url_ttl = {limit}: never sign for longer than max_url_ttl (the store "
                "rejects such URLs), or raise max_url_ttl to what the scheme accepts"
            )


# -- helpers -------------------------------------------------------------------------------


def _call_sign(signer: Signer, key: str, expires_at: int, signed_at: int | None) -> object:
    """``signer.sign()``, with ``signed_at`` when the signer takes it."""
    if signer.takes_signed_at and signed_at is not None:
        sign: Any = signer.sign
        return sign(key, expires_at=expires_at, signed_at=signed_at)
    return signer.sign(key, expires_at=expires_at)


def _sign(signer: Signer, key: str, expires_at: int, signed_at: int | None = None) -> str:
    """``signer.sign()``, failing on anything but a str or a ``SigningError``."""
    try:
        url = _call_sign(signer, key, expires_at, signed_at)
    except SigningError:
        raise
    except Exception as exc:
        raise AssertionError(
            f"{_call(signer, key)} raised {type(exc).__name__}({_show(str(exc))}): raise "
            "SigningError (`raise SigningError(...) from exc`) for keys that cannot be "
            "signed, so the library can tell them from bugs"
        ) from exc
    if not isinstance(url, str):
        raise AssertionError(f"{_call(signer, key)} returned {url!r}: return the URL as a str")
    return url


def _url_prefix(signer: Signer, key: str) -> str | None:
    prefix = signer.url_prefix(key)
    if prefix is not None and not isinstance(prefix, str):
        raise AssertionError(
            f"{type(signer).__name__}.url_prefix({_show(key)}) returned {prefix!r}: return "
            "how every URL for the key begins as a str, or None when that cannot be told"
        )
    return prefix


def _lifetime(signer: Signer, wanted: int) -> int:
    limit = signer.max_url_ttl
    return wanted if limit is None else min(wanted, limit)


@contextmanager
def _clock_at(when: float) -> Iterator[None]:
    """Make ``time.time()`` (and ``time.time_ns()``) tell ``when``, as oss2 and most
    signers read the clock."""

    with (
        mock.patch("time.time", return_value=when),
        mock.patch("time.time_ns", return_value=int(when * 1_000_000_000)),
    ):
        yield


def _call(signer: Signer, key: str, expires: str | None = None) -> str:
    if expires is None:
        return f"{type(signer).__name__}.sign({_show(key)})"
    return f"{type(signer).__name__}.sign({_show(key)}, {expires})"


def _describe(key: str) -> str:
    return next(description for description, hard_key in _HARD_KEYS if key == hard_key)


def _show(text: str | None, limit: int = 120) -> str:
    """``repr(text)``, shortened in the middle when long."""
    if text is None or len(text) <= limit:
        return repr(text)
    return f"{text[: limit - 30]!r}...{text[-20:]!r} ({len(text)} characters)"


def _show_url(url: str) -> str:
    return _show(_redact(url), limit=240)


def _redact(url: str) -> str:
    """The URL with signatures and security tokens in its query string replaced by ``...``."""
    base, question, query = url.partition("?")
    if not question:
        return url
    params = []
    for param in query.split("&"):
        name, equals, _ = param.partition("=")
        if equals and unquote(name).lower() in _SECRET_PARAMS:
            param = f"{name}=..."
        params.append(param)
    return f"{base}?{'&'.join(params)}"


def _unquoted(key: str, url: str) -> str:
    """A note on the characters of ``key`` that ``url`` left unquoted, if that is why."""
    if "#" in key and "#" in url:
        return " (an unquoted '#' begins the fragment, which browsers never send)"
    if "?" in key and "?" in url.partition("?")[2]:
        return " (an unquoted '?' begins the query string)"
    return ""


def _parting(text: str, expected: str) -> str:
    """Where ``text`` and ``expected`` part, as a parenthesised note (redact ``text`` first)."""
    at = next(
        (i for i, (a, b) in enumerate(zip(text, expected, strict=False)) if a != b),
        min(len(text), len(expected)),
    )
    return (
        f" (they part at character {at}: {_show(text[at:][:40])} "
        f"against {_show(expected[at:][:40])})"
    )
