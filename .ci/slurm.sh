#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the tests in tests/test_slurm.py (docs/cluster.md, "A real SLURM").
#
#   .ci/slurm.sh up      install (apt-get, if missing), configure for localhost and start munged, MariaDB,
#                        slurmdbd, slurmctld and slurmd; add the cluster, an account and this user; wait until
#                        sinfo shows the node idle and sacct answers. Idempotent: a running daemon is left alone.
#   .ci/slurm.sh down    stop the daemons this script started (by the pids in their pid files).
#   .ci/slurm.sh status  sinfo and the daemons' pids.
#
# As root, no systemd, no cgroups: proctrack/linuxproc, task/none, select/cons_tres with CR_Core, accounting through
# slurmdbd on MariaDB (submitit polls sacct). Every daemon runs as root except munged (the munge user) and MariaDB
# (the mysql user); MariaDB listens on 127.0.0.1 only. Logs: /var/log/slurm/.
set -euo pipefail

CLUSTER=spikesuite
PARTITION=debug
ACCOUNT=spikesuite
ETC=/etc/slurm
LOGS=/var/log/slurm
RUN=/run/spikesuite-slurm           # pid files of what this script started
STATE=/var/lib/slurm/slurmctld
SPOOL=/var/lib/slurm/slurmd
DB_PASS=spikesuite-ci               # MariaDB user slurm@localhost; the server accepts local connections only
PACKAGES=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)

log() { printf '[slurm %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

running() {  # running NAME: the pid in $RUN/NAME.pid is alive
  [ -s "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: retry COMMAND until it succeeds
  local limit=$1 what=$2 t=0
  shift 2
  until "$@" >/dev/null 2>&1; do
    t=$((t + 1))
    [ "$t" -le "$((limit * 5))" ] || die "$what did not come up in ${limit} s (logs: $LOGS)"
    sleep 0.2
  done
}

install_packages() {
  local missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get"
  log "installing ${missing[*]}"
  apt-get update -qq
  # policy-rc.d in containers keeps the packages' init scripts from starting anything; this script starts them
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

configure() {  # writes slurm.conf and slurmdbd.conf; a running cluster rereads a changed slurm.conf
  local node cpus mem before
  node=$(slurmd -C | head -n1)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  [ -n "$cpus" ] && [ -n "$mem" ] || die "slurmd -C gave no CPUs/RealMemory: $node"
  mkdir -p "$ETC" "$LOGS" "$RUN" "$STATE" "$SPOOL"
  before=$(cat "$ETC/slurm.conf" 2>/dev/null || true)
  # The node is called localhost whatever the host name is (slurmd -N localhost); slurmd -C's values, so the
  # node is never drained for claiming more than it has.
  cat >"$ETC/slurm.conf" <<EOF
# written by .ci/slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again once its credential expired (default 120 s): 10 s keeps the requeue tests short
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=600
SchedulerParameters=defer_batch=0
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$ETC/slurmdbd.conf" <<EOF
# written by .ci/slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"  # slurmdbd refuses a readable file (it holds the password)
  if [ "$before" != "$(cat "$ETC/slurm.conf")" ] && running slurmctld; then
    log "slurm.conf changed: restarting slurmctld and slurmd"
    stop slurmd
    stop slurmctld
  fi
}

start_munge() {
  running munged && return
  install -d -o munge -g munge -m 0755 /run/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
  chown munge:munge /etc/munge/munge.key && chmod 0600 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid --force
  wait_for 10 munged test -s /run/munge/munged.pid
  cp /run/munge/munged.pid "$RUN/munged.pid"
  wait_for 10 munge sh -c 'munge -n | unmunge'
}

start_mariadb() {
  running mariadb && return
  install -d -o mysql -g root -m 0755 /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  install -o mysql -g mysql -m 0640 /dev/null "$LOGS/mariadb.log"  # the server writes as the mysql user
  rm -f /run/mysqld/mysqld.pid
  setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mysqld.pid --log-error="$LOGS/mariadb.log" </dev/null >/dev/null 2>&1 &
  wait_for 60 MariaDB mariadb -e "SELECT 1"
  wait_for 10 MariaDB test -s /run/mysqld/mysqld.pid
  cp /run/mysqld/mysqld.pid "$RUN/mariadb.pid"
  mariadb <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurm() {
  if ! running slurmdbd; then
    slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
  fi
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true  # exists already: fine
  if ! running slurmctld; then
    slurmctld
    wait_for 60 slurmctld scontrol ping
  fi
  if ! running slurmd; then
    slurmd -N localhost
  fi
  sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" description=ci organization=ci >/dev/null 2>&1 || true
  sacctmgr -i -Q add user "$(id -un)" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null 2>&1 || true
  if [ -n "${SUDO_USER:-}" ]; then
    sacctmgr -i -Q add user "$SUDO_USER" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null 2>&1 || true
  fi
  # a node left down or drained by an earlier start comes back
  wait_for 30 "the node" sh -c "sinfo -h -N -n localhost -o %T | grep -q ."
  if sinfo -h -N -n localhost -o %T | grep -qE 'down|drain'; then
    scontrol update nodename=localhost state=resume || true
  fi
  wait_for 60 "the idle node" sh -c "sinfo -h -N -n localhost -o %T | grep -qE '^(idle|mixed|allocated)'"
  wait_for 30 sacct sacct -n -X -S now-1hour
}

up() {
  [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts system daemons)"
  local t0=$SECONDS
  install_packages
  local t1=$SECONDS
  configure
  start_munge
  start_mariadb
  start_slurm
  log "up: install ${t1}s (0 when installed), start $((SECONDS - t1))s"
  sinfo
}

stop() {  # stop NAME: SIGTERM to the pid in its pid file, then wait for it to exit
  local pid
  [ -s "$RUN/$1.pid" ] || return 0
  pid=$(cat "$RUN/$1.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$RUN/$1.pid"
}

down() {
  [ "$(id -u)" = 0 ] || die "run as root"
  for name in slurmd slurmctld slurmdbd mariadb munged; do stop "$name"; done
  log "down"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status)
    for name in munged mariadb slurmdbd slurmctld slurmd; do
      if running "$name"; then echo "$name: pid $(cat "$RUN/$name.pid")"; else echo "$name: not running"; fi
    done
    sinfo 2>&1 || true ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
