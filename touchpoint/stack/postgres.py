"""PostgreSQL of the local stack: Debian's package, in a cluster of our own.

The cluster lives under the stack's home on its own port, so it never fights
a system PostgreSQL. The server binaries come from Debian's ``postgresql``
package (installed with apt-get when missing and we are root). PostgreSQL
refuses to run as root, so as root the cluster is owned by and run as the
``postgres`` system user that the package creates. Local connections over
TCP use scram-sha-256 with the password from the settings.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from touchpoint.errors import StackError
from touchpoint.settings import Settings
from touchpoint.stack.process import Component, port_open

SERVICE_USER = "postgres"


def _bin_dir() -> Path | None:
    """Newest Debian PostgreSQL server bin dir, or one on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def ensure_installed() -> Path:
    """The server bin dir, installing Debian's ``postgresql`` package if missing."""
    found = _bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise StackError(
            "postgres: no PostgreSQL server found (initdb); install Debian's `postgresql` package "
            "(apt-get install postgresql) or run `touchpoint stack up` as root so it can"
        )
    print("postgres: installing Debian's postgresql package...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "postgresql"]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)  # noqa: S603
        if result.returncode != 0:
            raise StackError(f"postgres: `{' '.join(cmd)}` failed:\n{(result.stdout + result.stderr)[-2000:]}")
    found = _bin_dir()
    if found is None:
        raise StackError("postgres: the postgresql package installed but no initdb was found")
    return found


def _run_as() -> str | None:
    """The user the server runs as: ourselves, or ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise StackError(f"postgres: running as root needs the `{SERVICE_USER}` system user") from exc
    return SERVICE_USER


def _cluster_dir(settings: Settings, run_as: str | None) -> Path:
    """Where the cluster lives: under the stack home if the server's user can reach it."""
    preferred = settings.home.resolve() / "postgres"
    if run_as is None:
        return preferred
    probe = subprocess.run(  # noqa: S603
        ["test", "-x", str(preferred.parent.parent)], user=run_as, stdin=subprocess.DEVNULL, check=False
    )
    if probe.returncode == 0:
        return preferred
    # The checkout sits where the service user cannot go (e.g. under /root).
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"touchpoint-postgres-{digest}"


def postgres_component(settings: Settings) -> Component:
    """The PostgreSQL server as a stack component."""
    home = settings.home.resolve()
    run_as = _run_as()
    base = _cluster_dir(settings, run_as)
    data = base / "data"
    sockets = base / "sockets"
    host, port = settings.pg_host, settings.pg_port

    def chown(path: Path) -> None:
        if run_as is not None:
            shutil.chown(path, run_as, run_as)

    def prepare() -> None:
        bin_dir = ensure_installed()
        for path in (base, sockets):
            path.mkdir(parents=True, exist_ok=True)
            chown(path)
        if (data / "PG_VERSION").exists():
            return
        with tempfile.NamedTemporaryFile("w", dir=base, delete=False) as pwfile:
            pwfile.write(settings.pg_password.get_secret_value())
        chown(Path(pwfile.name))
        try:
            result = subprocess.run(  # noqa: S603
                [str(bin_dir / "initdb"), "-D", str(data), "-U", settings.pg_user, "--pwfile", pwfile.name,
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
                capture_output=True, text=True, user=run_as, stdin=subprocess.DEVNULL,
            )
        finally:
            os.unlink(pwfile.name)
        if result.returncode != 0:
            raise StackError(f"postgres: initdb failed:\n{(result.stdout + result.stderr)[-2000:]}")
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# Touchpoint local stack\n"
                f"listen_addresses = '{host}'\nport = {port}\nunix_socket_directories = '{sockets}'\n"
                "max_connections = 200\nshared_buffers = 256MB\nfsync = on\n"
                "synchronous_commit = on\nlog_min_messages = warning\n"
            )

    def argv() -> list[str]:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise StackError("postgres: initdb vanished")
        return [str(bin_dir / "postgres"), "-D", str(data)]

    def ready() -> bool:
        if not port_open(host, port):
            return False
        bin_dir = _bin_dir()
        if bin_dir is None:
            return False
        probe = subprocess.run(  # noqa: S603
            [str(bin_dir / "pg_isready"), "-h", host, "-p", str(port), "-q"], stdin=subprocess.DEVNULL, check=False
        )
        if probe.returncode != 0:
            return False
        return _create_database(settings)

    return Component(
        name="postgres",
        home=home,
        host=host,
        ports=(port,),
        marker=str(data),
        prepare=prepare,
        argv=argv,
        ready=ready,
        describe=f"postgresql://{settings.pg_user}@{host}:{port}/{settings.pg_database}",
        # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to leave.
        stop_signal=signal.SIGINT,
        run_as=run_as,
    )


def _create_database(settings: Settings) -> bool:
    """Create the project's database if missing; True once it accepts connections."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(settings.pg_conninfo("postgres"), autocommit=True, connect_timeout=3) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.pg_database,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.pg_database)))
        return True
    except psycopg.OperationalError:
        return False
