"""Start a throwaway PostgreSQL cluster from the OS binaries (tests and benchmarks share this).

Kept out of ``server`` on purpose: the product never starts databases. ``initdb`` refuses to run
as root, so when we are root the cluster directory is handed to ``nobody`` and every binary runs
through ``runuser``; the socket directory is the temp dir (``-k``) so nothing touches /var/run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN_CANDIDATES = (
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
    "/usr/local/pgsql/bin",
)


def find_pg_bin() -> Path | None:
    """Directory holding ``initdb``/``pg_ctl`` (``OPTISCOPE_PG_BIN`` wins), or None."""
    explicit = os.environ.get("OPTISCOPE_PG_BIN")
    candidates = ([explicit] if explicit else []) + list(PG_BIN_CANDIDATES)
    for cand in candidates:
        if cand and (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (racy by nature, good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """A running cluster; ``url`` points at database ``optiscope``."""

    bindir: Path
    root: Path
    port: int
    as_user: str | None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "optiscope") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.as_user, "--"] if self.as_user else []
        return prefix + list(args)

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
                                 "-w", "stop"), capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(bindir: Path | None = None) -> PgCluster:
    """initdb + start on a free port; raises RuntimeError with the server log when it fails."""
    bindir = bindir or find_pg_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="optiscope-pg-"))
    as_user = None
    if os.geteuid() == 0:
        as_user = "nobody"
        shutil.chown(root, user="nobody")
        os.chmod(root, 0o700)
    cluster = PgCluster(bindir=bindir, root=root, port=free_port(), as_user=as_user)
    init = subprocess.run(
        cluster._cmd(str(bindir / "initdb"), "-D", str(cluster.datadir), "-U", "postgres", "-A", "trust",
                     "-E", "UTF8", "--no-sync"),
        capture_output=True, text=True, check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
    opts = (f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
    for _attempt in range(3):
        start = subprocess.run(
            cluster._cmd(str(bindir / "pg_ctl"), "-D", str(cluster.datadir), "-o", opts, "-l",
                         str(root / "server.log"), "-w", "-t", "60", "start"),
            capture_output=True, text=True, check=False,
        )
        if start.returncode == 0:
            break
        cluster.port = free_port()  # port raced away: try another
        opts = opts.replace(opts.split()[1], str(cluster.port), 1)
        time.sleep(0.2)
    else:
        log = (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {start.stderr}\n{log[-2000:]}")
    cluster.create_database("optiscope")
    return cluster
