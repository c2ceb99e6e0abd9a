#!/bin/bash
# stop-test-cluster.sh - stop the cluster of start-test-cluster.sh: cancel its jobs, shut
# down slurmctld and every slurmd (by PID file, no pkill), then its slurmdbd and MariaDB
# (test-accounting.sh stop), stop munged when the start script started it, and remove the
# empty Slurm cgroup directories.
#   NOMADE_TEST_CLUSTER=/tmp/nomade-cluster   the same runtime dir as the start script
#   NOMADE_TEST_CLUSTER_WIPE=1                also delete the runtime dir (state, logs, spools)
set -u
RUN=${NOMADE_TEST_CLUSTER:-/tmp/nomade-cluster}
HERE=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "stop-test-cluster: ERROR: must run as root" >&2; exit 1; }

stop_pidfile() {  # $1 = pid file, $2 = name
  [ -s "$1" ] || return 0
  local pid; pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || { echo "stopped $2 ($pid)"; return 0; }; sleep 0.1; done
  echo "$2 ($pid) still alive after 10 s -> SIGKILL"; kill -KILL "$pid"
}

if /usr/bin/scontrol ping >/dev/null 2>&1; then
  /usr/bin/squeue -h -t PD,R,S,CF -o %i 2>/dev/null | xargs -r /usr/bin/scancel 2>/dev/null || true
  for _ in $(seq 1 100); do [ -z "$(/usr/bin/squeue -h -t R,CG,S 2>/dev/null)" ] && break; sleep 0.1; done
  /usr/bin/scontrol shutdown >/dev/null 2>&1 || true
fi
for pidfile in "$RUN"/run/slurmd-*.pid; do
  [ -e "$pidfile" ] && stop_pidfile "$pidfile" "$(basename "$pidfile" .pid)"
done
stop_pidfile "$RUN/run/slurmctld.pid" slurmctld
NOMADE_TEST_CLUSTER=$RUN "$HERE/test-accounting.sh" stop   # after slurmctld: it sends job ends to slurmdbd
if [ -e "$RUN/run/munged.ours" ]; then
  stop_pidfile /run/munge/munged.pid munged
  rm -f "$RUN/run/munged.ours"
fi
find /sys/fs/cgroup -maxdepth 3 -type d \( -name 'slurm_*' -o -name slurm \) 2>/dev/null |
  while read -r d; do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
if [ "${NOMADE_TEST_CLUSTER_WIPE:-0}" = 1 ]; then rm -rf "$RUN" && echo "removed $RUN"; fi
exit 0
