#!/usr/bin/env bash
# The test cluster on this machine: a single-node Slurm (slurmctld + slurmd, accounting through
# slurmdbd on the local MariaDB, so sacct answers) and a two-node Ray cluster (a head and a second
# node with its own hostname), for `make test-cluster` and for trying the README's cluster commands.
#
#   bash scripts/test-cluster.sh up       install what is missing (Debian, as root), configure, start; idempotent:
#                                         returns in a few seconds when everything is up already
#   bash scripts/test-cluster.sh down     stop what `up` started (Slurm daemons, munged, both Ray nodes)
#   bash scripts/test-cluster.sh status   one line per engine; exit 0 when both are up
#   bash scripts/test-cluster.sh kill-ray-node   SIGKILL the second Ray node (a lost node; `up` restarts it)
#
# The configs are tests/cluster/slurm.conf and slurmdbd.conf (@HOST@ becomes this machine's short
# hostname). The Ray cluster listens on 127.0.0.1:$NECTARGAN_RAY_PORT (default 6388); each node has
# 1 CPU and 1 (logical) GPU, so that two tasks in flight run one on each node. Nothing here touches
# processes it did not start: its daemons are stopped by the PIDs and process groups recorded in $STATE.
# Errors are one line on stderr starting with "Error:" and exit 1 (the tests skip with that line).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

STATE=${NECTARGAN_CLUSTER_STATE:-/var/tmp/nectargan-test-cluster}
RAY_PORT=${NECTARGAN_RAY_PORT:-6388}
RAY_TEMP=/tmp/ntc-ray                        # short: Ray's socket paths must fit in 107 characters
RAY_NODE2=ray-node-2                          # the second node's hostname (its own UTS namespace)
RAY=$REPO/.venv/bin/ray
PACKAGES=(munge slurmctld slurmd slurmdbd slurm-client)
DB=nectargan_slurm_acct
DB_USER=nectargan_slurm
DB_PASS=nectargan-test-only                   # the same as in tests/cluster/slurmdbd.conf
MARK="# nectargan-bench test cluster"
HOST=$(hostname -s)

say() { echo "test-cluster: $*" >&2; }
fail() { echo "Error: test cluster: $*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.5 s
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$what did not come up within ${limit}s (see $(log_of "$what"))"
        sleep 0.5
    done
}
log_of() {
    case "$1" in
        slurmdbd*) echo /var/log/slurm/slurmdbd.log ;;
        slurmctld*) echo /var/log/slurm/slurmctld.log ;;
        slurmd*|"the node"*) echo /var/log/slurm/slurmd.log ;;
        Ray*) echo "$STATE/ray-*.log" ;;
        *) echo "$STATE" ;;
    esac
}

# --- Slurm ---------------------------------------------------------------------------------------------

slurm_up() {
    alive /run/slurmdbd.pid && alive /run/slurmctld.pid && alive /run/slurmd.pid && node_ready
}

node_ready() {
    local state
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)
    case "$state" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || fail "no apt-get here: install ${missing[*]} (Debian packages) another way"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$STATE/apt.log" 2>&1; then
        apt-get update -q >>"$STATE/apt.log" 2>&1 || fail "apt-get update failed (see $STATE/apt.log)"
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$STATE/apt.log" 2>&1 \
            || fail "apt-get install ${missing[*]} failed (see $STATE/apt.log)"
    fi
}

mariadb_up() { mariadb -u root -e 'SELECT 1' >/dev/null 2>&1; }

ensure_mariadb() {
    mariadb_up && return 0
    if ! installed mariadb-server; then
        say "installing mariadb-server"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mariadb-server \
            >>"$STATE/apt.log" 2>&1 || fail "apt-get install mariadb-server failed (see $STATE/apt.log)"
    fi
    say "starting MariaDB"
    service mariadb start >"$STATE/mariadb.log" 2>&1 || true
    wait_for 60 "MariaDB" mariadb_up
}

