#!/usr/bin/env bash
# Run a command with DATABASE_URL pointing at PostgreSQL, trying in order:
#   1. DATABASE_URL, if already set in the environment;
#   2. a server on 127.0.0.1:5432 that accepts role postgres without a password;
#   3. a throwaway cluster built from the PostgreSQL binaries in a temporary folder and
#      removed again when the command ends, fails or is interrupted (Ctrl-C, SIGTERM).
# The command's exit status is passed through unchanged (pytest's 5 included).
#
# Environment knobs (all optional):
#   WITH_POSTGRES_THROWAWAY=1      skip steps 1-2 and always use a throwaway cluster
#   WITH_POSTGRES_PROBE_PORT=N     port probed in step 2 (default 5432)
#   WITH_POSTGRES_DB=NAME          database name in the URL; pytest-django tests on
#                                  test_NAME (default: escrow_<checksum of this checkout>,
#                                  so two checkouts sharing a server do not collide)
#   WITH_POSTGRES_START_TIMEOUT=S  seconds to wait for the throwaway server (default 60)
#   WITH_POSTGRES_BINDIR=DIR       where initdb and pg_ctl live (default: PATH, then
#                                  the newest /usr/lib/postgresql/*/bin or similar)
set -euo pipefail

say() { echo "with-postgres: $*" >&2; }

probe_port=${WITH_POSTGRES_PROBE_PORT:-5432}
repo_dir=$(cd "$(dirname "$0")/.." && pwd)
db_name=${WITH_POSTGRES_DB:-escrow_$(printf '%s' "$repo_dir" | cksum | cut -d' ' -f1)}
throwaway=${WITH_POSTGRES_THROWAWAY:-0}

if [ "$throwaway" != "1" ] && [ -n "${DATABASE_URL:-}" ]; then
    exec "$@"
fi

# Binaries: PATH first, then the usual package locations (Debian keeps them off PATH).
find_bindir() {
    local dir
    if [ -n "${WITH_POSTGRES_BINDIR:-}" ]; then
        echo "$WITH_POSTGRES_BINDIR"
        return
    fi
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin /usr/pgsql-*/bin /usr/local/pgsql/bin \
        /opt/homebrew/opt/postgresql*/bin /usr/local/opt/postgresql*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ]; then
            echo "$dir"
            return
        fi
    done
}
bindir=$(find_bindir)

tool() {
    # A client tool from PATH or from bindir; empty if neither has it.
    if command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    elif [ -n "$bindir" ] && [ -x "$bindir/$1" ]; then
        echo "$bindir/$1"
    fi
}

if [ "$throwaway" != "1" ]; then
    url="postgres://postgres@127.0.0.1:$probe_port/$db_name"
    probe_url="postgres://postgres@127.0.0.1:$probe_port/postgres"
    psql=$(tool psql)
    pg_isready=$(tool pg_isready)
    if [ -n "$psql" ]; then
        if PGCONNECT_TIMEOUT=3 "$psql" "$probe_url" -Atqc 'select 1' >/dev/null 2>&1; then
            say "using the server on 127.0.0.1:$probe_port (database $db_name)"
            export DATABASE_URL="$url"
            exec "$@"
        fi
        if [ -n "$pg_isready" ] && "$pg_isready" -q -h 127.0.0.1 -p "$probe_port" -t 3; then
            say "a server answers on 127.0.0.1:$probe_port but refuses role postgres" \
                "without a password; set DATABASE_URL to use it. Starting a throwaway cluster."
        fi
    elif python3 -c "import socket; socket.create_connection(('127.0.0.1', $probe_port), 3)" \
        >/dev/null 2>&1; then
        # No client tools to check the login with: trust the open port.
        say "using the server on 127.0.0.1:$probe_port (database $db_name)"
        export DATABASE_URL="$url"
        exec "$@"
    fi
fi

# --- throwaway cluster ----------------------------------------------------------------
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ] || [ ! -x "$bindir/pg_ctl" ]; then
    say "no DATABASE_URL, no server on 127.0.0.1:$probe_port, and no PostgreSQL" \
        "binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin."
    say "install PostgreSQL (e.g. apt-get install postgresql, brew install postgresql)," \
        "set WITH_POSTGRES_BINDIR, or set DATABASE_URL=postgres://user@host:port/name."
    exit 2
fi

# initdb refuses to run as root: run the cluster as the postgres system user instead.
as_root=""
if [ "$(id -u)" = "0" ]; then
    as_root=1
    if ! id -u postgres >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    fi
fi
as_owner() {
    if [ -z "$as_root" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        # From /: the postgres user may not be allowed into the caller's directory.
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && setpriv --reuid=postgres --regid=postgres --init-groups -- "$@")
    fi
}

# The socket path must stay under ~107 bytes and the postgres user must reach the folder.
base=${TMPDIR:-/tmp}
if [ ${#base} -gt 60 ] || { [ -n "$as_root" ] && ! as_owner test -x "$base"; }; then
    base=/tmp
fi

# Clusters left behind by a run that was killed with SIGKILL: their wrapper is gone.
for stale in "$base"/escrow-pg.*; do
    [ -f "$stale/wrapper.pid" ] || continue
    owner_pid=$(cat "$stale/wrapper.pid" 2>/dev/null || echo "")
    if [ -n "$owner_pid" ] && ! kill -0 "$owner_pid" 2>/dev/null; then
        say "removing a cluster left behind by an interrupted run: $stale"
        as_owner "$bindir/pg_ctl" -D "$stale/data" -m immediate -w -t 10 stop \
            >/dev/null 2>&1 || true
        rm -rf "$stale"
    fi
done

tmp=$(mktemp -d "$base/escrow-pg.XXXXXX")
echo $$ >"$tmp/wrapper.pid"
chmod 755 "$tmp"
if [ -n "$as_root" ]; then
    chown postgres "$tmp"
fi
data="$tmp/data"

cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [ -f "$data/postmaster.pid" ]; then
        as_owner "$bindir/pg_ctl" -D "$data" -m immediate -w -t 30 stop \
            >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
# bash runs these after the foreground command returns (it also got the signal from the
# terminal); `exit` then runs the EXIT trap, which stops the server and removes $tmp.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if ! as_owner "$bindir/initdb" -D "$data" -U postgres -A trust --no-sync -E UTF8 \
    >"$tmp/initdb.log" 2>&1; then
    say "initdb failed:"
    cat "$tmp/initdb.log" >&2
    exit 2
fi

timeout=${WITH_POSTGRES_START_TIMEOUT:-60}
started=""
for attempt in 1 2 3; do
    # A free port now; another process could take it before the server binds, so retry.
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if as_owner "$bindir/pg_ctl" -D "$data" -l "$tmp/server.log" -w -t "$timeout" \
        -o "-h 127.0.0.1 -p $port -k $tmp -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null 2>&1; then
        started=1
        break
    fi
    as_owner "$bindir/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
done
if [ -z "$started" ]; then
    say "the throwaway PostgreSQL server did not start within ${timeout}s; its log:"
    cat "$tmp/server.log" >&2 || true
    exit 2
fi

say "started a throwaway PostgreSQL cluster on 127.0.0.1:$port in $tmp"
export DATABASE_URL="postgres://postgres@127.0.0.1:$port/$db_name"
set +e
"$@"
status=$?
set -e
exit "$status"
