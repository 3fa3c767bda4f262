#!/usr/bin/env bash
# puqvpn installer: installs or upgrades the panel on Debian 12/13 or Ubuntu 22.04/24.04.
#
#   sudo ./install.sh [options]                  from a clone of the repository
#   curl -fsSL <raw URL of install.sh> | sudo bash -s -- --source <git URL> [options]
#
# Run it again to upgrade: the database is migrated, data, keys and settings stay.
# Every step says what it does; if one fails the installer stops, and running
# it again finishes the job.  See --help.
set -Eeuo pipefail
umask 022
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

APP_DIR=/opt/puqvpn
VENV=$APP_DIR/venv
DATA_DIR=/var/lib/puqvpn
CONF_DIR=/etc/puqvpn
CONF=$CONF_DIR/puqvpn.conf
TLS_DIR=$CONF_DIR/tls
RUN_DIR=/run/puqvpn
LOG_DIR=/var/log/puqvpn
UNIT_FILE=/etc/systemd/system/puqvpn.service
WRAPPER=/usr/local/bin/puqvpn
SOURCE_STAMP=$APP_DIR/.installed-source   # digest of the copied files
DEPS_STAMP=$VENV/.installed-deps          # digest of pyproject.toml and the Python version

PACKAGES=(wireguard-tools nftables iproute2 procps python3 python3-venv openssl ca-certificates
          charon-systemd strongswan-swanctl libcharon-extra-plugins libcharon-extauth-plugins
          libstrongswan-standard-plugins libstrongswan-extra-plugins)

PORT="" ADMIN_USER=admin ADMIN_PASSWORD="" DOMAIN="" SOURCE="${PUQVPN_SOURCE:-}"
NO_START=0 ACTION=install UPGRADE=0 CREATED_PASSWORD=""

usage() {
  cat <<'EOF'
Usage: sudo ./install.sh [options]

Installs puqvpn (or upgrades it, keeping every client, key and setting) and
starts it over HTTPS, then prints the URL and the first admin's password.

  --port N               HTTPS port of the panel (default 8443; kept on upgrade)
  --domain NAME          Domain name of this server, for the URL and certificate
  --admin-user NAME      Name of the first admin (default admin)
  --admin-password PASS  Password of the first admin (default: generated, printed once)
                         (or set PUQVPN_ADMIN_PASSWORD, which keeps it out of `ps`)
  --no-start             Install everything but do not start the panel
  --start                Only start the panel and charon (e.g. after a reboot
                         on a system without systemd)
  --source DIR|GIT_URL   Where the puqvpn source is, when the script does not
                         run from a clone (e.g. piped into bash); also PUQVPN_SOURCE
  --uninstall            Remove the service and the app; keep data and settings
  --purge                Remove the service, the app, the data and the settings
  -h, --help             This help
EOF
}

# --------------------------------------------------------------------- output

step_no=0
step() { step_no=$((step_no + 1)); printf '\n==> [%d] %s\n' "$step_no" "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '    WARNING: %s\n' "$*" >&2; }
REPORTED=86  # exit status of a subshell that has already printed its error
die() {
  printf '\nERROR: %s\n' "$*" >&2
  printf 'Fix the cause and run the installer again: it finishes whatever is half-done.\n' >&2
  exit $(( BASH_SUBSHELL > 0 ? REPORTED : 1 ))
}
on_error() {
  local rc=$? line=$1 command=$2
  trap - ERR
  (( rc == REPORTED )) && exit $(( BASH_SUBSHELL > 0 ? REPORTED : 1 ))
  die "step ${step_no} failed at line ${line} (exit ${rc}): ${command}"
}
trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR

# ---------------------------------------------------------------- arguments

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) need_value "$@"; PORT=$2; shift 2 ;;
    --port=*) PORT=${1#*=}; shift ;;
    --domain) need_value "$@"; DOMAIN=$2; shift 2 ;;
    --domain=*) DOMAIN=${1#*=}; shift ;;
    --admin-user) need_value "$@"; ADMIN_USER=$2; shift 2 ;;
    --admin-user=*) ADMIN_USER=${1#*=}; shift ;;
    --admin-password) need_value "$@"; ADMIN_PASSWORD=$2; shift 2 ;;
    --admin-password=*) ADMIN_PASSWORD=${1#*=}; shift ;;
    --source) need_value "$@"; SOURCE=$2; shift 2 ;;
    --source=*) SOURCE=${1#*=}; shift ;;
    --no-start) NO_START=1; shift ;;
    --start) ACTION=start; shift ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) ACTION=purge; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
