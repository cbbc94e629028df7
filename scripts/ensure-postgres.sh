#!/usr/bin/env bash
# Makes sure PostgreSQL's server programs are installed, for the tests of the PostgreSQL ledger and of
# several bot processes (the tests start their own throwaway server; nothing runs after them).
# Installs Debian's `postgresql` package when it is missing and this runs as root with apt-get;
# otherwise says what to do. With D2I_REQUIRE_POSTGRES=1 (CI) a missing server is an error.
set -euo pipefail

have_server() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}

if have_server; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL (Debian package postgresql) for the tests..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends postgresql >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends postgresql >/dev/null; }
    # the package may start its own cluster: the tests don't use it
    pg_ctlcluster --help >/dev/null 2>&1 && for c in $(ls /etc/postgresql 2>/dev/null); do
        pg_ctlcluster "$c" main stop >/dev/null 2>&1 || true
    done
    have_server && exit 0
fi
msg="PostgreSQL is not installed: the PostgreSQL tests will be skipped (Debian/Ubuntu: sudo apt-get install postgresql)."
if [ "${D2I_REQUIRE_POSTGRES:-0}" = 1 ]; then
    echo "error: $msg" >&2
    exit 1
fi
echo "note: $msg" >&2
