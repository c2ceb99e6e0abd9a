#!/bin/bash
# start-test-cluster.sh - the project's REAL single-host Slurm test cluster.
#
# munged + slurmctld + N slurmd (emulated nodes n1..nN on one host, default 2 so that
# multi-node jobs can be tested) on 127.0.0.1, no systemd, with real accounting: slurmdbd
# on its own MariaDB (test-accounting.sh), so sacct works. Debian's slurm-wlm, munge,
# slurmdbd and mariadb-server are installed when missing. Must run as root.
#
# Usage:  slurm-conf/start-test-cluster.sh [--if-down] [--nodes N] [--cpus N] [--first-job-id N]
#   --if-down   exit 0 at once when the project's cluster (same runtime dir, same node
#               count) already answers `scontrol ping` and its slurmdbd knows it; the
#               hook script is refreshed and drained nodes resumed. Otherwise (re)start it.
#   --nodes N   number of emulated nodes (1-16, default 2).
#   --cpus N    CPUs each emulated node offers (1-64, default: the host's). More than the
#               host has oversubscribes it (slurmd is told to accept the configured
#               count): for many light jobs at once, e.g. a lab recording.
#   --first-job-id N  the first job id of the fresh cluster (default 1): a recording that
#               resumes into an existing store after a restart must not reuse job ids.
# Environment:
#   NOMADE_TEST_CLUSTER=/tmp/nomade-cluster   runtime dir (layout below)
#   NOMADE_TEST_USER=nomadetest               unprivileged user created for tests
#
# Runtime dir: etc/ (the generated slurm.conf, cgroup.conf; also copied to /etc/slurm/),
# state/ log/ run/ out/ (job output, mode 1777), hooks/ (wrappers + a copy of the
# project's hook script), spool/node (Prolog/Epilog events, written as root) and
# spool/ctld (PrologSlurmctld/EpilogSlurmctld/jobcomp events, written as user slurm),
# mariadb/ (the accounting database: datadir, socket).
# A (re)start empties state/, out/, the spools and the accounting database (job ids begin
# again at 1); --if-down keeps all.
#
# The project's hook script is COPIED into $RUN/hooks/bin: user slurm may not be able
# to traverse the checkout, and a wrapper pointing into a checkout that moves would fail
# and drain the node. --if-down refreshes the copies, so `make test` runs current hooks.
set -euo pipefail

RUN=${NOMADE_TEST_CLUSTER:-/tmp/nomade-cluster}
TEST_USER=${NOMADE_TEST_USER:-nomadetest}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
MARKER="# nomade-test-cluster RUN=$RUN"
IF_DOWN=0
NODES=2
NODE_CPUS=""
FIRST_JOB_ID=1
CTLD_PORT=6817
DBD_PORT=6819
CLUSTER=nomadetest
NODE_PORT0=17001

