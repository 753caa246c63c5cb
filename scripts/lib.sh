# Shared by scripts/up and scripts/test: install what is missing (Debian 12), start the database
# servers when they are not running, and make local administrator accounts for vmoodle.
# shellcheck shell=bash

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages vmoodle and its tests need; installed only when missing.
# php-xml, -mbstring, -curl, -zip, -gd, -intl, -soap: what Moodle 5.1 itself needs (the MNET test
# runs the real Moodle code); zstd unpacks that code for the tests.
PACKAGES=(php-cli php-mysql php-pgsql php-xml php-mbstring php-curl php-zip php-gd php-intl php-soap
          mariadb-server mariadb-client mariadb-backup postgresql postgresql-client
          libssl-dev pkg-config gcc ca-certificates zstd)

# ensure_packages [EXTRA...]: the packages above, and EXTRA ones (the tests add the browser).
ensure_packages() {
    local missing=()
    for p in "${PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

ensure_rust_tools() {
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
    if ! cargo nextest --version >/dev/null 2>&1; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
}

wait_for() { # wait_for SECONDS COMMAND...
    local secs=$1; shift
    for _ in $(seq 1 $((secs * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    return 1
}

mariadb_up() { mariadb-admin --protocol=socket -uroot ping >/dev/null 2>&1 || mariadb-admin -h 127.0.0.1 -uroot ping >/dev/null 2>&1; }
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }

ensure_services() {
    if ! mariadb_up; then
        log "starting MariaDB"
        as_root service mariadb start >/dev/null 2>&1 \
            || as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
        wait_for 60 mariadb_up || { echo "MariaDB did not start" >&2; exit 1; }
    fi
    if ! pg_up; then
        log "starting PostgreSQL"
        local v
        v="$(ls /etc/postgresql | sort -V | tail -n1)"
        as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start >/dev/null 2>&1 || as_root service postgresql start
        wait_for 60 pg_up || { echo "PostgreSQL did not start" >&2; exit 1; }
    fi
}

# Runs SQL on the local MariaDB as its administrator (root over the socket, as Debian sets it up).
# The SQL goes in on stdin, never on argv: it may hold a password (ps and /proc show argv).
mariadb_admin_sql() {
    if mariadb --protocol=socket -uroot -e 'SELECT 1' >/dev/null 2>&1; then
        printf '%s\n' "$1" | mariadb --protocol=socket -uroot
    else
        printf '%s\n' "$1" | mariadb -h 127.0.0.1 -uroot
    fi
}

# Runs SQL on the local PostgreSQL as the postgres superuser (peer authentication).
pg_admin_sql() {
    if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "$1")
    else
        psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d postgres -c "$1"
    fi
}

# ensure_admin_accounts DIR USER: an administrator account USER on both servers, its password
# kept in DIR/mariadb.pw and DIR/pgsql.pw (0600; made once, reused).
ensure_admin_accounts() {
    local dir=$1 user=$2
    mkdir -p "$dir"; chmod 700 "$dir"
    for f in mariadb.pw pgsql.pw; do
        if [ ! -s "$dir/$f" ]; then
            (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/$f")
        fi
    done
    local mpw ppw
    mpw="$(cat "$dir/mariadb.pw")"; ppw="$(cat "$dir/pgsql.pw")"
    mariadb_admin_sql "CREATE USER IF NOT EXISTS '$user'@'127.0.0.1' IDENTIFIED BY '$mpw';
        ALTER USER '$user'@'127.0.0.1' IDENTIFIED BY '$mpw';
        CREATE USER IF NOT EXISTS '$user'@'localhost' IDENTIFIED BY '$mpw';
        ALTER USER '$user'@'localhost' IDENTIFIED BY '$mpw';
        GRANT ALL PRIVILEGES ON *.* TO '$user'@'127.0.0.1' WITH GRANT OPTION;
        GRANT ALL PRIVILEGES ON *.* TO '$user'@'localhost' WITH GRANT OPTION;" >/dev/null
    pg_admin_sql "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$user') THEN
            CREATE ROLE \"$user\" LOGIN SUPERUSER;
        END IF;
        END \$\$;" >/dev/null
    # The password goes in through psql's stdin, not its command line.
    printf "ALTER ROLE \"%s\" LOGIN SUPERUSER PASSWORD '%s';\n" "$user" "$ppw" | {
        if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1; then
            (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres)
        else
            psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d postgres
        fi
    } >/dev/null
}

# ---- the daemon ---------------------------------------------------------------------------------
# Where the supervised daemon (no systemd) keeps its pid and log; HOME_DIR is the vmoodle home.
daemon_pidfile() { echo "$HOME_DIR/serve.pid"; }
daemon_log() { echo "$HOME_DIR/logs/serve.log"; }

# The daemon's base URL, from web.listen and whether TLS is set.
daemon_url() {
    local listen cert
    listen="$(vmoodle settings get web.listen 2>/dev/null || echo 127.0.0.1:8700)"
    cert="$(vmoodle settings get web.tls_cert 2>/dev/null || true)"
    listen="${listen/0.0.0.0/127.0.0.1}"
    if [ -n "$cert" ]; then echo "https://$listen"; else echo "http://$listen"; fi
}

daemon_healthy() { curl -fsSk --max-time 2 "$(daemon_url)/healthz" >/dev/null 2>&1; }
daemon_down() { ! daemon_healthy; }

# The supervisor's pid when it runs.
supervisor_pid() {
    local f pid
    f="$(daemon_pidfile)"
    [ -f "$f" ] || return 1
    pid="$(cat "$f")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# Creates the first administrator `admin` with a random password in a 0600 file of the home,
# only when the register has no administrator at all.
ensure_first_admin() {
    local pwfile="$HOME_DIR/admin.pw"
    if [ "$(vmoodle admin list --json)" != "[]" ]; then
        return 0
    fi
    (umask 077 && openssl rand -base64 18 | tr -d '\n' >"$pwfile")
    chmod 600 "$pwfile"
    vmoodle admin add admin --password-stdin <"$pwfile" >/dev/null 2>&1
    log "administrator \`admin\` created; its password is in $pwfile"
}

# Runs the daemon as a systemd unit where systemd is PID 1, otherwise under a small supervisor
# loop (setsid, pidfile and log in the home; restarted 2 s after it stops). A healthy daemon
# (answering /healthz) is left alone.
# Whether the running daemon's binary has been replaced since it started (an upgrade by
# scripts/up): its /proc/PID/exe then ends with " (deleted)".
daemon_outdated() {
    local pid="" sup
    if [ -d /run/systemd/system ]; then
        pid="$(systemctl show -p MainPID --value vmoodle.service 2>/dev/null || true)"
    elif sup="$(supervisor_pid)"; then
        pid="$(pgrep -P "$sup" -f 'vmoodle serve' | head -n1 || true)"
    fi
    [ -n "$pid" ] && [ "$pid" != 0 ] && readlink "/proc/$pid/exe" 2>/dev/null | grep -q ' (deleted)$'
}

ensure_daemon() {
    if daemon_healthy && ! daemon_outdated; then
        log "the daemon already answers at $(daemon_url)"
        return 0
    fi
    if daemon_healthy; then
        # vmoodle was upgraded: the daemon restarts on the new binary (its running jobs stop at
        # their next step and are undone, as on any SIGTERM).
        log "restarting the daemon on the upgraded vmoodle"
        if [ -d /run/systemd/system ]; then
            as_root systemctl restart vmoodle.service
        else
            pkill -TERM -P "$(supervisor_pid)" -f 'vmoodle serve' || true
            wait_for 130 daemon_down || true
        fi
    fi
    if [ -d /run/systemd/system ]; then
        sed -e "s|@HOME@|$HOME_DIR|g" -e "s|@USER@|$(id -un)|g" "$ROOT/packaging/vmoodle.service" |
            as_root tee /etc/systemd/system/vmoodle.service >/dev/null
        as_root systemctl daemon-reload
        as_root systemctl enable vmoodle.service
        as_root systemctl restart vmoodle.service
    elif ! supervisor_pid >/dev/null; then
        mkdir -p "$(dirname "$(daemon_log)")"
        setsid bash -c '
            echo $$ >"$1"
            child=
            trap "[ -n \"\$child\" ] && kill -TERM \$child 2>/dev/null; wait; rm -f \"$1\"; exit 0" TERM INT
            while :; do
                "$3" serve >>"$2" 2>&1 &
                child=$!
                wait $child || true
                echo "$(date -Is) vmoodle serve stopped; restarting in 2 s" >>"$2"
                sleep 2
            done' supervisor "$(daemon_pidfile)" "$(daemon_log)" "$(command -v vmoodle)" \
            </dev/null >/dev/null 2>&1 &
    fi
    wait_for 60 daemon_healthy || {
        log "the daemon does not answer at $(daemon_url)/healthz; see $(daemon_log)"
        return 1
    }
    log "the daemon answers at $(daemon_url)"
}

# Stops the daemon (the unit, or the supervisor and its daemon).
stop_daemon() {
    local pid
    if [ -d /run/systemd/system ] && [ -f /etc/systemd/system/vmoodle.service ]; then
        as_root systemctl stop vmoodle.service
    elif pid="$(supervisor_pid)"; then
        kill -TERM "$pid"
        wait_for 130 bash -c "! kill -0 $pid 2>/dev/null"
        rm -f "$(daemon_pidfile)"
    fi
    log "the daemon is stopped"
}
