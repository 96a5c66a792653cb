#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the `slurm` tests and for trying
# `lh execute --backend slurm` without a cluster.
#
#   scripts/slurm-local.sh start   # installs Debian's slurmctld/slurmd/munge if missing, starts them
#   scripts/slurm-local.sh stop    # stops only the daemons this script started (by pid file)
#
# Needs root (it installs packages and runs munged as user munge). State, logs and pid files
# live under $LH_SLURM_DIR (default /tmp/lh-slurm). Partition: `debug` (the default one).
set -euo pipefail
DIR="${LH_SLURM_DIR:-/tmp/lh-slurm}"
HOST="$(hostname -s)"

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 || {
      apt-get update >/dev/null && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; }
  fi
}

write_conf() {
  local cpus mem
  cpus="$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)"
  mem="$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)"
  mem=$(( mem * 9 / 10 ))
  mkdir -p "$DIR"/{state,spool,log,run}
  mkdir -p /etc/slurm
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=lhlocal
SlurmctldHost=${HOST}(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  mkdir -p /run/munge /etc/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge 2>/dev/null || true
  if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null 2>&1 || true; fi
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if ! pgrep -x munged >/dev/null; then
    su -s /bin/sh munge -c "munged --pid-file=/run/munge/lh-munged.pid" || runuser -u munge -- munged --pid-file=/run/munge/lh-munged.pid
    cp /run/munge/lh-munged.pid "$DIR/run/munged.pid"
  fi
}

start() {
  install
  write_conf
  start_munge
  slurmctld -c -i
  slurmd -c -N "$HOST"
  for _ in $(seq 1 100); do
    state="$(sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)"
    if [ "$state" = "idle" ]; then
      echo "slurm-local: node $HOST idle (partition debug); logs in $DIR/log"
      return 0
    fi
    sleep 0.2
  done
  echo "slurm-local: node did not come up idle (state: ${state:-none}); see $DIR/log" >&2
  return 1
}

stop() {
  for name in slurmd slurmctld munged; do
    pidfile="$DIR/run/$name.pid"
    if [ -s "$pidfile" ]; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
      rm -f "$pidfile"
    fi
  done
  echo "slurm-local: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
