#!/bin/sh
# A node never starts as a second primary: unless the Sentinels (or, on the first start, the ordinal)
# say this pod is the primary, it starts as a replica of the one they name.
set -e
. /scripts/discover.sh
set -- --appendonly yes --appendfsync everysec --maxmemory-policy noeviction --replica-announce-ip "$ME"
if [ "$PRIMARY" != "$ME" ]; then
  # Not a candidate for promotion until its first sync is done (priority-after-sync.sh gives it back).
  set -- "$@" --replicaof "$PRIMARY" 6379 --replica-priority 0
  sh /scripts/priority-after-sync.sh 6379 &
fi
exec redis-server "$@"
