#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the dispatch tests (Debian's slurmctld, slurmd, munge; root).
#   tests/slurm/cluster.sh start STATE_DIR    # prints nothing on success; sbatch works afterwards
#   tests/slurm/cluster.sh stop STATE_DIR     # stops every daemon this script started
set -euo pipefail
action=$1
state=$(realpath -m "$2")
conf=/etc/slurm/slurm.conf

stop() {
  for daemon in slurmd slurmctld munged; do
    if [ -f "$state/$daemon.pid" ]; then
      kill "$(cat "$state/$daemon.pid")" 2>/dev/null || true
      rm -f "$state/$daemon.pid"
    fi
  done
}

if [ "$action" = stop ]; then stop; exit 0; fi

for tool in slurmctld slurmd munged sbatch; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install slurmctld slurmd munge slurm-client" >&2; exit 1; }
done
mkdir -p "$state"/{spool,ctld,log} /etc/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
if ! munge -n >/dev/null 2>&1; then  # a munged already running (a real host) is used, not replaced
  # --force: as root, munged refuses the package's default file ownerships otherwise.
  munged --force --pid-file="$state/munged.pid" --log-file="$state/log/munged.log"
fi

host=$(hostname -s)
mkdir -p /etc/slurm
cat > "$conf" <<CONF
ClusterName=phases-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
slurmctld
slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then exit 0; fi
  sleep 1
done
echo "SLURM did not come up; logs in $state/log" >&2
tail -20 "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 || true
exit 1
