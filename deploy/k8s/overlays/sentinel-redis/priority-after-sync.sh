#!/bin/sh
# A replica starts with replica-priority 0, which Sentinel never promotes: a node that restarted empty
# or behind (its disk lost, a pod rescheduled) must not become the primary before its first sync, or the
# real primary would resync from it and lose the data. Once the link is up and the sync is loaded, the
# default priority comes back and it is a candidate like any replica. $1: the node's port.
PORT=${1:-6379}
synced() {
  info=$(redis-cli -p "$PORT" INFO replication 2>/dev/null | tr -d '\r')
  echo "$info" | grep -qx 'master_link_status:up' && echo "$info" | grep -qx 'master_sync_in_progress:0'
}
until synced; do sleep 1; done
redis-cli -p "$PORT" CONFIG SET replica-priority 100 >/dev/null
