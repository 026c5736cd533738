#!/usr/bin/env bash
# Run a command with DATABASE_URL pointing at PostgreSQL:
#   1. DATABASE_URL if already set;
#   2. else a server answering on 127.0.0.1:5432 (trust auth, role postgres);
#   3. else a throwaway cluster from the PostgreSQL binaries in a temporary folder,
#      removed again when the command ends.
set -euo pipefail

if [ -n "${DATABASE_URL:-}" ]; then
    exec "$@"
fi

if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432 -t 3; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    exec "$@"
fi
if psql "postgres://postgres@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    exec "$@"
fi

# No server: start our own. Find the binaries even when they are not on PATH (Debian).
bindir=""
if command -v initdb >/dev/null 2>&1; then
    bindir=$(dirname "$(readlink -f "$(command -v initdb)")")
else
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "with-postgres: no DATABASE_URL, no server on 127.0.0.1:5432 and no PostgreSQL binaries" >&2
    echo "with-postgres: install PostgreSQL (e.g. apt-get install postgresql) or set DATABASE_URL" >&2
    exit 2
fi

tmp=$(mktemp -d /tmp/escrow-pg.XXXXXX)
chmod 755 "$tmp"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
# initdb refuses to run as root; use the postgres system user when we are root.
as_owner=()
if [ "$(id -u)" = "0" ]; then
    id -u postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$tmp"
    as_owner=(runuser -u postgres --)
fi
cleanup() {
    "${as_owner[@]}" "$bindir/pg_ctl" -D "$tmp/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

echo "with-postgres: starting a throwaway PostgreSQL cluster on 127.0.0.1:$port ($tmp)" >&2
"${as_owner[@]}" "$bindir/initdb" -D "$tmp/data" -U postgres -A trust --no-sync -E UTF8 >/dev/null
"${as_owner[@]}" "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $tmp -c fsync=off -c max_connections=200" start >/dev/null
export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
set +e
"$@"
status=$?
exit $status
