#!/bin/sh
# Sentinel rewrites its file as it learns the set, so it lives on a writable volume.
set -e
. /scripts/discover.sh
cat > /sentinel/sentinel.conf <<CONF
port 26379
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $ME
sentinel monitor omost $PRIMARY 6379 2
sentinel down-after-milliseconds omost 5000
sentinel failover-timeout omost 60000
sentinel parallel-syncs omost 1
CONF
exec redis-server /sentinel/sentinel.conf --sentinel
