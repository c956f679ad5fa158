#!/bin/sh
# Run the worked example with the gateway of this repository's .venv:
#
#   examples/migration/run.sh [serve options]      gateway serve (e.g. --port 9000)
#   examples/migration/run.sh routes [--explain /shop/cart]
#   examples/migration/run.sh diff                  summarise the shadow comparisons
#
# It sets what the example needs, and any other command of the gateway works the same way:
#   GATEWAY_CONFIG          this directory's gateway.toml (which names the apps, where they
#                           are, and the Django settings, newshop.settings)
#   GATEWAY_DATA_DIR        var/migration-example in the repository, unless already set
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export GATEWAY_CONFIG="$here/gateway.toml"
export GATEWAY_DATA_DIR="${GATEWAY_DATA_DIR:-$root/var/migration-example}"
gateway="$root/.venv/bin/gateway"
[ -x "$gateway" ] || gateway=gateway
case "${1:-}" in
  "" | -*) exec "$gateway" serve "$@" ;;
  *) exec "$gateway" "$@" ;;
esac
