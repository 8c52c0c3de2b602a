"""Presigned GET URLs for AWS S3 and S3-compatible stores (MinIO, R2, B2, Ceph, Wasabi).

The URLs are byte for byte what botocore's ``generate_presigned_url("get_object", ...)`` gives
for the same inputs, computed by our own SigV4 code (:mod:`._v4`): no botocore call on the
signing path, a few microseconds per URL instead of botocore's hundreds. botocore (the ``s3``
extra) is still needed to build a signer: it supplies the partition table and reads refreshing
credentials (IAM roles, SSO, web identity). This module imports without it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from .._extras import require
from ..exceptions import ConfigurationError, SigningError
from . import _v4
from .base import Signer, quote_key, quote_keys

__all__ = ["S3Signer"]

#: SigV4 presigned URLs live at most 7 days.
MAX_URL_TTL = 7 * 24 * 3600
#: S3 object keys are at most 1024 bytes of UTF-8.
MAX_KEY_BYTES = 1024
ADDRESSING_STYLES = ("auto", "virtual", "path")

#: A DNS host label (RFC 1123), as botocore's endpoint rules test it.
_HOST_LABEL = re.compile(r"(?!-)[a-zA-Z\d-]{1,63}(?<!-)").fullmatch
_IPV4 = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}").fullmatch
#: What a bucket name may hold here: S3's rules plus the upper case and "_" of legacy buckets.
_BUCKET = re.compile(r"[A-Za-z0-9._-]{1,255}").fullmatch
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALGORITHM = "AWS4-HMAC-SHA256"
_Entry = tuple[float, str, str, str, str, str | None]
_quote = quote


class S3Signer(Signer):
    """Signs SigV4 GET URLs for one bucket of AWS S3 or an S3-compatible store::

        signer = S3Signer("campus-forum", region="eu-central-1",
                          access_key_id=key_id, secret_access_key=secret)
        minio = S3Signer("media", region="us-east-1", endpoint_url="http://127.0.0.1:9000",
                         access_key_id=key_id, secret_access_key=secret)
        roles = S3Signer("campus-forum", session=boto3.Session())  # IAM roles, SSO, ...
        urls = SignedURLs(signer=signer)

    ``addressing_style`` is ``"auto"`` (what botocore chooses: bucket host names on AWS when
    the bucket name can be one, the path on a custom ``endpoint_url``), ``"virtual"`` or
    ``"path"``. ``public_domain`` (``"files.example.com"`` or a URL) signs URLs on that host,
    ``https://files.example.com/<key>``, for a domain that reaches the bucket with its Host
    header intact. Credentials are static keys (``session_token`` for temporary ones), a
    botocore credentials object (``credentials=``) or a boto3/botocore session (``session=``);
    refreshing credentials are read again only when botocore would refresh them. ``name``
    replaces the default ``s3:<bucket>@<public domain, endpoint or region>``.

    URLs are stable: ``SignedURLs`` passes the start of the current expiry window as
    ``signed_at``, so every process signing one key within one window makes the same URL.
    ``url_ttl`` is limited to 7 days. Needs the ``s3`` extra.
    """

    max_url_ttl = MAX_URL_TTL
    stable = True
    takes_signed_at = True

    def __init__(
        self,
        bucket: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        addressing_style: str = "auto",
        public_domain: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        credentials: Any = None,
        session: Any = None,
        name: str | None = None,
    ) -> None:
        require("botocore", "s3", "S3Signer")
        _check_bucket(bucket)
        if addressing_style not in ADDRESSING_STYLES:
            raise ConfigurationError(
                f"S3Signer(addressing_style={addressing_style!r}): expected one of "
                f"{', '.join(map(repr, ADDRESSING_STYLES))}"
            )
        if region is None and session is not None:
            region = _session_region(session)
        if not isinstance(region, str) or _HOST_LABEL(region) is None:
            raise ConfigurationError(
                f"S3Signer(region={region!r}): give the bucket's region, such as 'eu-central-1' "
                "('auto' for Cloudflare R2, 'us-east-1' for most MinIO servers)"
            )
        self.bucket = bucket
        self.region = region
        self.addressing_style = addressing_style
        self.endpoint_url = endpoint_url
        self.public_domain = public_domain
        if public_domain is not None:
            url_base = _public_base(public_domain)
        elif endpoint_url is not None:
            url_base = _custom_endpoint_base(bucket, endpoint_url, addressing_style)
        else:
            suffix, is_aws = _partition(region)
            url_base = _aws_base(bucket, region, addressing_style, suffix, is_aws)
        #: How every URL begins, up to the quoted key: ``https://bucket.s3.amazonaws.com/``.
        self.url_base = url_base
        parts = urlsplit(url_base)
        self._path_base = parts.path
        self._host = _host_header(parts)
        where = public_domain or endpoint_url or region
        self.name = name or f"s3:{bucket}@{where}"
        self._keys = _v4.SigningKeys("AWS4", region, "s3", "aws4_request")
        self._times = _v4.SigningTimes(MAX_URL_TTL)
        self._scope_tail = f"/{region}/s3/aws4_request"
        self._credential_tail = _quote(self._scope_tail, safe="")
        self._source: Any = None
        self._refreshing: type | None = None
        #: (reuse until, secret, access key quoted, the security token parameter or "",
        #: access key, token): the credentials signed with, ready to write into URLs.
        self._creds: _Entry = (0.0, "", "", "", "", None)
        self._set_credentials(access_key_id, secret_access_key, session_token, credentials, session)

    def __repr__(self) -> str:
        return (
            f"S3Signer(bucket={self.bucket!r}, region={self.region!r}, url_base={self.url_base!r})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Signer:
        """Build a signer from ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``S3_BUCKET``
        and ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``); optional: ``AWS_SESSION_TOKEN``,
        ``S3_ENDPOINT_URL``, ``S3_ADDRESSING_STYLE`` and ``S3_PUBLIC_DOMAIN``."""
        env = os.environ if environ is None else environ
        required = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET")
        missing = [name for name in required if not env.get(name)]
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if not region:
            missing.append("AWS_REGION (or AWS_DEFAULT_REGION)")
        if missing:
            raise ConfigurationError(
                f"S3 signing needs the environment variables {', '.join(missing)}; set them, "
                "or build S3Signer(session=boto3.Session()) for IAM roles and SSO"
            )
        return cls(
            env["S3_BUCKET"],
            region=region,
            endpoint_url=env.get("S3_ENDPOINT_URL") or None,
            addressing_style=env.get("S3_ADDRESSING_STYLE") or "auto",
            public_domain=env.get("S3_PUBLIC_DOMAIN") or None,
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )

    # -- URLs ---------------------------------------------------------------------------------

    def url_prefix(self, object_key: str) -> str:
        return f"{self.url_base}{_quoted_path(object_key)}?"

    def url_prefixes(self, object_keys: Sequence[str]) -> list[str | None]:
        base = self.url_base
        try:
            quoted = quote_keys(object_keys, safe="/")
        except UnicodeEncodeError:
            quoted = [_quoted_path(key) for key in object_keys]
        return [f"{base}{path}?" for path in quoted]

    def sign(self, object_key: str, *, expires_at: int, signed_at: int | None = None) -> str:
        """A GET URL for ``object_key``, signed at ``signed_at`` (now when ``None``) and valid
        until exactly ``expires_at`` (at most 7 days after the signing time)."""
        return self.sign_with(object_key, expires_at=expires_at, signed_at=signed_at)

    def sign_with(
        self,
        object_key: str,
        *,
        expires_at: int,
        signed_at: int | None = None,
        response_content_disposition: str | None = None,
        response_content_type: str | None = None,
        params: Sequence[tuple[str, str]] = (),
    ) -> str:
        """:meth:`sign`, asking S3 to answer with these ``Content-Disposition`` and
        ``Content-Type`` headers (``response-content-*`` parameters, signed into the URL),
        and with extra query parameters signed in too (for an image proxy in front of the
        bucket that reads them: S3 itself ignores parameters it does not know)."""
        path = _checked_path(object_key)
        stamp, lifetime = self._times.resolve(expires_at, signed_at)
        creds = self._creds
        if self._source is not None and not time.time() < creds[0]:
            creds = self._read_credentials()
        secret, access_q, token_param = creds[1], creds[2], creds[3]
        date = stamp[:8]
        auth = (
            f"X-Amz-Algorithm={_ALGORITHM}&X-Amz-Credential={access_q}%2F{date}"
            f"{self._credential_tail}&X-Amz-Date={stamp}&X-Amz-Expires={lifetime}"
        )
        if params:
            # Any names: the canonical query is every parameter sorted by name, then value.
            named = [
                (_param(name), _param(value))
                for name, value in (
                    ("response-content-disposition", response_content_disposition),
                    ("response-content-type", response_content_type),
                    *params,
                )
                if value is not None
            ]
            extra = "&".join(f"{name}={value}" for name, value in named)
            url_query = f"{extra}&{auth}&X-Amz-SignedHeaders=host{token_param}"
            signed = f"{auth}{token_param}&X-Amz-SignedHeaders=host"
            named += [tuple(part.split("=", 1)) for part in signed.split("&")]  # type: ignore[misc]
            canonical_query = "&".join(f"{name}={value}" for name, value in sorted(named))
        elif response_content_disposition is None and response_content_type is None:
            url_query = f"{auth}&X-Amz-SignedHeaders=host{token_param}"
            canonical_query = f"{auth}{token_param}&X-Amz-SignedHeaders=host"
        else:
            overrides = _overrides(response_content_disposition, response_content_type)
            url_query = f"{overrides}&{auth}&X-Amz-SignedHeaders=host{token_param}"
            canonical_query = f"{auth}{token_param}&X-Amz-SignedHeaders=host&{overrides}"
        canonical_request = (
            f"GET\n{self._path_base}{path}\n{canonical_query}\nhost:{self._host}\n\nhost\n"
            "UNSIGNED-PAYLOAD"
        )
        string_to_sign = (
            f"{_ALGORITHM}\n{stamp}\n{date}{self._scope_tail}\n{_v4.sha256_hex(canonical_request)}"
        )
        signature = self._keys.signature(secret, date, string_to_sign)
        return f"{self.url_base}{path}?{url_query}&X-Amz-Signature={signature}"

    # -- credentials --------------------------------------------------------------------------

    def _set_credentials(
        self,
        access_key_id: str | None,
        secret_access_key: str | None,
        session_token: str | None,
        credentials: Any,
        session: Any,
    ) -> None:
        given = [
            label
            for label, value in (
                ("access_key_id/secret_access_key", access_key_id or secret_access_key),
                ("credentials", credentials),
                ("session", session),
            )
            if value is not None and value != ""
        ]
        if len(given) != 1:
            raise ConfigurationError(
                "S3Signer: give one source of credentials: access_key_id and "
                "secret_access_key (and session_token for temporary keys), credentials= (a "
                "botocore credentials object) or session= (a boto3 or botocore Session); got "
                f"{' and '.join(given) if given else 'none'}"
            )
        if given[0] == "access_key_id/secret_access_key":
            if not access_key_id or not secret_access_key:
                which = "access_key_id" if not access_key_id else "secret_access_key"
                raise ConfigurationError(f"S3Signer: {which} is missing; give both keys")
            self._creds = _credential_entry(
                math.inf, access_key_id, secret_access_key, session_token or None
            )
            return
        if session is not None:
            if not callable(getattr(session, "get_credentials", None)):
                raise ConfigurationError(
                    f"S3Signer(session=...): expected a boto3 or botocore Session, got "
                    f"{type(session).__name__}"
                )
            credentials = session.get_credentials()
            if credentials is None:
                raise ConfigurationError(
                    "S3Signer(session=...): the session found no AWS credentials; configure "
                    "them (environment, shared config, IAM role) or pass access keys"
                )
        elif not callable(getattr(credentials, "get_frozen_credentials", None)) and callable(
            getattr(credentials, "load", None)
        ):
            credentials = credentials.load()  # a botocore credential provider
        if not callable(getattr(credentials, "get_frozen_credentials", None)):
            raise ConfigurationError(
                "S3Signer(credentials=...): expected a botocore credentials object (with "
                f"get_frozen_credentials()), got {type(credentials).__name__}"
            )
        self._source = credentials
        self._refreshing = _refreshable_class()
        try:
            self._read_credentials()
        except SigningError as exc:
            raise ConfigurationError(f"S3Signer: {exc}") from exc

    def _read_credentials(self) -> _Entry:
        """Freeze the credentials of the source, and say until when they may be reused: for
        botocore's refreshing credentials, until botocore would try to refresh them (its
        advisory refresh time); for any other source, not beyond this signing."""
        source = self._source
        try:
            frozen = source.get_frozen_credentials()
        except Exception as exc:
            raise SigningError(
                f"could not read the AWS credentials ({type(exc).__name__}); check the role, "
                "profile or credential provider the signer was given"
            ) from exc
        access_key = getattr(frozen, "access_key", None)
        secret = getattr(frozen, "secret_key", None)
        if not isinstance(access_key, str) or not access_key:
            raise SigningError("the AWS credentials have no access key")
        if not isinstance(secret, str) or not secret:
            raise SigningError("the AWS credentials have no secret key")
        token = getattr(frozen, "token", None) or None
        until = 0.0
        if self._refreshing is not None and isinstance(source, self._refreshing):
            until = _refresh_time(source)
        entry = self._creds
        if (access_key, secret, token) == (entry[4], entry[1], entry[5]):
            entry = (until, *entry[1:])
        else:
            entry = _credential_entry(until, access_key, secret, token)
        self._creds = entry
        return entry


# -- helpers -----------------------------------------------------------------------------------


def _credential_entry(until: float, access_key: str, secret: str, token: str | None) -> _Entry:
    token_param = "" if token is None else f"&X-Amz-Security-Token={_quote(token, safe='')}"
    return (until, secret, _quote(access_key, safe=""), token_param, access_key, token)


def _refreshable_class() -> type | None:
    try:
        credentials = require("botocore.credentials", "s3", "S3Signer")
    except ConfigurationError:
        return None
    cls = getattr(credentials, "RefreshableCredentials", None)
    return cls if isinstance(cls, type) else None


def _refresh_time(source: Any) -> float:
    """When botocore starts refreshing ``source`` (Unix seconds): its expiry less its advisory
    refresh timeout. ``inf`` for credentials without an expiry, 0 when that cannot be told."""
    expiry = getattr(source, "_expiry_time", None)
    advisory = getattr(source, "_advisory_refresh_timeout", None)
    if expiry is None:
        return math.inf
    if not isinstance(advisory, int | float):
        return 0.0
    try:
        return float(expiry.timestamp()) - float(advisory)
    except Exception:
        return 0.0


def _session_region(session: Any) -> str | None:
    region = getattr(session, "region_name", None)  # boto3.Session
    if region is None and callable(getattr(session, "get_config_variable", None)):
        region = session.get_config_variable("region")  # botocore Session
    return region if isinstance(region, str) else None


def _overrides(disposition: str | None, content_type: str | None) -> str:
    params = []
    if disposition is not None:
        params.append(f"response-content-disposition={_param(disposition)}")
    if content_type is not None:
        params.append(f"response-content-type={_param(content_type)}")
    return "&".join(params)


def _param(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise SigningError(f"response header value {value!r}: expected a non-empty str")
    try:
        return _quote(value, safe="")
    except UnicodeEncodeError:
        raise SigningError("response header value is not valid Unicode text") from None


def _checked_path(object_key: str) -> str:
    """The key quoted for the URL path (``/`` and ``~`` kept, as botocore), or SigningError."""
    if not isinstance(object_key, str) or not object_key:
        raise SigningError("object key must be a non-empty str")
    try:
        path = quote_key(object_key, "/")
    except UnicodeEncodeError:
        raise SigningError("object key is not valid Unicode text") from None
    if len(object_key) > MAX_KEY_BYTES // 4 and len(object_key.encode()) > MAX_KEY_BYTES:
        raise SigningError(f"object key is longer than S3 allows ({MAX_KEY_BYTES} bytes)")
    if object_key[0] == "." or "/." in object_key:
        for segment in object_key.split("/"):
            if segment in (".", ".."):
                raise SigningError(
                    "object key has a '.' or '..' path segment, which browsers resolve before "
                    "sending the URL (it would point to another object)"
                )
    return path


def _quoted_path(object_key: str) -> str:
    try:
        return quote_key(object_key, "/")
    except UnicodeEncodeError:  # never signed; a prefix no URL of sign() begins with
        return quote(object_key.encode("utf-8", "surrogatepass"), safe="/")


def _check_bucket(bucket: Any) -> None:
    if not isinstance(bucket, str) or _BUCKET(bucket) is None:
        raise ConfigurationError(
            f"S3Signer(bucket={bucket!r}): expected a bucket name (letters, digits, '.', '-' "
            "and '_'); access point ARNs are not supported"
        )
    if bucket.endswith(("--x-s3", "--xa-s3")):
        raise ConfigurationError(
            f"S3Signer(bucket={bucket!r}): S3 Express One Zone directory buckets are not "
            "supported (they sign with session credentials of their own)"
        )


def _virtual_hostable(bucket: str, allow_dots: bool) -> bool:
    """Whether ``bucket`` can be a host name label (or, ``allow_dots``, labels)."""
    if len(bucket) < 3 or bucket.lower() != bucket or _IPV4(bucket):
        return False
    if allow_dots:
        return all(_HOST_LABEL(label) for label in bucket.split("."))
    return _HOST_LABEL(bucket) is not None


def _partition(region: str) -> tuple[str, bool]:
    """The DNS suffix of the region's partition, and whether it is the ``aws`` one."""
    loaders = require("botocore.loaders", "s3", "S3Signer")
    try:
        partitions = loaders.create_loader().load_data("partitions")["partitions"]
    except Exception:  # botocore without the table: the commercial partition
        return "amazonaws.com", True
    for partition in partitions:
        if region in partition.get("regions", ()) or re.match(partition["regionRegex"], region):
            return partition["outputs"]["dnsSuffix"], partition["id"] == "aws"
    return partitions[0]["outputs"]["dnsSuffix"], partitions[0]["id"] == "aws"


