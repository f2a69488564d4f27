#!/usr/bin/env bash
# Applies ringmesh's recommendations to a node (or a pod's network namespace).
#   tuning/apply.sh --dry-run          # print what would change on this node
#   tuning/apply.sh                    # apply node-wide settings + the per-netns profile here
#   tuning/apply.sh --netns NAME       # apply the per-netns profile inside a pod netns
#   --profile FILE                     # another profile (default: tuning/profile.conf)
# Settings are not persisted across reboots: put them in /etc/sysctl.d/ or the pod spec
# (securityContext.sysctls) once measured. See tuning/README.md for each value's reason.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
profile="$here/profile.conf"
netns=""; dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --netns) netns="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "apply.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
run() { if [ -n "$netns" ]; then ip netns exec "$netns" "$@"; else "$@"; fi; }
set_one() { # key value
  local cur; cur=$(run sysctl -n "$1" 2>/dev/null | tr -s '\t ' ' ') || cur="(absent)"
  if [ "$cur" = "$2" ]; then echo "unchanged  $1 = $2"; return; fi
  if [ "$dry" = 1 ]; then echo "would set  $1 = $2 (now $cur)"
  else run sysctl -qw "$1=$2" && echo "set        $1 = $2 (was $cur)"; fi
}
while IFS= read -r line; do
  line=${line%%#*}; [ -z "${line// }" ] && continue
  set_one "$(echo "${line%%=*}" | xargs)" "$(echo "${line#*=}" | xargs | tr -s '\t ' ' ')"
done < "$profile"
if [ -z "$netns" ]; then
  set_one net.core.netdev_max_backlog 5000
  set_one net.core.rmem_max 16777216
  set_one net.core.wmem_max 16777216
  if [ -w /sys/kernel/mm/transparent_hugepage/enabled ]; then
    if [ "$dry" = 1 ]; then echo "would set  transparent_hugepage = madvise"
    else echo madvise > /sys/kernel/mm/transparent_hugepage/enabled && echo "set        transparent_hugepage = madvise"; fi
  fi
fi
