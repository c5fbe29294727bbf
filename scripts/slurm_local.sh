#!/usr/bin/env bash
# Command: sudo scripts/slurm_local.sh start   (then: export SLURM_CONF=/tmp/dlmbench-slurm/slurm.conf)
#
# A single-node Slurm cluster on this machine, for dlmbench's Slurm integration test
# (tests/harness/run/test_slurm_integration.py, marker `slurm`). Needs root and the Debian packages
# slurm-wlm and munge (apt-get install -y slurm-wlm munge). No systemd or cgroups are used:
# process tracking by process group (proctrack/pgid), no task binding (task/none).
#
#   scripts/slurm_local.sh start    write the config, start munged, slurmctld and slurmd; wait
#                                   until the node is idle (about 5-20 s)
#   scripts/slurm_local.sh stop     cancel the jobs left on it, stop the three daemons
#   scripts/slurm_local.sh status   sinfo of the local cluster
#
# Everything lives under $DLMBENCH_SLURM_DIR (default /tmp/dlmbench-slurm): slurm.conf, state,
# logs, pid files. Nothing under /etc is changed except munge's key, created if missing.
set -euo pipefail

DIR="${DLMBENCH_SLURM_DIR:-/tmp/dlmbench-slurm}"
CONF="$DIR/slurm.conf"
HOST="$(hostname -s)"
MUNGE_SOCKET="$DIR/munge/munge.socket"

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' not found; install: apt-get install -y slurm-wlm munge" >&2; exit 2; }; }

write_conf() {
    local cpus mem_mb
    cpus="$(nproc --all)"
    mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    mkdir -p "$DIR"/{state,spool,log,munge}
    cat >"$CONF" <<CONF
# dlmbench single-node test cluster (scripts/slurm_local.sh); not for production.
ClusterName=dlmbench
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobRequeue=1
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
    # Slurm reads cgroup.conf only for cgroup plugins; an empty one silences a warning.
    : >"$DIR/cgroup.conf"
}

start_munge() {
    if [ -S "$MUNGE_SOCKET" ] && munge --socket="$MUNGE_SOCKET" -n </dev/null | unmunge --socket="$MUNGE_SOCKET" >/dev/null 2>&1; then
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chmod 400 /etc/munge/munge.key
    fi
    munged --force --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
        --key-file=/etc/munge/munge.key
    munge --socket="$MUNGE_SOCKET" -n </dev/null | unmunge --socket="$MUNGE_SOCKET" >/dev/null
}

wait_idle() {
    for _ in $(seq 1 60); do
        state="$(SLURM_CONF="$CONF" sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)"
        case "$state" in
            idle|mixed|allocated) echo "slurm is up: node $HOST $state; export SLURM_CONF=$CONF"; return 0 ;;
        esac
        sleep 1
    done
    echo "error: node $HOST did not become idle (state '${state:-none}'); see $DIR/log/" >&2
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    return 1
}

stop_pidfile() {
    local f="$1" pid
    pid="$(cat "$f" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$f"
}

drain_jobs() {
    # Cancel what is left on this private cluster and let slurmd clean up before it stops.
    local jobs
    jobs="$(SLURM_CONF="$CONF" squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)"
    [ -n "${jobs// }" ] && SLURM_CONF="$CONF" scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 60); do
        [ -z "$(SLURM_CONF="$CONF" squeue -h 2>/dev/null || true)" ] && break
        sleep 0.5
    done
}

case "${1:-start}" in
    start)
        need munged; need slurmctld; need slurmd; need sinfo
        [ "$(id -u)" = 0 ] || { echo "error: run as root (the daemons run as root here)" >&2; exit 2; }
        write_conf
        start_munge
        export SLURM_CONF="$CONF"
        [ -s "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null || slurmctld -c -f "$CONF"
        [ -s "$DIR/slurmd.pid" ] && kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null || slurmd -c -f "$CONF"
        wait_idle
        ;;
    stop)
        drain_jobs
        stop_pidfile "$DIR/slurmd.pid"
        stop_pidfile "$DIR/slurmctld.pid"
        stop_pidfile "$DIR/munge/munged.pid"
        echo "stopped"
        ;;
    status)
        SLURM_CONF="$CONF" sinfo
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