def _aws_base(bucket: str, region: str, style: str, suffix: str, is_aws: bool) -> str:
    """The URL base botocore presigns on for an AWS endpoint.

    In the ``aws`` partition presigned URLs go to the global endpoint (``s3.amazonaws.com``)
    unless the style is ``virtual`` or the bucket name is no host label; us-east-1 always does.
    """
    force_path = style == "path"
    global_endpoint = region == "us-east-1"
    if is_aws and style != "virtual" and not force_path and _HOST_LABEL(bucket):
        global_endpoint = True
    host = f"s3.{suffix}" if global_endpoint else f"s3.{region}.{suffix}"
    if not force_path and _virtual_hostable(bucket, allow_dots=False):
        return f"https://{bucket}.{host}/"
    return f"https://{host}/{quote(bucket, safe='')}/"


def _custom_endpoint_base(bucket: str, endpoint_url: str, style: str) -> str:
    """The URL base botocore presigns on for ``endpoint_url``: the path unless the style is
    ``virtual``; then the host when the bucket name can be a host label (with dots over http
    only) and the endpoint is no IP address."""
    scheme, netloc, path, is_ip = _parse_endpoint("endpoint_url", endpoint_url)
    if _virtual_hostable(bucket, allow_dots=False):
        virtual = style == "virtual" and not is_ip
    else:
        virtual = style == "virtual" and scheme == "http" and _virtual_hostable(bucket, True)
    if virtual:
        return f"{scheme}://{bucket}.{netloc}{path[:-1] if path.endswith('/') else path}/"
    return f"{scheme}://{netloc}{_normalized_path(path)}{quote(bucket, safe='')}/"