ADMIN_PASSWORD=${ADMIN_PASSWORD:-${PUQVPN_ADMIN_PASSWORD:-}}

# Values end up in the settings file and a certificate: hold them to strict patterns.
if [[ -n $PORT ]] && ! [[ $PORT =~ ^[0-9]{1,5}$ && $PORT -ge 1 && $PORT -le 65535 ]]; then
  die "--port must be a number from 1 to 65535, not '$PORT'"
fi
if [[ -n $DOMAIN ]] && ! [[ $DOMAIN =~ ^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$ ]]; then
  die "--domain must be a domain name such as vpn.example.com, not '$DOMAIN'"
fi
if ! [[ $ADMIN_USER =~ ^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$ ]]; then
  die "--admin-user may only contain letters, digits and . _ - @ (starting with a letter or digit)"
fi

[[ $(id -u) == 0 ]] || die "run the installer as root: sudo $0 $*"

has_systemd() { [[ -d /run/systemd/system ]]; }

# ---------------------------------------------------------------- processes
# Without systemd as PID 1 the panel and charon run under a small restart
# loop, started with setsid; its PID (= its process group) is in /run/puqvpn.

supervise_start() { # name command...
  local name=$1; shift
  local pidfile=$RUN_DIR/$name.pid
  if supervise_running "$name"; then
    info "$name already runs (PID $(cat "$pidfile"))"
    return 0
  fi
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  chmod 0700 "$LOG_DIR"
  # shellcheck disable=SC2016  # expanded by the inner bash, on purpose
  setsid bash -c '
    echo $$ > "$0"
    trap "kill -TERM \$child 2>/dev/null; wait \$child; exit 0" TERM INT
    while true; do
      "$@" & child=$!
      wait $child && rc=0 || rc=$?
      echo "$(date -u +%FT%TZ) exited with status $rc; restarting in 3 s"
      sleep 3
    done' "$pidfile" "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  for _ in $(seq 50); do [[ -s $pidfile ]] && break; sleep 0.1; done
  [[ -s $pidfile ]] || die "could not start $name (see $LOG_DIR/$name.log)"
  info "started $name (PID $(cat "$pidfile"), log $LOG_DIR/$name.log)"
}

