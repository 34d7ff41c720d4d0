"""Real local servers for integration tests: an S3-compatible store (moto) and an MLflow server,
and the plumbing of the small stand-in HTTP APIs (Kubernetes, KFP) that tests define.

All listen on 127.0.0.1 only, start within a bounded wait and are stopped by the fixture's
finalizer. Import the fixtures into a test module (`from servers import s3_server, mlflow_server`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

S3_REGION = "us-east-1"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": S3_REGION}
MLFLOW_BUCKET = "mlflow-artifacts"
MLFLOW_PREFIX = "mlflow"
STARTUP_TIMEOUT_S = 90.0


class QuietJsonHandler(BaseHTTPRequestHandler):
    """Base of the stand-in APIs' handlers: no request log on the test output, `_send` for replies."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, code: int, body, content_type: str = "application/json"):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def local_http_server(handler: type) -> tuple[ThreadingHTTPServer, str]:
    """A stand-in HTTP API on a free 127.0.0.1 port: (server, its base URL); run it with `serving`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@contextlib.contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[ThreadingHTTPServer]:
    """Serve in a background thread for the block; shut down and close after it, whatever happens."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    endpoint_url: str

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=S3_REGION,
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )


@dataclass
class MlflowServer:
    tracking_uri: str
    bucket: str
    prefix: str  # artifacts live under s3://<bucket>/<prefix>/
    log_path: Path


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 in server mode on a free 127.0.0.1 port, stopped after the module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    """Poll `url` until it answers 200, the process dies, or STARTUP_TIMEOUT_S passes."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy at {url} after {STARTUP_TIMEOUT_S:.0f}s:\n"
                       f"{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def mlflow_server(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server` with a SQLite backend, proxying artifacts to s3://mlflow-artifacts/mlflow on moto."""
    s3_server.client().create_bucket(Bucket=MLFLOW_BUCKET)
    workdir = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log_path = workdir / "server.log"
    env = {
        **os.environ,
        **S3_CREDENTIALS,
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
        # No background job runner (trace rollups, scorers): nothing here uses it.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/{MLFLOW_PREFIX}",
        "--serve-artifacts",
    ]
    with log_path.open("wb") as log:
        # Own session: `mlflow server` runs uvicorn as a child; the finalizer stops the group.
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", process, log_path)
        yield MlflowServer(f"http://127.0.0.1:{port}", MLFLOW_BUCKET, MLFLOW_PREFIX, log_path)
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of it is left after 20 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
