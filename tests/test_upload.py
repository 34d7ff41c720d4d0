"""`selfguided upload`: kfp.Client against a local stand-in of the KFP v2beta1 REST API.

The stand-in (http.server on 127.0.0.1) answers what kfp 2.17's Client sends for this flow:
GET /apis/v2beta1/healthz (Client construction), GET /apis/v2beta1/pipelines?filter=... (find the
pipeline by display name), POST /apis/v2beta1/pipelines (create it), POST
/apis/v2beta1/pipelines/upload_version (multipart `uploadfile`, `name` and `pipelineid` in the
query). It keeps pipelines and versions, refuses a taken version name with 409 as the KFP API
server does, can require a bearer token, and records every request.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from servers import QuietJsonHandler, local_http_server, serving

from selfguided.components.images import PACKAGE_VERSION
from selfguided.pipelines.upload import (
    DEFAULT_PACKAGE,
    TOKEN_ENV,
    UploadError,
    add_upload_parser,
    default_version_name,
    run_upload,
    upload_pipeline,
)

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / DEFAULT_PACKAGE
API = "/apis/v2beta1"


class FakeKfp:
    def __init__(self):
        self.pipelines: dict[str, dict] = {}  # id -> pipeline
        self.versions: dict[str, dict] = {}  # version id -> version (with its uploaded file)
        self.requests: list[dict] = []
        self.token: str | None = None  # when set, every request needs `Authorization: Bearer <token>`
        self.login_page = False  # answer like an auth proxy: an HTML page instead of the API
        self.backend_version = "2.15.0"  # what the API server's v1beta1 healthz reports as tag_name
        fake = self

        class Handler(QuietJsonHandler):
            def _error(self, code, message):
                self._send(code, {"error_message": message, "error_details": message})

            def _handle(self):
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                record = {"method": self.command, "path": url.path, "query": query,
                          "authorization": self.headers.get("Authorization"), "content_type": self.headers.get("Content-Type")}
                fake.requests.append(record)
                if fake.login_page:
                    return self._send(200, "<html><body>Log in</body></html>", "text/html")
                if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._send(401, {"code": 16, "message": "Unauthenticated"})
                route = (self.command, url.path)
                if route == ("GET", f"{API}/healthz"):
                    return self._send(200, {"multi_user": False})
                if route == ("GET", "/apis/v1beta1/healthz"):
                    return self._send(200, {"commit_sha": "stand-in", "tag_name": fake.backend_version, "multi_user": False})
                if route == ("GET", f"{API}/pipelines"):
                    found = list(fake.pipelines.values())
                    for p in json.loads(query.get("filter") or '{"predicates": []}')["predicates"]:
                        assert p["operation"] == "EQUALS", p
                        found = [x for x in found if x.get(p["key"]) == p["stringValue"]]
                    found = [x for x in found if x.get("namespace", "") == query.get("namespace", "")]
                    return self._send(200, {"pipelines": found, "total_size": len(found)} if found else {})
                if route == ("POST", f"{API}/pipelines"):
                    body = json.loads(raw)
                    record["body"] = body
                    pipeline = {"pipeline_id": str(uuid.uuid4()), "display_name": body["display_name"],
                                "name": body["display_name"], "namespace": body.get("namespace", ""),
                                "created_at": "2026-01-01T00:00:00Z"}
                    fake.pipelines[pipeline["pipeline_id"]] = pipeline
                    return self._send(200, pipeline)
                if route == ("POST", f"{API}/pipelines/upload_version"):
                    message = email.message_from_bytes(
                        f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + raw, policy=email.policy.HTTP)
                    files = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                             for part in message.iter_parts()}
                    record["uploadfile"] = files.get("uploadfile")
                    pipeline_id, name = query.get("pipelineid"), query.get("name")
                    if pipeline_id not in fake.pipelines:
                        return self._error(400, "Failed to create a pipeline version")
                    if any(v["pipeline_id"] == pipeline_id and v["name"] == name for v in fake.versions.values()):
                        return self._error(409, "Failed to create a pipeline version")
                    version = {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "name": name,
                               "display_name": name, "created_at": "2026-01-01T00:00:00Z"}
                    fake.versions[version["pipeline_version_id"]] = version | {"file": files.get("uploadfile")}
                    return self._send(200, version)
                return self._send(404, "404 page not found", "text/plain")

            do_GET = do_POST = _handle

        self.server, self.host = local_http_server(Handler)

    def calls(self) -> list[tuple[str, str]]:
        """The requests other than health checks (kfp.Client asks for one when it is built)."""
        return [(r["method"], r["path"]) for r in self.requests if not r["path"].endswith("/healthz")]


@pytest.fixture
def kfp_api():
    fake = FakeKfp()
    with serving(fake.server):
        yield fake


def test_first_upload_creates_the_pipeline_with_the_named_version(kfp_api):
    result = upload_pipeline(PACKAGE, host=kfp_api.host + "/", pipeline_name="selfguided", version_name="0.1.0-aaaa1111")

    assert kfp_api.calls() == [("GET", f"{API}/pipelines"), ("POST", f"{API}/pipelines"),
                               ("POST", f"{API}/pipelines/upload_version")]
    listing, create, upload = [r for r in kfp_api.requests if not r["path"].endswith("/healthz")]
    assert json.loads(listing["query"]["filter"])["predicates"] == [
        {"operation": "EQUALS", "key": "display_name", "stringValue": "selfguided"}]
    assert create["body"] == {"display_name": "selfguided"}
    assert upload["query"]["name"] == "0.1.0-aaaa1111" and upload["query"]["pipelineid"] == result["pipeline_id"]
    assert upload["content_type"].startswith("multipart/form-data")
    assert upload["uploadfile"] == PACKAGE.read_bytes(), "the committed pipeline, byte for byte"

    (pipeline,) = kfp_api.pipelines.values()
    (version,) = kfp_api.versions.values()
    assert result == {"host": kfp_api.host, "pipeline_name": "selfguided", "pipeline_id": pipeline["pipeline_id"],
                      "created_pipeline": True, "version_name": "0.1.0-aaaa1111",
                      "pipeline_version_id": version["pipeline_version_id"],
                      "url": f"{kfp_api.host}/#/pipelines/details/{pipeline['pipeline_id']}/version/{version['pipeline_version_id']}"}


def test_second_upload_adds_a_version_to_the_same_pipeline(kfp_api):
    first = upload_pipeline(PACKAGE, host=kfp_api.host, pipeline_name="selfguided", version_name="v1")
    kfp_api.requests.clear()
    second = upload_pipeline(PACKAGE, host=kfp_api.host, pipeline_name="selfguided", version_name="v2")

    assert kfp_api.calls() == [("GET", f"{API}/pipelines"), ("POST", f"{API}/pipelines/upload_version")]
    assert second["pipeline_id"] == first["pipeline_id"] and second["created_pipeline"] is False
    assert sorted(v["name"] for v in kfp_api.versions.values()) == ["v1", "v2"]
    assert len(kfp_api.pipelines) == 1


def test_a_taken_version_name_is_one_clear_line(kfp_api, capsys):
    upload_pipeline(PACKAGE, host=kfp_api.host, pipeline_name="selfguided", version_name="v1")
    with pytest.raises(UploadError, match="already has a version named 'v1'.*--version"):
        upload_pipeline(PACKAGE, host=kfp_api.host, pipeline_name="selfguided", version_name="v1")

    args = _parse(["upload", "--kfp-host", kfp_api.host, "--pipeline", "selfguided", "--version", "v1", "--package", str(PACKAGE)])
    assert run_upload(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already has a version named 'v1'" in err


def test_private_pipeline_in_a_profile_namespace(kfp_api):
    result = upload_pipeline(PACKAGE, host=kfp_api.host, pipeline_name="selfguided", version_name="v1",
                             namespace="kubeflow-user-example-com")
    listing, create = [r for r in kfp_api.requests if not r["path"].endswith("/healthz")][:2]
    assert listing["query"]["namespace"] == "kubeflow-user-example-com"
    assert create["body"] == {"display_name": "selfguided", "namespace": "kubeflow-user-example-com"}
    assert kfp_api.pipelines[result["pipeline_id"]]["namespace"] == "kubeflow-user-example-com"


def test_token_comes_from_the_environment_and_is_sent_as_bearer(kfp_api, monkeypatch, capsys):
    kfp_api.token = "ci-token"
    monkeypatch.setenv(TOKEN_ENV, "ci-token")
    args = _parse(["upload", "--kfp-host", kfp_api.host, "--pipeline", "selfguided", "--version", "v1", "--package", str(PACKAGE)])
    assert run_upload(args) == 0
    out = capsys.readouterr().out
    assert "created pipeline 'selfguided'" in out and "version 'v1'" in out and out.count("\n") == 1
    assert {r["authorization"] for r in kfp_api.requests} == {"Bearer ci-token"}


def test_refused_credentials_fail_fast_with_one_line(kfp_api):
    kfp_api.token = "right"
    with pytest.raises(UploadError, match=r"refused the credentials \(HTTP 401\).*KFP_TOKEN"):
        upload_pipeline(PACKAGE, host=kfp_api.host, pipeline_name="selfguided", existing_token="wrong")
    assert len(kfp_api.requests) == 1, "no retries against a 401"


def test_a_login_page_is_not_taken_for_the_api(kfp_api):
    kfp_api.login_page = True
    with pytest.raises(UploadError, match="login page"):
        upload_pipeline(PACKAGE, host=kfp_api.host, pipeline_name="selfguided")


def test_a_host_without_the_kfp_api_says_so(kfp_api):
    with pytest.raises(UploadError, match="no KFP v2 API at .*/wrong"):
        upload_pipeline(PACKAGE, host=kfp_api.host + "/wrong", pipeline_name="selfguided")


def test_unreachable_host_is_one_clear_line():
    with pytest.raises(UploadError, match="cannot reach Kubeflow Pipelines at http://127.0.0.1:9"):
        upload_pipeline(PACKAGE, host="http://127.0.0.1:9", pipeline_name="selfguided")
    with pytest.raises(UploadError, match="must start with http"):
        upload_pipeline(PACKAGE, host="kubeflow.example.com", pipeline_name="selfguided")


def test_only_a_compiled_pipeline_is_uploaded(tmp_path):
    with pytest.raises(UploadError, match="no such file.*selfguided compile"):
        upload_pipeline(tmp_path / "absent.yaml", host="http://127.0.0.1:9", pipeline_name="p")
    other = tmp_path / "deployment.yaml"
    other.write_text("apiVersion: apps/v1\nkind: Deployment\n")
    with pytest.raises(UploadError, match="not a compiled KFP pipeline"):
        upload_pipeline(other, host="http://127.0.0.1:9", pipeline_name="p")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_default_version_name_is_the_package_version_and_commit(tmp_path):
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    outside = tmp_path / "outside" / "pipeline.yaml"
    outside.parent.mkdir()
    assert default_version_name(outside, now=now) == f"{PACKAGE_VERSION}-20260102-030405"

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "pipeline.yaml").write_text("a: 1\n")
    _git(repo, "add", "pipeline.yaml")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "x")
    sha = _git(repo, "rev-parse", "--short=8", "HEAD")
    assert default_version_name(repo / "pipeline.yaml", now=now) == f"{PACKAGE_VERSION}-{sha}"
    (repo / "pipeline.yaml").write_text("a: 2\n")
    assert default_version_name(repo / "pipeline.yaml", now=now) == f"{PACKAGE_VERSION}-{sha}-dirty-20260102-030405"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="selfguided")
    add_upload_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_options_and_defaults(monkeypatch):
    args = _parse(["upload", "--kfp-host", "http://localhost:8080", "--pipeline", "selfguided"])
    assert (args.kfp_host, args.pipeline, args.version, args.package, args.namespace) == \
        ("http://localhost:8080", "selfguided", None, DEFAULT_PACKAGE, None)
    assert args.func is run_upload
    with pytest.raises(SystemExit):
        _parse(["upload", "--kfp-host", "http://localhost:8080"])  # --pipeline is required


def test_an_old_backend_is_refused_before_anything_is_uploaded(kfp_api, capsys):
    """Kubeflow 1.10 ships KFP 2.5: the pipeline would be accepted and fail on the cluster."""
    from selfguided.pipelines.kfp_backend import MIN_KFP_BACKEND

    from selfguided.pipelines.cli.main import main as cli_main

    kfp_api.backend_version = "2.5.0"
    assert cli_main(["upload", "--kfp-host", kfp_api.host, "--pipeline", "selfguided", "--package", str(PACKAGE)]) == 1
    err = capsys.readouterr().err
    assert "runs backend 2.5.0" in err and f"needs {MIN_KFP_BACKEND} or newer" in err
    assert kfp_api.calls() == [] and kfp_api.versions == {}


def test_submit_refuses_an_old_backend_naming_the_minimum(kfp_api, capsys):
    from selfguided.pipelines.cli.main import main as cli_main
    from selfguided.pipelines.kfp_backend import MIN_KFP_BACKEND

    kfp_api.backend_version = "2.14.1"
    assert cli_main(["submit", "--kfp-host", kfp_api.host, "--namespace", "kubeflow-user-example-com"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("submit: ") and "2.14.1" in err and f"needs {MIN_KFP_BACKEND} or newer" in err
    assert kfp_api.calls() == [], "nothing was created on an old backend"