supervise_running() {
  local pidfile=$RUN_DIR/$1.pid pid
  [[ -s $pidfile ]] || return 1
  pid=$(cat "$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && grep -q 'restarting in 3 s' "/proc/$pid/cmdline" 2>/dev/null
}

supervise_stop() {
  local name=$1 pidfile=$RUN_DIR/$1.pid pid
  if supervise_running "$name"; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    info "stopped $name (PID $pid)"
  fi
  rm -f "$pidfile"
}

# ------------------------------------------------------------------ uninstall

stop_everything() {
  if has_systemd && [[ -f $UNIT_FILE ]]; then
    step "Stopping and disabling the puqvpn service"
    systemctl disable --now puqvpn.service || true
  else
    step "Stopping the panel and charon started by the installer"
  fi
  supervise_stop panel
  supervise_stop charon
}

uninstall() {
  stop_everything
  if [[ $ACTION == purge && -x $VENV/bin/puqvpn && -f $CONF ]]; then
    step "Taking the panel's WireGuard interfaces and firewall table off the system"
    PUQVPN_CONFIG=$CONF "$VENV/bin/puqvpn" teardown --yes 2>&1 | sed 's/^/    /' \
      || warn "some could not be taken down; they go at the next reboot"
  fi
  step "Removing the app ($APP_DIR), the service file and the puqvpn command"
  rm -f "$UNIT_FILE" "$WRAPPER"
  if has_systemd; then systemctl daemon-reload || true; fi
  rm -rf "$APP_DIR" "$APP_DIR.new"
  if [[ $ACTION == purge ]]; then
    step "Removing the data ($DATA_DIR), the settings ($CONF_DIR) and the logs ($LOG_DIR)"
    rm -rf "$DATA_DIR" "$CONF_DIR" "$LOG_DIR"
    info "The system packages (WireGuard, strongSwan, nftables) stay installed."
  else
    info "Kept: the data in $DATA_DIR and the settings in $CONF_DIR (remove them with --purge)."
  fi
  if [[ $ACTION != purge ]]; then
    info "The WireGuard tunnels keep running until the next reboot (clients stay connected);"
    info "reinstalling takes them over again.  --purge takes them down."
  fi
  printf '\npuqvpn is uninstalled.\n'
}

# -------------------------------------------------------------------- checks

check_os() {
  step "Checking the operating system"
  [[ -r /etc/os-release ]] || die "cannot read /etc/os-release: this is not a supported Debian or Ubuntu"
  local id version
  # shellcheck source=/dev/null
  id=$(. /etc/os-release && echo "${ID:-}")
  # shellcheck source=/dev/null
  version=$(. /etc/os-release && echo "${VERSION_ID:-}")
  case "$id:$version" in
    debian:12|debian:13|ubuntu:22.04|ubuntu:24.04) info "$id $version: supported" ;;
    *)
      if [[ ${PUQVPN_ANY_OS:-0} == 1 ]]; then
        warn "$id $version is not supported; continuing because PUQVPN_ANY_OS=1"
      else
        die "$id $version is not supported (Debian 12/13, Ubuntu 22.04/24.04). Set PUQVPN_ANY_OS=1 to try anyway."
      fi ;;
  esac
  command -v apt-get >/dev/null || die "apt-get is missing"
}

