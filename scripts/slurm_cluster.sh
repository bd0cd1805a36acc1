#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for testing the submitit launcher.
#
#   scripts/slurm_cluster.sh start    install slurm-wlm + munge if missing, configure, start, wait for idle
#   scripts/slurm_cluster.sh stop     stop slurmd, slurmctld, munged (by their pid files)
#   scripts/slurm_cluster.sh status   daemons, sinfo, squeue
#
# Needs root and no systemd: the daemons run in the background and outlive the calling shell.
# Non-cgroup plugins only (proctrack/linuxproc, task/none), so it also works in containers and gVisor.
# Overridable: SLURM_CONF_DIR (/etc/slurm), SLURM_STATE_DIR (/var/spool/slurm), SLURM_LOG_DIR
# (/var/log/slurm), SLURM_PARTITION (debug).
set -euo pipefail

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
STATE_DIR=${SLURM_STATE_DIR:-/var/spool/slurm}
LOG_DIR=${SLURM_LOG_DIR:-/var/log/slurm}
PARTITION=${SLURM_PARTITION:-debug}
CONF=$CONF_DIR/slurm.conf
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
export SLURM_CONF=$CONF

log() { echo "[slurm_cluster] $*"; }
die() { echo "[slurm_cluster] error: $*" >&2; exit 1; }

alive() { # alive PIDFILE: the process named in PIDFILE is running
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sinfo >/dev/null; then
    return
  fi
  [[ $(id -u) == 0 ]] || die "slurm-wlm/munge are missing and installing them needs root"
  log "installing slurm-wlm and munge (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
  local host node tmp
  host=$(hostname -s)
  # slurmd's own view of this node (CPUs, sockets, cores, RealMemory): a node line that claims more
  # than slurmd detects is drained, one that differs in layout is logged as reconfigured.
  node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
  mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d" "$LOG_DIR"
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
# Written by qpeft scripts/slurm_cluster.sh: a single-node test cluster.
ClusterName=qpeft
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Requeued jobs become eligible cred_expire+1 s later (default 120 s); shorter keeps requeue tests quick.
AuthInfo=cred_expire=30
# Start pending (e.g. requeued) jobs within seconds of becoming eligible (defaults 60 s / 30 s).
SchedulerParameters=sched_interval=5,bf_interval=5
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
JobRequeue=1
ReturnToService=2
KillWait=3
MinJobAge=300
SlurmctldTimeout=60
SlurmdTimeout=60
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if ! cmp -s "$tmp" "$CONF"; then
    install -m 644 "$tmp" "$CONF"
    CONFIG_CHANGED=1
    log "wrote $CONF"
  fi
  rm -f "$tmp"
}

start_munge() {
  if alive "$MUNGE_PID"; then return; fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  chmod 755 /run/munge
  log "starting munged"
  runuser -u munge -- munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.2; done
  die "munged did not come up (see /var/log/munge/munged.log)"
}

start_slurm() {
  if [[ ${CONFIG_CHANGED:-0} == 1 ]] && { alive "$CTLD_PID" || alive "$SLURMD_PID"; }; then
    # Some settings (AuthInfo, node layout) only apply at daemon start; job state survives a restart.
    log "config changed: restarting slurmctld and slurmd"
    stop_one slurmd "$SLURMD_PID"
    stop_one slurmctld "$CTLD_PID"
  fi
  if ! alive "$CTLD_PID"; then
    log "starting slurmctld"
    slurmctld -f "$CONF"
  fi
  for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
  if alive "$SLURMD_PID"; then return; fi
  log "starting slurmd"
  slurmd -f "$CONF" && sleep 1 && alive "$SLURMD_PID" && return
  # slurmd loads a cgroup plugin even with task/none + proctrack/linuxproc. Slurm >= 23.02 can be told
  # not to (CgroupPlugin=disabled, unknown to 22.05), for hosts where autodetection fails.
  if [[ ! -f $CONF_DIR/cgroup.conf ]] && tail -n 20 "$LOG_DIR/slurmd.log" | grep -qiE 'error.*cgroup'; then
    log "slurmd failed on cgroups; retrying with $CONF_DIR/cgroup.conf CgroupPlugin=disabled"
    echo "CgroupPlugin=disabled" >"$CONF_DIR/cgroup.conf"
    slurmd -f "$CONF" && sleep 1 && alive "$SLURMD_PID" && return
    rm -f "$CONF_DIR/cgroup.conf"
  fi
  die "slurmd did not start; see $LOG_DIR/slurmd.log"
}

wait_idle() {
  local host state
  host=$(hostname -s)
  for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1 || true)
    case $state in
      idle | mixed | allocated) log "node $host is $state; partition $PARTITION ready"; return ;;
      drain* | down*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  die "node $host not idle after 60 s (state '${state:-?}'; see $LOG_DIR/slurmctld.log and slurmd.log)"
}

stop_one() { # stop_one NAME PIDFILE
  if alive "$2"; then
    local pid
    pid=$(cat "$2")
    log "stopping $1 (pid $pid)"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$2"
}

status() {
  local rc=0
  for d in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
    if alive "${d#*:}"; then echo "${d%%:*}: running (pid $(cat "${d#*:}"))"; else echo "${d%%:*}: stopped"; rc=1; fi
  done
  if [[ $rc == 0 ]]; then sinfo; squeue; fi
  return $rc
}

case ${1:-} in
  start)
    [[ $(id -u) == 0 ]] || die "run as root"
    install_packages
    CONFIG_CHANGED=0
    write_config
    start_munge
    start_slurm
    wait_idle
    ;;
  stop)
    stop_one slurmd "$SLURMD_PID"
    stop_one slurmctld "$CTLD_PID"
    stop_one munged "$MUNGE_PID"
    ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
