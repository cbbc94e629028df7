#!/usr/bin/env bash
# Installs the tests' pinned copy of Discord's OpenAPI description (tests/discord_spec: the npm package
# discord-api-spec with the Zod it needs, exact versions from its package-lock.json), which the fake
# Discord checks every request against. Needs Node.js 18+ and npm: installs Debian's `nodejs` and `npm`
# when they are missing and this runs as root with apt-get; otherwise says what to do.
set -euo pipefail
cd "$(dirname "$0")/../tests/discord_spec"

have_node() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
        && node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'
}

if ! have_node; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Node.js and npm (Debian packages nodejs, npm) for the tests..."
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends nodejs npm >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends nodejs npm >/dev/null; }
    fi
    have_node || { echo "error: the tests need Node.js 18+ and npm (Debian/Ubuntu: sudo apt-get install nodejs npm)" >&2; exit 1; }
fi

# (again only when the lock file changed since the last install)
stamp=node_modules/.installed-from-lock
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
    cp package-lock.json "$stamp"
fi
