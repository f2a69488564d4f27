#!/usr/bin/env bash
# Compares a node (or a pod's network namespace) with ringmesh's recommendations.
#   tuning/check.sh                    # this node: node-wide settings + the per-netns profile
#   tuning/check.sh --netns NAME       # a pod netns (ip netns name): the per-netns profile
#   --profile FILE                     # another profile (default: tuning/profile.conf)
# Prints one line per setting: ok / DIFF (current → recommended). Exit 0 if all ok, 1 if not.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
profile="$here/profile.conf"
netns=""
while [ $# -gt 0 ]; do
  case "$1" in
    --netns) netns="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
run() { if [ -n "$netns" ]; then ip netns exec "$netns" "$@"; else "$@"; fi; }
diffs=0
check() { # key recommended
  local cur
  cur=$(run sysctl -n "$1" 2>/dev/null | tr -s '\t ' ' ') || cur="(absent)"
  if [ "$cur" = "$2" ]; then printf 'ok    %-40s %s\n' "$1" "$cur"
  else printf 'DIFF  %-40s %s -> %s\n' "$1" "$cur" "$2"; diffs=$((diffs + 1)); fi
}
while IFS= read -r line; do
  line=${line%%#*}; [ -z "${line// }" ] && continue
  key=$(echo "${line%%=*}" | xargs); val=$(echo "${line#*=}" | xargs | tr -s '\t ' ' ')
  check "$key" "$val"
done < "$profile"
if [ -z "$netns" ]; then
  # Node-wide (not per network namespace).
  check net.core.netdev_max_backlog 5000
  check net.core.rmem_max 16777216
  check net.core.wmem_max 16777216
  thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo absent)
  case "$thp" in *"[madvise]"*) echo "ok    transparent_hugepage                     madvise" ;;
    *) echo "DIFF  transparent_hugepage                     $thp -> madvise"; diffs=$((diffs + 1)) ;; esac
  nofile=$(ulimit -n)
  if [ "$nofile" -ge 1048576 ]; then echo "ok    nofile (this shell)                      $nofile"
  else echo "DIFF  nofile (this shell)                      $nofile -> 1048576 (set LimitNOFILE / the pod's ulimit)"; diffs=$((diffs + 1)); fi
fi
echo "$diffs difference(s)"
[ "$diffs" -eq 0 ]