ensure_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
        chown munge:munge /etc/munge/munge.key
    fi
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/started-munged"
    wait_for 10 "munged" sh -c 'munge -n </dev/null | unmunge'
}

render() {  # render SRC DEST MODE OWNER: the config with @HOST@ filled in, unless a foreign file is there
    local src=$1 dest=$2 text
    text=$(sed "s/@HOST@/$HOST/g" "$src")
    if [ -f "$dest" ] && ! head -1 "$dest" | grep -q "^$MARK"; then
        fail "$dest exists and is not the test cluster's: move it away to run the test cluster here"
    fi
    if [ "$(cat "$dest" 2>/dev/null)" != "$text" ]; then
        printf '%s\n' "$text" >"$dest"
        RESTART=1
    fi
    chmod "$3" "$dest"
    chown "$4" "$dest"
}

configs_current() {  # the running Slurm was started with the repository's configs
    [ "$(sed "s/@HOST@/$HOST/g" tests/cluster/slurm.conf)" = "$(cat /etc/slurm/slurm.conf 2>/dev/null)" ] &&
        [ "$(sed "s/@HOST@/$HOST/g" tests/cluster/slurmdbd.conf)" = "$(cat /etc/slurm/slurmdbd.conf 2>/dev/null)" ]
}

configure_slurm() {
    mkdir -p /etc/slurm /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
    chown slurm:slurm /var/log/slurm /var/lib/slurm/slurmctld
    render tests/cluster/slurm.conf /etc/slurm/slurm.conf 644 root:root
    render tests/cluster/slurmdbd.conf /etc/slurm/slurmdbd.conf 600 slurm:slurm
    mariadb -u root <<SQL || fail "cannot create the accounting database $DB in MariaDB"
CREATE DATABASE IF NOT EXISTS $DB;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB.* TO '$DB_USER'@'localhost';
GRANT ALL ON $DB.* TO '$DB_USER'@'127.0.0.1';
SQL
}