T0=$(date +%s.%N)
ts() { awk -v a="$(date +%s.%N)" -v b="$T0" -v m="$*" 'BEGIN{printf "[%7.2fs] %s\n", a-b, m}'; }
die() { echo "start-test-cluster: ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case $1 in
    --if-down) IF_DOWN=1 ;;
    --nodes) [ $# -ge 2 ] || die "--nodes needs a number"; NODES=$2; shift ;;
    --nodes=*) NODES=${1#--nodes=} ;;
    --cpus) [ $# -ge 2 ] || die "--cpus needs a number"; NODE_CPUS=$2; shift ;;
    --cpus=*) NODE_CPUS=${1#--cpus=} ;;
    --first-job-id) [ $# -ge 2 ] || die "--first-job-id needs a number"; FIRST_JOB_ID=$2; shift ;;
    --first-job-id=*) FIRST_JOB_ID=${1#--first-job-id=} ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (usage: $0 [--if-down] [--nodes N] [--cpus N] [--first-job-id N])" ;;
  esac
  shift
done
case $NODES in ''|*[!0-9]*) die "--nodes must be a number 1-16, not '$NODES'" ;; esac
[ "$NODES" -ge 1 ] && [ "$NODES" -le 16 ] || die "--nodes must be 1-16, not $NODES"
case $NODE_CPUS in *[!0-9]*) die "--cpus must be a number 1-64, not '$NODE_CPUS'" ;; esac
[ -z "$NODE_CPUS" ] || { [ "$NODE_CPUS" -ge 1 ] && [ "$NODE_CPUS" -le 64 ]; } || die "--cpus must be 1-64, not $NODE_CPUS"
case $FIRST_JOB_ID in ''|*[!0-9]*) die "--first-job-id must be a number, not '$FIRST_JOB_ID'" ;; esac
[ "$FIRST_JOB_ID" -ge 1 ] && [ "$FIRST_JOB_ID" -le 67000000 ] || die "--first-job-id must be 1-67000000, not $FIRST_JOB_ID"
[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

HOOK=prolog/nomade-hook   # the one script behind Prolog, Epilog, *Slurmctld and jobcomp
[ -f "$REPO/$HOOK" ] || die "hook script $REPO/$HOOK is missing (the cluster's Prolog/Epilog/jobcomp run it)"

# Copy the project's hook script where slurm can run it (atomic replace: a hook
# running right now keeps its old file).
refresh_hooks() {
  install -d -m 0755 "$RUN/hooks/bin"
  install -m 0755 "$REPO/$HOOK" "$RUN/hooks/bin/.nomade-hook.new"
  mv -f "$RUN/hooks/bin/.nomade-hook.new" "$RUN/hooks/bin/nomade-hook"
}

cluster_is_ours() {  # up, started from this runtime dir, with $NODES nodes and accounting
  /usr/bin/scontrol ping >/dev/null 2>&1 || return 1
  head -1 /etc/slurm/slurm.conf 2>/dev/null | grep -qxF "$MARKER" || return 1
  /usr/bin/scontrol show config 2>/dev/null | grep -qE "^StateSaveLocation += $RUN/state/ctld\$" || return 1
  [ "$(/usr/bin/sinfo -h -N -o %N 2>/dev/null | sort -u | wc -l)" = "$NODES" ] || return 1
  [ -x /usr/bin/sacctmgr ] && /usr/bin/sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qxF "$CLUSTER"
}

if [ "$IF_DOWN" = 1 ] && command -v scontrol >/dev/null && cluster_is_ours; then
  refresh_hooks
  bad=$(/usr/bin/sinfo -h -N -t drain,down,fail -o %N 2>/dev/null | sort -u | paste -sd, || true)
  if [ -n "$bad" ]; then
    /usr/bin/scontrol update NodeName="$bad" State=RESUME 2>/dev/null || true
    ts "resumed drained/down nodes: $bad"
  fi
  ts "test cluster already up ($RUN, $NODES nodes); hook script refreshed"
  exit 0
fi

# ---------------------------------------------------------------- 0. stop what runs
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
  ts "Slurm daemons are running -> stop-test-cluster.sh"
  NOMADE_TEST_CLUSTER=$RUN "$HERE/stop-test-cluster.sh" >/dev/null
  pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null &&
    die "Slurm daemons not started by this script are running (pids: $(pgrep -x 'slurmctld|slurmd' | paste -sd' ')); stop them first"
fi

# ---------------------------------------------------------------- 1. packages
need=""
for p in slurmctld slurmd slurm-client munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need="$need $p"
done
if [ -n "$need" ]; then
  ts "installing slurm-wlm munge (missing:$need)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
ts "slurm $(dpkg-query -W -f='${Version}' slurmctld), munge $(dpkg-query -W -f='${Version}' munge)"

# ---------------------------------------------------------------- 2. munge
[ -s /etc/munge/munge.key ] || { ts "creating munge key"; mungekey --create --force; }
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
mkdir -p "$RUN/run"
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  touch "$RUN/run/munged.ours"          # stop-test-cluster.sh stops munged only then
  for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
ts "munged OK (pid $(cat /run/munge/munged.pid))"

# ---------------------------------------------------------------- 3. directories, user
# A fresh start restarts job ids at 1: events left in the spools from the previous
# cluster would carry the same ids, so they go too.
# out/ goes too: job ids begin again at 1, and a reused id's old output file, owned by
# another user in this sticky directory, makes the new job fail at once ("Could not open
# stdout file: Permission denied"), a FAILED label that is not the job's doing.
rm -rf "$RUN/state" "$RUN/etc" "$RUN/spool" "$RUN/out"
mkdir -p "$RUN"/{etc,state/ctld,state/slurmd,log,run,out,spool/node,spool/ctld}
chmod 0755 "$RUN" "$RUN"/{etc,state,log,run,spool}
chown slurm:slurm "$RUN/state/ctld" "$RUN/log" "$RUN/run" "$RUN/spool/ctld"
chmod 0750 "$RUN/spool/node" "$RUN/spool/ctld"
chmod 1777 "$RUN/out"
if [ -n "$TEST_USER" ] && ! id "$TEST_USER" >/dev/null 2>&1; then
  useradd -m -s /bin/bash "$TEST_USER"; ts "created user $TEST_USER"
fi

# ---------------------------------------------------------------- 4. hooks
refresh_hooks
wrapper() {  # $1 = wrapper name, $2 = spool
  cat > "$RUN/hooks/$1" <<EOF
#!/bin/sh
# generated by start-test-cluster.sh: run the project's hook with the test spool.
NOMADE_SPOOL=$RUN/spool/$2
export NOMADE_SPOOL
[ -x $RUN/hooks/bin/nomade-hook ] || exit 0
exec $RUN/hooks/bin/nomade-hook
EOF
  chmod 0755 "$RUN/hooks/$1"
}
wrapper prolog node
wrapper epilog node
wrapper prolog_slurmctld ctld
wrapper epilog_slurmctld ctld
wrapper jobcomp ctld
runuser -u slurm -- test -x "$RUN/hooks/jobcomp" -a -r "$RUN/hooks/bin/nomade-hook" ||
  die "user slurm cannot run $RUN/hooks/jobcomp (is $RUN traversable?)"

# ---------------------------------------------------------------- 5. slurm.conf, cgroup.conf
HOST=$(hostname -s)
HW=$(slurmd -C | head -1)   # NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 ... RealMemory=24105
CPUS=$(echo "$HW" | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p')
TOPO=$(echo "$HW" | grep -oE '(Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' | paste -sd' ')
OVERRIDES=""
if [ -n "$NODE_CPUS" ] && [ "$NODE_CPUS" != "$CPUS" ]; then
  # an emulated node with more (or fewer) CPUs than the host: one socket of NODE_CPUS
  # cores, and slurmd takes the configured layout instead of refusing the node
  CPUS=$NODE_CPUS
  TOPO="Boards=1 SocketsPerBoard=1 CoresPerSocket=$NODE_CPUS ThreadsPerCore=1"
  OVERRIDES="SlurmdParameters=config_overrides"
fi
MEM=$(echo "$HW" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM=$(( (MEM > 2048 ? MEM - 512 : MEM) / NODES ))   # the nodes share the host's memory
if [ "$NODES" = 1 ]; then NODENAMES=n1; PORTS=$NODE_PORT0
else NODENAMES="n[1-$NODES]"; PORTS="[$NODE_PORT0-$((NODE_PORT0 + NODES - 1))]"; fi

if [ -f /sys/fs/cgroup/cgroup.controllers ]; then CGMODE=v2; else CGMODE=v1; fi
[ "$CGMODE" = v2 ] || [ -d /sys/fs/cgroup/memory ] || die "neither cgroup v2 nor a v1 memory controller under /sys/fs/cgroup"

cat > "$RUN/etc/slurm.conf" <<EOF
$MARKER
# generated by slurm-conf/start-test-cluster.sh $(date -u +%FT%TZ); cgroup $CGMODE; $NODES nodes
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CryptoType=crypto/munge
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmctldPort=$CTLD_PORT
StateSaveLocation=$RUN/state/ctld
SlurmdSpoolDir=$RUN/state/slurmd/%n
SlurmctldPidFile=$RUN/run/slurmctld.pid
SlurmdPidFile=$RUN/run/slurmd-%n.pid
SlurmctldLogFile=$RUN/log/slurmctld.log
SlurmdLogFile=$RUN/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity
JobAcctGatherType=jobacct_gather/cgroup
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=2
FirstJobId=$FIRST_JOB_ID
$OVERRIDES
# --- what a site adds for NØMADE (slurm-conf/site/slurm.conf.nomade), pointing at test wrappers
PrologFlags=Alloc
Prolog=$RUN/hooks/prolog
Epilog=$RUN/hooks/epilog
PrologSlurmctld=$RUN/hooks/prolog_slurmctld
EpilogSlurmctld=$RUN/hooks/epilog_slurmctld
JobCompType=jobcomp/script
JobCompLoc=$RUN/hooks/jobcomp
PrologEpilogTimeout=60
# ---
NodeName=$NODENAMES NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$PORTS CPUs=$CPUS $TOPO RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$RUN/etc/cgroup.conf" <<EOF
# generated by slurm-conf/start-test-cluster.sh (cgroup $CGMODE; autodetect picks it)
CgroupPlugin=autodetect
IgnoreSystemd=yes
ConstrainCores=yes
ConstrainRAMSpace=yes
EOF
install -d /etc/slurm
if [ -f /etc/slurm/slurm.conf ] && ! head -1 /etc/slurm/slurm.conf | grep -q '^# nomade-test-cluster'; then
  [ -e /etc/slurm/slurm.conf.before-nomade ] || cp -p /etc/slurm/slurm.conf /etc/slurm/slurm.conf.before-nomade
  ts "kept the previous /etc/slurm/slurm.conf as slurm.conf.before-nomade"
fi
cp "$RUN/etc/slurm.conf" "$RUN/etc/cgroup.conf" /etc/slurm/
ts "config written: $NODES node(s) $NODENAMES, $CPUS CPUs and ${MEM} MB each, cgroup $CGMODE"

# ---------------------------------------------------------------- 5b. accounting (before slurmctld)
NOMADE_TEST_CLUSTER=$RUN NOMADE_TEST_USER=$TEST_USER "$HERE/test-accounting.sh" start

# ---------------------------------------------------------------- 6. daemons
slurmctld || die "slurmctld failed to start; see $RUN/log/slurmctld.log"
for i in $(seq 1 "$NODES"); do
  slurmd -N "n$i" || die "slurmd -N n$i failed to start; see $RUN/log/slurmd-n$i.log"
done
for _ in $(seq 1 150); do
  idle=$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l || true)
  [ "$idle" = "$NODES" ] && break; sleep 0.2
done
[ "$idle" = "$NODES" ] || { tail -20 "$RUN/log/slurmctld.log"; sinfo -N || true; die "only $idle of $NODES nodes idle"; }
ts "slurmctld and $NODES slurmd up, all nodes idle"

# ---------------------------------------------------------------- 7. smoke job on every node
jid=$(sbatch --parsable -J nomade-smoke -N "$NODES" -o "$RUN/out/smoke-%j.out" --wrap 'echo smoke-ok')
for _ in $(seq 1 300); do
  st=$(scontrol show job -o "$jid" | grep -oE 'JobState=[A-Z_]+' | cut -d= -f2 || true)
  case $st in COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL) break ;; esac; sleep 0.1
done
[ "$st" = COMPLETED ] && grep -q smoke-ok "$RUN/out/smoke-$jid.out" || die "smoke job $jid: $st"
ts "smoke job $jid COMPLETED on $NODES node(s)"
# slurmctld sends the job's end to slurmdbd on its own schedule (about a second here)
for _ in $(seq 1 100); do
  acct=$(sacct -n -X -P -j "$jid" -o State 2>/dev/null || true)
  [ "$acct" = COMPLETED ] && break; sleep 0.1
done
[ "$acct" = COMPLETED ] || die "smoke job $jid is not COMPLETED in sacct ('$acct'); see $RUN/log/slurmdbd.log"
ts "smoke job $jid COMPLETED in sacct"
for _ in $(seq 1 50); do
  grep -qlz "^JOBID=$jid\$" "$RUN"/spool/ctld/*.ev 2>/dev/null && break; sleep 0.1
done
for d in node ctld; do
  n=$(grep -lz -E "^(SLURM_JOB_ID|JOBID)=$jid\$" "$RUN/spool/$d"/*.ev 2>/dev/null | wc -l || true)
  [ "$n" -gt 0 ] || echo "start-test-cluster: WARNING: no hook event of job $jid in $RUN/spool/$d" >&2
  ts "hook events of the smoke job in spool/$d: $n"
done
ts "Slurm test cluster is up ($RUN).  sinfo: $(sinfo -h -o '%P %a %D %T %N' | tr '\n' ' ')"
