# Sourced by both containers: this pod's stable name, and the primary as the Sentinels name it now
# (empty while no Sentinel answers: the first start of the set, when omost-redis-0 is the primary).
ME="$(hostname).omost-redis"
PRIMARY=""
for node in omost-redis-0 omost-redis-1 omost-redis-2; do
  PRIMARY=$(redis-cli -h "$node.omost-redis" -p 26379 --raw SENTINEL get-master-addr-by-name omost 2>/dev/null | head -n 1) || true
  [ -n "$PRIMARY" ] && break
done
if [ -z "$PRIMARY" ]; then PRIMARY="omost-redis-0.omost-redis"; fi