stop_pidfile() {  # stop_pidfile FILE: SIGTERM the daemon, SIGKILL after 10 s
    alive "$1" || return 0
    local pid; pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

start_slurm() {
    if [ "${RESTART:-0}" = 1 ]; then  # a changed config: daemons started with the old one go
        stop_pidfile /run/slurmd.pid; stop_pidfile /run/slurmctld.pid; stop_pidfile /run/slurmdbd.pid
    fi
    if ! alive /run/slurmdbd.pid; then
        /usr/sbin/slurmdbd
        wait_for 30 "slurmdbd" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
    fi
    if ! alive /run/slurmctld.pid; then
        /usr/sbin/slurmctld
        wait_for 30 "slurmctld" scontrol ping
    fi
    # the controller registers its cluster with slurmdbd; make sure accounting knows it (sacct needs it)
    wait_for 30 "slurmdbd's cluster record" sh -c "sacctmgr -n -P list cluster format=cluster | grep -qx nectargan-test"
    if ! alive /run/slurmd.pid; then
        /usr/sbin/slurmd
    fi
    local state; state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
    case "$state" in down*|drain*|fail*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;; esac
    wait_for 30 "the node $HOST (slurmd)" node_ready
    wait_for 30 "sacct" sacct -n -X -S now
}

# --- Ray -------------------------------------------------------------------------------------------------

ray_nodes() {  # the live nodes of our Ray cluster, as its autoscaler lists them
    "$RAY" status --address "127.0.0.1:$RAY_PORT" 2>/dev/null \
        | awk '/^Active:/ {on = 1; next} /^[A-Z]/ {on = 0} on && /node_/ {n++} END {print n + 0}'
}

ray_group_alive() { [ -f "$STATE/ray-$1.pgid" ] && kill -0 -- "-$(cat "$STATE/ray-$1.pgid")" 2>/dev/null; }

ray_up() { ray_group_alive head && ray_group_alive node2 && pgrep -g "$(cat "$STATE/ray-node2.pgid")" -x raylet >/dev/null; }

start_ray() {
    [ -x "$RAY" ] || fail "no $RAY: run make setup first (Ray comes with the dev extra)"
    command -v unshare >/dev/null || fail "no unshare (util-linux): the second Ray node needs its own hostname"
    local common=(--num-cpus=1 --num-gpus=1 --object-store-memory=100000000 --disable-usage-stats)
    if ! ray_group_alive head; then
        stop_ray_group node2  # a second node of an earlier head cannot join a new one
        RAY_task_oom_retries=0 setsid "$RAY" start --head --port="$RAY_PORT" --include-dashboard=false \
            --temp-dir="$RAY_TEMP" "${common[@]}" >"$STATE/ray-head.log" 2>&1 &
        echo $! >"$STATE/ray-head.pgid"
        wait $! || fail "ray start --head failed (see $STATE/ray-head.log)"
    fi
    if ! ray_up; then
        stop_ray_group node2
        RAY_task_oom_retries=0 setsid unshare --uts sh -c \
            "hostname $RAY_NODE2 && exec '$RAY' start --address=127.0.0.1:$RAY_PORT ${common[*]}" \
            >"$STATE/ray-node2.log" 2>&1 &
        echo $! >"$STATE/ray-node2.pgid"
        wait $! || fail "ray start of the second node failed (see $STATE/ray-node2.log)"
    fi
    wait_for 60 "Ray's second node" sh -c "[ \"\$('$0' ray-nodes)\" = 2 ]"
}

stop_ray_group() {  # stop_ray_group head|node2: SIGKILL the node's process group (a test cluster keeps no state;
    local file=$STATE/ray-$1.pgid  # Ray's daemons take 10 s and more over SIGTERM); its workers exit with it
    [ -f "$file" ] || return 0
    kill -9 -- "-$(cat "$file")" 2>/dev/null || true
    rm -f "$file"
}

# --- commands ----------------------------------------------------------------------------------------------

status_line() {
    local slurm=down ray=down
    slurm_up && slurm=up
    ray_up && ray=up
    echo "slurm: $slurm (node $HOST, partition debug, accounting on MariaDB $DB); ray: $ray (127.0.0.1:$RAY_PORT, nodes $HOST and $RAY_NODE2)"
    [ "$slurm" = up ] && [ "$ray" = up ]
}

case "${1:-}" in
    up)
        [ "$(id -u)" = 0 ] || fail "needs root to install and start Slurm (uid $(id -u))"
        mkdir -p "$STATE"
        if slurm_up && ray_up && configs_current; then status_line; exit 0; fi
        started=$SECONDS
        install_packages
        ensure_mariadb
        ensure_munge
        RESTART=0
        configure_slurm
        slurm_up && [ "$RESTART" = 0 ] || start_slurm
        start_ray
        touch "$STATE/up"
        say "up in $((SECONDS - started)) s"
        status_line
        ;;
    down)
        stop_ray_group node2
        stop_ray_group head
        stop_pidfile /run/slurmd.pid
        stop_pidfile /run/slurmctld.pid
        stop_pidfile /run/slurmdbd.pid
        if [ -f "$STATE/started-munged" ]; then stop_pidfile /run/munge/munged.pid; rm -f "$STATE/started-munged"; fi
        rm -f "$STATE/up"
        say "stopped"
        ;;
    status) status_line ;;
    kill-ray-node)  # the second node's raylet, SIGKILL: its workers die with it, as on a lost machine
        [ -f "$STATE/ray-node2.pgid" ] || fail "no second Ray node recorded in $STATE"
        pkill -9 -g "$(cat "$STATE/ray-node2.pgid")" -x raylet || fail "the second Ray node's raylet is not running"
        ;;
    ray-nodes) ray_nodes ;;
    *) echo "usage: $0 up|down|status|kill-ray-node" >&2; exit 2 ;;
esac
