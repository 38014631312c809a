#!/usr/bin/env bash
# Two throwaway ssh test hosts on this machine for `cargo xtask test --host test-a --host
# test-b` (ci/hosts.toml): each has its own user, home folder, host key and sshd, listening on
# its own loopback address only (test-a on 127.0.0.2, test-b on 127.0.0.3, port 2222). Needs
# root; installs openssh-server and rsync with apt-get when they are missing.
#
#   ci/test-hosts.sh start         start both (again: starts those that are stopped)
#   ci/test-hosts.sh stop [NAME]   stop both, or one (the host becomes unreachable)
#   ci/test-hosts.sh kill NAME     stop one and end every process of its user (a host dying)
#
# Keys, configs and logs live in target/test-hosts/; target/test-hosts/ssh_config is the ssh
# configuration ci/hosts.toml points at.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
state="$root/target/test-hosts"
port=2222
declare -A address=([test-a]=127.0.0.2 [test-b]=127.0.0.3)

user_of() { echo "rbee-$1"; }

install_tools() {
  if command -v /usr/sbin/sshd > /dev/null && command -v ssh > /dev/null && command -v rsync > /dev/null; then
    return
  fi
  echo "test-hosts: installing openssh-server, openssh-client and rsync"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq openssh-server openssh-client rsync > /dev/null
}

start_host() {
  local name="$1" addr="${address[$1]}" user
  user="$(user_of "$1")"
  local dir="$state/$name"
  mkdir -p "$dir"
  if ! id "$user" > /dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
  fi
  # Unlocked but without a password: only the key logs in.
  usermod -p '*' "$user"
  local home
  home="$(getent passwd "$user" | cut -d: -f6)"
  install -d -m 700 -o "$user" "$home/.ssh"
  install -m 600 -o "$user" "$state/client_key.pub" "$home/.ssh/authorized_keys"
  [ -f "$dir/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$dir/host_key"
  cat > "$dir/sshd_config" <<EOF
ListenAddress $addr:$port
HostKey $dir/host_key
PidFile $dir/sshd.pid
AllowUsers $user
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
StrictModes no
EOF
  if [ -f "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid")" 2> /dev/null; then
    return
  fi
  /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
  # sshd writes its pid file once it listens; it goes to the background before that.
  for _ in $(seq 20); do
    [ -f "$dir/sshd.pid" ] && return
    sleep 0.1
  done
  echo "test-hosts: sshd for $name did not start: $(tail -n 1 "$dir/sshd.log")" >&2
  exit 1
}

write_client_config() {
  : > "$state/known_hosts"
  : > "$state/ssh_config"
  for name in "${!address[@]}"; do
    echo "[${address[$name]}]:$port $(cut -d' ' -f1,2 "$state/$name/host_key.pub")" >> "$state/known_hosts"
    cat >> "$state/ssh_config" <<EOF
Host $name
  HostName ${address[$name]}
  Port $port
  User $(user_of "$name")
  IdentityFile $state/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $state/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5

EOF
  done
}

stop_host() {
  local pid_file="$state/$1/sshd.pid"
  if [ -f "$pid_file" ]; then
    kill "$(cat "$pid_file")" 2> /dev/null || true
    rm -f "$pid_file"
  fi
}

check_name() {
  [ -n "${address[$1]:-}" ] || { echo "test-hosts: no host '$1' (test-a, test-b)" >&2; exit 2; }
}

case "${1:-}" in
  start)
    install_tools
    mkdir -p "$state" /run/sshd
    [ -f "$state/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C client -f "$state/client_key"
    for name in "${!address[@]}"; do start_host "$name"; done
    write_client_config
    for name in "${!address[@]}"; do
      for _ in $(seq 50); do
        ssh -F "$state/ssh_config" "$name" true 2> /dev/null && continue 2
        sleep 0.2
      done
      echo "test-hosts: $name does not answer; see $state/$name/sshd.log" >&2
      exit 1
    done
    echo "test-hosts: test-a (127.0.0.2:$port) and test-b (127.0.0.3:$port) are up"
    ;;
  stop)
    if [ -n "${2:-}" ]; then
      check_name "$2"
      stop_host "$2"
    else
      for name in "${!address[@]}"; do stop_host "$name"; done
    fi
    ;;
  kill)
    check_name "${2:-}"
    stop_host "$2"
    pkill -KILL -u "$(user_of "$2")" || true
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d'
    exit 2
    ;;
esac