find_source() {
  step "Finding the puqvpn source"
  local here=""
  if [[ -n ${BASH_SOURCE[0]:-} && -f ${BASH_SOURCE[0]} ]]; then
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  fi
  if [[ -z $SOURCE && -n $here ]] && is_source_tree "$here"; then
    SOURCE=$here
  fi
  if [[ -z $SOURCE ]]; then
    die "this installer has no puqvpn source to install: it is not running from a clone
       (piped into bash?).  Either clone the repository and run ./install.sh from it,
       or give the source: --source /path/to/puqvpn  or  --source https://…/puqvpn.git"
  fi
  if [[ $SOURCE =~ ^(https://|http://|git@|ssh://|git://) ]]; then
    ensure_packages git
    local checkout=/var/cache/puqvpn/source
    info "cloning $SOURCE into $checkout"
    rm -rf "$checkout"
    mkdir -p "$(dirname "$checkout")"
    git clone --depth 1 -- "$SOURCE" "$checkout" || die "could not clone $SOURCE"
    SOURCE=$checkout
  fi
  [[ -d $SOURCE ]] || die "--source $SOURCE: no such folder"
  SOURCE=$(cd "$SOURCE" && pwd)
  is_source_tree "$SOURCE" || die "$SOURCE is not a puqvpn source tree (no pyproject.toml naming puqvpn, or no app.py)"
  [[ $SOURCE != "$APP_DIR" ]] || die "run the installer from a clone, not from $APP_DIR itself"
  info "installing from $SOURCE"
}

is_source_tree() {
  [[ -f $1/pyproject.toml && -f $1/app.py && -d $1/puqvpn ]] && grep -q '^name = "puqvpn"' "$1/pyproject.toml"
}

# ------------------------------------------------------------------ packages

missing_packages() {
  local package status
  for package in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || printf '%s\n' "$package"
  done
}

APT_UPDATED=0
ensure_packages() {
  local missing
  mapfile -t missing < <(missing_packages "$@")
  [[ ${#missing[@]} -gt 0 ]] || return 0
  if [[ $APT_UPDATED == 0 ]]; then
    info "apt-get update"
    apt-get update -q >/dev/null || die "apt-get update failed: check the network and /etc/apt/sources.list*"
    APT_UPDATED=1
  fi
  info "apt-get install --no-install-recommends ${missing[*]}"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || die "installing ${missing[*]} failed (on Ubuntu, wireguard-go needs the universe component)"
}

kernel_has_wireguard() {
  [[ -d /sys/module/wireguard ]] && return 0
  command -v modprobe >/dev/null && modprobe wireguard 2>/dev/null && return 0
  # The definitive test: can a WireGuard link be made?  Tried in a throwaway
  # network namespace where possible, so the host's links are not touched.
  if command -v unshare >/dev/null && unshare --net true 2>/dev/null; then
    unshare --net ip link add dev pqvprobe type wireguard 2>/dev/null
    return
  fi
  if ip link add dev pqvprobe type wireguard 2>/dev/null; then
    ip link del dev pqvprobe 2>/dev/null || true
    return 0
  fi
  return 1
}

install_packages() {
  step "Installing the system packages (WireGuard, strongSwan, nftables, Python venv)"
  local wanted=("${PACKAGES[@]}")
  ensure_packages iproute2
  if kernel_has_wireguard; then
    info "the kernel has WireGuard: wireguard-go is not needed"
  else
    info "the kernel has no WireGuard module: adding wireguard-go (userspace WireGuard)"
    wanted+=(wireguard-go)
  fi
  local missing
  mapfile -t missing < <(missing_packages "${wanted[@]}")
  if [[ ${#missing[@]} == 0 ]]; then
    info "all installed already"
  else
    ensure_packages "${wanted[@]}"
  fi
  local python_ok
  python_ok=$(python3 -c 'import sys; print(int(sys.version_info >= (3, 10)))')
  [[ $python_ok == 1 ]] || die "puqvpn needs Python 3.10 or newer; this system has $(python3 --version)"
}

# ----------------------------------------------------------------------- app

source_digest() {
  # What would be copied, by content: decides whether the venv needs a reinstall.
  (cd "$SOURCE" && list_source_files | LC_ALL=C sort | while IFS= read -r f; do
      printf '%s  %s\n' "$(sha256sum < "$f" | cut -d' ' -f1)" "$f"; done) | sha256sum | cut -d' ' -f1
}

list_source_files() {
  if [[ -d .git ]] && command -v git >/dev/null && git ls-files >/dev/null 2>&1; then
    git ls-files --cached --others --exclude-standard | while IFS= read -r f; do [[ -f $f ]] && printf '%s\n' "$f"; done
  else
    find . -type f ! -path './.git/*' ! -path './instance/*' ! -path './.venv/*' ! -path './venv/*' \
      ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path './test-artifacts/*' | sed 's|^\./||'
  fi
}

install_app() {
  step "Copying the app to $APP_DIR"
  local digest
  digest=$(source_digest)
  mkdir -p "$APP_DIR"
  chmod 0755 "$APP_DIR"
  if [[ -f $SOURCE_STAMP && $(cat "$SOURCE_STAMP") == "$digest" ]]; then
    info "the installed copy matches the source: nothing to copy"
  else
    rm -f "$SOURCE_STAMP"
    # Replace everything but the venv; a re-run after an interruption copies again.
    find "$APP_DIR" -mindepth 1 -maxdepth 1 ! -name venv -exec rm -rf {} +
    (cd "$SOURCE" && list_source_files | tar -cf - --no-recursion -T -) | tar -C "$APP_DIR" -xf - --no-same-owner
    printf '%s\n' "$digest" > "$SOURCE_STAMP"
    info "copied $(cd "$APP_DIR" && find . -type f ! -path './venv/*' | wc -l) files"
  fi

  step "Installing the Python packages into $VENV"
  if [[ -x $VENV/bin/python ]] && ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    info "the venv is broken (Python upgraded?): making it again"
    rm -rf "$VENV"
  fi
  if [[ ! -x $VENV/bin/python ]]; then
    info "python3 -m venv $VENV"
    python3 -m venv "$VENV" || die "could not create the venv (is python3-venv installed?)"
  fi
  # The app is installed in editable mode, so new code needs no pip run;
  # only a change of the dependencies (pyproject.toml) does.
  local deps
  deps=$( (sha256sum < "$APP_DIR/pyproject.toml"; "$VENV/bin/python" -V) | sha256sum | cut -d' ' -f1)
  if [[ -f $DEPS_STAMP && $(cat "$DEPS_STAMP") == "$deps" && -x $VENV/bin/puqvpn ]]; then
    info "the dependencies are installed and unchanged"
    return 0
  fi
  rm -f "$DEPS_STAMP"
  info "pip install -e $APP_DIR (pinned dependencies from pyproject.toml)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir -e "$APP_DIR" \
    || die "pip could not install the Python packages: check the network access to PyPI"
  printf '%s\n' "$deps" > "$DEPS_STAMP"
}

install_command() {
  cat > "$WRAPPER.tmp" <<EOF
#!/bin/sh
# The puqvpn admin command (installed by install.sh).
PUQVPN_CONFIG=\${PUQVPN_CONFIG:-$CONF}
export PUQVPN_CONFIG
exec $VENV/bin/puqvpn "\$@"
EOF
  chmod 0755 "$WRAPPER.tmp"
  mv -f "$WRAPPER.tmp" "$WRAPPER"
}

# ------------------------------------------------------------------ settings

setting() { # NAME -> value in the settings file, or empty
  [[ -f $CONF ]] || return 0
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$CONF" | tail -n 1
}

set_setting() { # NAME VALUE: replace the line or add it
  local name=$1 value=$2
  if grep -q "^[[:space:]]*${name}[[:space:]]*=" "$CONF"; then
    local tmp
    tmp=$(mktemp "$CONF.XXXXXX")
    awk -v n="$name" -v v="$value" '
      $0 ~ "^[[:space:]]*" n "[[:space:]]*=" { print n " = " v; next } { print }' "$CONF" > "$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$CONF"
  else
    printf '%s = %s\n' "$name" "$value" >> "$CONF"
  fi
}

public_address() {
  # The address this server would use to reach the internet: only a route
  # lookup, nothing is sent.
  local address
  address=$( (ip -4 route get 1.1.1.1 2>/dev/null || true) | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -n 1)
  [[ -n $address ]] || address=$( (ip -4 -o addr show scope global 2>/dev/null || true) | awk '{print $4}' | cut -d/ -f1 | head -n 1)
  printf '%s\n' "${address:-127.0.0.1}"
}

configure() {
  step "Writing the settings ($CONF) and the data folder ($DATA_DIR)"
  install -d -m 0700 "$DATA_DIR" "$CONF_DIR" "$TLS_DIR"
  chmod 0700 "$DATA_DIR"
  local host=$DOMAIN
  if [[ ! -f $CONF ]]; then
    host=${host:-$(public_address)}
    local port=${PORT:-8443}
    umask 077
    cat > "$CONF" <<EOF
# puqvpn settings: NAME = value lines.  Every setting is listed in the
# README; an environment variable PUQVPN_<NAME> overrides the file.
# Restart the panel after a change.
INSTANCE_DIR = $DATA_DIR
HOST = 0.0.0.0
PORT = $port
TLS_CERT = $TLS_DIR/panel.crt
TLS_KEY = $TLS_DIR/panel.key
PUBLIC_URL = https://$host:$port
EOF
    umask 022
    info "new settings: port $port, URL https://$host:$port"
  else
    info "keeping the existing settings"
    if [[ -n $PORT && $PORT != "$(setting PORT)" ]]; then
      set_setting PORT "$PORT"
      info "port changed to $PORT"
    fi
    if [[ -n $PORT || -n $DOMAIN ]]; then
      local url_host
      url_host=${DOMAIN:-$(setting PUBLIC_URL | sed -E 's|^https?://(\[[^]]*\]\|[^:/]*).*|\1|')}
      set_setting PUBLIC_URL "https://${url_host:-$(public_address)}:$(setting PORT)"
      info "URL is now $(setting PUBLIC_URL)"
    fi
  fi
  chmod 0600 "$CONF"
}

make_certificate() {
  step "Making the panel's TLS certificate"
  local cert key
  cert=$(setting TLS_CERT) key=$(setting TLS_KEY)
  if [[ -z $cert || -z $key ]]; then
    info "TLS_CERT/TLS_KEY are empty in $CONF: the panel serves plain HTTP (not recommended)"
    return 0
  fi
  if [[ -s $cert && -s $key ]]; then
    info "keeping the certificate $cert"
    return 0
  fi
  if [[ $cert != "$TLS_DIR/panel.crt" ]]; then
    die "TLS_CERT in $CONF names $cert, which does not exist: put your certificate there, or remove the line"
  fi
  local host san
  host=$(setting PUBLIC_URL | sed -E 's|^https?://(\[[^]]*\]\|[^:/]*).*|\1|')
  host=${host:-$(public_address)}
  if [[ $host =~ ^[0-9.]+$ ]]; then san="IP:$host,IP:127.0.0.1,DNS:localhost"; else san="DNS:$host,IP:127.0.0.1,DNS:localhost"; fi
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=$host" -addext "subjectAltName=$san" -addext "extendedKeyUsage=serverAuth" \
    -keyout "$key.tmp" -out "$cert.tmp" 2>/dev/null || die "openssl could not make the certificate"
  chmod 0600 "$key.tmp"
  mv -f "$key.tmp" "$key"
  mv -f "$cert.tmp" "$cert"
  info "self-signed for $host, valid 10 years ($cert); the browser will ask you to trust it once."
  info "To use your own: put the certificate and key there (or point TLS_CERT/TLS_KEY at them) and restart."
}

prepare_data() {
  step "Creating or upgrading the database"
  PUQVPN_CONFIG=$CONF "$VENV/bin/puqvpn" migrate | sed 's/^/    /'
  step "Creating the first admin"
  local output
  output=$(PUQVPN_CONFIG=$CONF PUQVPN_ADMIN_PASSWORD="$ADMIN_PASSWORD" "$VENV/bin/puqvpn" create-admin \
           "$ADMIN_USER" --if-no-users 2>&1) || die "could not create the admin: $output"
  CREATED_PASSWORD=$(printf '%s\n' "$output" | sed -n 's/^Password: //p')
  if [[ $output == *"exist already"* ]]; then
    info "accounts exist already: none created (forgot the password? puqvpn reset-password NAME)"
  else
    info "created the admin $ADMIN_USER"
  fi
}

# ---------------------------------------------------------------- services

install_service() {
  if has_systemd; then
    step "Installing the systemd service"
    install -m 0644 "$APP_DIR/packaging/puqvpn.service" "$UNIT_FILE"
    systemctl daemon-reload
    systemctl enable puqvpn.service >/dev/null 2>&1
    systemctl enable strongswan.service >/dev/null 2>&1 || warn "could not enable strongswan.service"
    info "puqvpn.service and strongswan.service start at boot"
  else
    step "systemd is not running (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)): no service to install"
    if [[ $NO_START == 0 ]]; then
      info "the installer starts the panel and charon itself, each under a restart loop"
    else
      info "start the panel and charon later with: sudo $APP_DIR/install.sh --start"
    fi
  fi
}

start_services() {
  if has_systemd; then
    step "Starting strongSwan and the panel"
    # Started if stopped, never restarted: that would drop every IKEv2 session.
    systemctl start strongswan.service || warn "strongswan.service did not start: IKEv2 will not work (journalctl -u strongswan)"
    # The panel restarts on the new code; the tunnels stay up (KillMode=process).
    systemctl restart puqvpn.service
  else
    step "Starting charon and the panel (no systemd)"
    mkdir -p "$RUN_DIR"
    if supervise_running charon || ! vici_answers; then
      supervise_start charon /usr/sbin/charon-systemd
    else
      info "a charon not started by the installer answers on /var/run/charon.vici: using it"
    fi
    supervise_stop panel
    supervise_start panel env PUQVPN_CONFIG="$CONF" PYTHONUNBUFFERED=1 "$VENV/bin/python" "$APP_DIR/app.py"
  fi
  wait_for_panel
}

vici_answers() { # true if some charon (ours or the system's) answers on its VICI socket
  [[ -S /var/run/charon.vici ]] || return 1
  "$VENV/bin/python" -c 'import socket; socket.socket(socket.AF_UNIX).connect("/var/run/charon.vici")' 2>/dev/null
}

wait_for_panel() {
  local port
  port=$(setting PORT)
  info "waiting for the panel to answer on port $port"
  if "$VENV/bin/python" - "$port" <<'EOF'
import ssl, sys, time, urllib.request, urllib.error
port = sys.argv[1]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE   # our own self-signed certificate
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    for scheme in ("https", "http"):
        try:
            urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/auth/login", timeout=3, context=context)
            sys.exit(0)
        except urllib.error.HTTPError:
            sys.exit(0)          # it answered
        except Exception:
            pass
    time.sleep(0.5)
sys.exit(1)
EOF
  then
    info "the panel answers"
  else
    if has_systemd; then
      die "the panel did not answer within 60 s: see journalctl -u puqvpn"
    fi
    die "the panel did not answer within 60 s: see $LOG_DIR/panel.log"
  fi
}

summary() {
  local url
  url=$(setting PUBLIC_URL)
  printf '\n'
  printf '================================================================\n'
  if [[ $NO_START == 1 ]]; then
    printf ' puqvpn is installed (not started: --no-start).\n'
  else
    printf ' puqvpn is running.\n'
  fi
  printf ' Open:      %s\n' "${url:-https://<this server>:$(setting PORT)}"
  if [[ -n ${CREATED_PASSWORD:-} ]]; then
    printf ' Username:  %s\n' "$ADMIN_USER"
    printf ' Password:  %s\n' "$CREATED_PASSWORD"
    printf ' (shown only this once)\n'
  elif [[ -n $ADMIN_PASSWORD && $UPGRADE == 0 ]]; then
    printf ' Username:  %s (with the password you gave)\n' "$ADMIN_USER"
  fi
  printf ' Admin CLI: puqvpn --help   (status, backup, restore, reset-password, import-wg)\n'
  printf ' Settings:  %s    Data: %s\n' "$CONF" "$DATA_DIR"
  if ! has_systemd && [[ $NO_START == 0 ]]; then
    printf ' No systemd: the panel and charon run under a restart loop (logs in %s).\n' "$LOG_DIR"
    printf ' They do not start by themselves after a reboot: run  sudo %s/install.sh --start\n' "$APP_DIR"
  fi
  printf '================================================================\n'
}

# --------------------------------------------------------------------- main

case $ACTION in
  uninstall|purge)
    uninstall
    exit 0 ;;
  start)
    [[ -x $VENV/bin/python && -f $CONF ]] || die "puqvpn is not installed yet: run the installer without --start"
    install_service
    start_services
    summary
    exit 0 ;;
esac

UPGRADE=0
[[ -f $CONF && -x $VENV/bin/puqvpn ]] && UPGRADE=1
if [[ $UPGRADE == 1 ]]; then
  printf 'puqvpn is installed: upgrading it (data, keys and settings are kept).\n'
else
  printf 'Installing puqvpn.\n'
fi
check_os
find_source
install_packages
install_app
install_command
configure
make_certificate
prepare_data
install_service
if [[ $NO_START == 0 ]]; then
  start_services
fi
summary