def _public_base(public_domain: str) -> str:
    url = public_domain if "://" in public_domain else f"https://{public_domain}"
    scheme, netloc, path, _ = _parse_endpoint("public_domain", url)
    return f"{scheme}://{netloc}{path.rstrip('/')}/"


def _parse_endpoint(setting: str, url: Any) -> tuple[str, str, str, bool]:
    """``(scheme, netloc, path, is an IP address)`` of an endpoint URL, or ConfigurationError."""
    problem = None
    if not isinstance(url, str) or any(c in url for c in "\t\r\n "):
        problem = "expected a URL such as 'https://s3.example.com' or 'http://127.0.0.1:9000'"
        parts = None
    else:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises on a port that is no number
        except ValueError:
            problem = "the port is not a number"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "expected an http:// or https:// URL with a host name"
        elif parts.query or parts.fragment or "@" in parts.netloc:
            problem = "leave out the query string, fragment and user name"
    if problem is not None or parts is None:
        raise ConfigurationError(f"S3Signer({setting}={url!r}): {problem}")
    host = parts.hostname or ""
    is_ip = _IPV4(host) is not None or (":" in host and _is_ipv6(host))
    return parts.scheme, parts.netloc, parts.path, is_ip


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def _normalized_path(path: str) -> str:
    """The endpoint path as botocore's rules put a bucket after it: dot segments and empty
    segments removed, quoted, ending with ``/``."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    if not path:
        normalized = "/"
    else:
        normalized = ("/" if path.startswith("/") else "") + "/".join(segments)
        if path.endswith("/") and segments:
            normalized += "/"
    normalized = quote(normalized)
    return normalized if normalized.endswith("/") else normalized + "/"


def _host_header(parts: Any) -> str:
    """The Host header SigV4 signs: the host in lower case, the port unless the default."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{port}"
    return str(host)
