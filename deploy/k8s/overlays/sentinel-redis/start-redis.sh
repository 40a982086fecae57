#!/bin/sh
# A node never starts as a second primary: unless the Sentinels (or, on the first start, the ordinal)
# say this pod is the primary, it starts as a replica of the one they name.
set -e
. /scripts/discover.sh
set -- --appendonly yes --appendfsync everysec --maxmemory-policy noeviction --replica-announce-ip "$ME"
if [ "$PRIMARY" != "$ME" ]; then set -- "$@" --replicaof "$PRIMARY" 6379; fi
exec redis-server "$@"
