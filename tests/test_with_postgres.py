"""scripts/with-postgres.sh: the throwaway cluster `make test` falls back to is always removed."""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "with-postgres.sh"
HAVE_BINARIES = bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))
needs_binaries = pytest.mark.skipif(not HAVE_BINARIES, reason="no PostgreSQL binaries")
CONNECT = (
    "import os, sys, psycopg; "
    "url = os.environ['DATABASE_URL'].rsplit('/', 1)[0] + '/postgres'; "
    "print(psycopg.connect(url).execute('select 40 + 2').fetchone()[0]); "
    "sys.exit(5)"
)


def throwaway_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return {**env, "WITH_POSTGRES_THROWAWAY": "1", **extra}


def cluster_dir(stderr: str) -> Path:
    match = re.search(r"throwaway PostgreSQL cluster on 127\.0\.0\.1:\d+ in (\S+)", stderr)
    assert match, stderr
    return Path(match.group(1))


def server_running(data_dir: Path) -> bool:
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if str(data_dir).encode() in Path(cmdline).read_bytes():
                return True
        except OSError:
            continue
    return False


@needs_binaries
def test_throwaway_cluster_serves_the_command_and_is_removed_with_its_exit_status():
    result = subprocess.run(
        [str(SCRIPT), sys.executable, "-c", CONNECT],
        env=throwaway_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "42", result.stderr
    # pytest's "no tests ran" (5) must reach make and CI unchanged.
    assert result.returncode == 5, result.stderr
    tmp = cluster_dir(result.stderr)
    assert not tmp.exists()
    assert not server_running(tmp)


@needs_binaries
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_removes_the_cluster(signum, status):
    # Like Ctrl-C in a terminal: the signal goes to the whole process group.
    proc = subprocess.Popen(
        [str(SCRIPT), "sleep", "60"],
        env=throwaway_env(),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stderr = ""
    deadline = time.monotonic() + 60
    while "started a throwaway" not in stderr and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        stderr += line
    tmp = cluster_dir(stderr)
    assert server_running(tmp)
    os.killpg(proc.pid, signum)
    assert proc.wait(timeout=60) == status
    proc.stderr.close()
    assert not tmp.exists()
    assert not server_running(tmp)


def test_missing_binaries_fail_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [str(SCRIPT), "true"],
        env=throwaway_env(WITH_POSTGRES_BINDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "install PostgreSQL" in result.stderr
    assert "DATABASE_URL" in result.stderr


def test_database_url_is_used_as_given():
    result = subprocess.run(
        [str(SCRIPT), "sh", "-c", 'echo "$DATABASE_URL"; exit 5'],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("WITH_POSTGRES_")},
            "DATABASE_URL": "postgres://someone@db.example:6543/x",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 5
    assert result.stdout.strip() == "postgres://someone@db.example:6543/x"
