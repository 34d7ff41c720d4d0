"""`selfguided submit` and `upload` refuse a Kubeflow Pipelines backend older than the pipeline
needs, naming the minimum: against a stand-in KFP API on 127.0.0.1 that reports its version the
way the API server (`tag_name`) or the UI server (`apiServerTagName`) does, and records every
request, so a refusal is seen to happen before anything is uploaded or started."""

from __future__ import annotations

import pytest
from servers import QuietJsonHandler, free_port, local_http_server, serving

from selfguided.pipelines.kfp_backend import (
    MIN_KFP_BACKEND,
    KfpBackendError,
    backend_version,
    check_backend_version,
    describe,
    parse_version,
)


class StandInKfp:
    """The healthz endpoints of a KFP host that runs backend `version` (None: reports none)."""

    def __init__(self, version: str | None, key: str = "tag_name", status: int = 200):
        self.requests: list[tuple[str, str]] = []
        stand_in = self

        class Handler(QuietJsonHandler):
            def _any(self):
                stand_in.requests.append((self.command, self.path))
                if status != 200:
                    return self._send(status, {"error": "no"})
                if self.path.startswith("/apis/v1beta1/healthz"):
                    body = {"commit_sha": "0123abc", "multi_user": False}
                    if version is not None:
                        body[key] = version
                    return self._send(200, body)
                if self.path.startswith("/apis/v2beta1/healthz"):
                    return self._send(200, {"multi_user": False})
                return self._send(404, {"error": "not found", "code": 5})

            do_GET = do_POST = _any

        self.server, self.url = local_http_server(Handler)


@pytest.fixture
def kfp_host(request):
    version, key = getattr(request, "param", ("2.5.0", "tag_name"))
    stand_in = StandInKfp(version, key)
    with serving(stand_in.server):
        yield stand_in


@pytest.mark.parametrize(("text", "parsed"), [("2.5.0", (2, 5, 0)), ("v2.15.1", (2, 15, 1)), ("2.15.0-rc.1", (2, 15, 0)),
                                              ("2.16", (2, 16, 0)), ("unknown", None), ("", None)])
def test_parse_version(text, parsed):
    assert parse_version(text) == parsed


def test_old_backend_is_refused_with_the_minimum_named(kfp_host):
    with pytest.raises(KfpBackendError) as raised:
        check_backend_version(kfp_host.url)
    message = str(raised.value)
    assert "2.5.0" in message and f"needs {MIN_KFP_BACKEND} or newer" in message and "\n" not in message
    assert parse_version(MIN_KFP_BACKEND) >= (2, 15, 0)


@pytest.mark.parametrize("kfp_host", [("2.15.0", "tag_name"), ("2.16.1", "apiServerTagName")], indirect=True)
def test_new_enough_backend_passes_from_the_api_or_the_ui_server(kfp_host):
    reported = check_backend_version(kfp_host.url)
    assert reported.startswith("2.1") and "runs backend 2.1" in describe(kfp_host.url, reported)


@pytest.mark.parametrize("kfp_host", [(None, "tag_name"), ("unknown", "tag_name")], indirect=True)
def test_backend_without_a_version_passes_with_a_warning(kfp_host):
    assert backend_version(kfp_host.url) is None
    assert check_backend_version(kfp_host.url) is None
    assert f"make sure it is {MIN_KFP_BACKEND} or newer" in describe(kfp_host.url, None)


def test_refused_credentials_and_no_host_are_one_line():
    stand_in = StandInKfp("2.16.0", status=401)
    with serving(stand_in.server):
        with pytest.raises(KfpBackendError, match=r"refused the credentials \(HTTP 401\)"):
            backend_version(stand_in.url, "bad-token")
    with pytest.raises(KfpBackendError, match="cannot reach Kubeflow Pipelines"):
        backend_version(f"http://127.0.0.1:{free_port()}", timeout=5)
