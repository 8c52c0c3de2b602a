"""``Signer.sign_with``: response headers and extra parameters signed into URLs, for
``LocalSigner`` (checked back by ``verified``), ``S3Signer`` (any parameter names, against
botocore's own SigV4 query signing) and the default of a custom signer."""

from __future__ import annotations

import datetime as dt
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl

import pytest

from sqla_signed_urls import SignatureError, SigningError
from sqla_signed_urls.signers import LocalSigner, S3Signer, Signer

T = 1_700_000_000


def test_local_signer_signs_and_gives_back_its_parameters() -> None:
    signer = LocalSigner("x" * 32, base_url="/files")
    url = signer.sign_with(
        "docs/a b.pdf",
        expires_at=T + 600,
        response_content_disposition='attachment; filename="a b.pdf"',
        params=[("w", "128")],
    )
    found = signer.verified(url, now=T)
    assert found.object_key == "docs/a b.pdf"
    assert found.params == {
        "response-content-disposition": 'attachment; filename="a b.pdf"',
        "w": "128",
    }
    assert signer.verify(url, now=T) == "docs/a b.pdf"
    for forged in (url.replace("w=128", "w=4096"), url.replace("w=128&", "")):
        with pytest.raises(SignatureError, match="does not match"):
            signer.verified(forged, now=T)
    plain = signer.sign_with("docs/a.pdf", expires_at=T + 600)
    assert plain == signer.sign("docs/a.pdf", expires_at=T + 600)
    assert signer.verified(plain, now=T).params == {}
    with pytest.raises(SigningError, match="'expires'"):
        signer.sign_with("a.pdf", expires_at=T + 600, params=[("expires", "1")])


def test_s3_signs_any_parameter_as_botocore_does() -> None:
    import botocore.auth
    import botocore.credentials
    from botocore.awsrequest import AWSRequest

    signer = S3Signer(
        bucket="bkt",
        region="eu-central-1",
        access_key_id="AKIDEXAMPLE",
        secret_access_key="secret-example",
        addressing_style="path",
    )
    params = [("w", "128"), ("w2", "x y"), ("Format", "webp"), ("x-oss-process", "a,b/c")]
    url = signer.sign_with(
        "img/a b.png",
        expires_at=T + 3600,
        signed_at=T,
        params=params,
        response_content_type="image/png",
    )
    base, query = url.split("?", 1)
    ours = dict(parse_qsl(query))
    assert {k: ours[k] for k, _ in params} == dict(params)
    request = AWSRequest(
        method="GET",
        url=base,
        params={k: v for k, v in parse_qsl(query) if not k.startswith("X-Amz-")},
    )
    auth = botocore.auth.S3SigV4QueryAuth(
        botocore.credentials.Credentials("AKIDEXAMPLE", "secret-example"),
        "s3",
        "eu-central-1",
        expires=3600,
    )
    moment = dt.datetime.fromtimestamp(T, dt.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        auth.add_auth(request)
    theirs = dict(parse_qsl(request.prepare().url.split("?", 1)[1]))
    assert ours["X-Amz-Signature"] == theirs["X-Amz-Signature"]


class Plain(Signer):
    name = "plain"

    def sign(self, object_key: str, *, expires_at: int) -> str:
        return f"https://cdn.test/{object_key}?e={expires_at}"


def test_a_custom_signer_signs_plain_urls_and_refuses_extras() -> None:
    signer: Any = Plain()
    assert signer.sign_with("a.png", expires_at=5) == "https://cdn.test/a.png?e=5"
    with pytest.raises(SigningError, match="cannot sign response headers"):
        signer.sign_with("a.png", expires_at=5, response_content_type="image/png")
