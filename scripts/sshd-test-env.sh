#!/usr/bin/env bash
# Prepares this machine for tests/ssh_loopback.rs (the SSH layer against a real OpenSSH server).
#
# Idempotent. Needs root. What it does:
#   - installs `openssh-server` and `sudo` with apt-get when /usr/sbin/sshd or sudo is missing
#     (one `apt-get update` first);
#   - creates the test user `dstack-test` (bash shell, home dir, passwordless sudo), the test
#     user `dstack-nosudo` (bash shell, home dir, no sudo) and `ubuntu` (passwordless sudo: the
#     default user of the emulated cloud VMs);
#   - creates /run/sshd (sshd's privilege-separation directory).
#
# It does not start sshd: each test starts its own instance on a free loopback port with its own
# config, host key and authorized keys in a temp dir, and kills it when done.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "sshd-test-env.sh: must run as root (installs packages and creates users)" >&2
    exit 1
fi

need_pkgs=()
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v sudo >/dev/null 2>&1 || need_pkgs+=(sudo)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "sshd-test-env.sh: installing ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends keeps it small; policy-rc.d stops the package from starting a
    # system-wide sshd on port 22 where the init system would allow it.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    if [ "$created_policy" = 1 ]; then
        rm -f "$policy"
    fi
fi

mkdir -p /run/sshd
chmod 755 /run/sshd

ensure_user() {
    local user="$1"
    if ! id "$user" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash "$user"
    fi
    # sshd refuses accounts that are locked ("!" in shadow) even for key auth when UsePAM is
    # off; "*" means "no password" without locking.
    usermod -p '*' "$user"
    local home
    home="$(getent passwd "$user" | cut -d: -f6)"
    mkdir -p "$home"
    chown "$user:" "$home"
}

ensure_user dstack-test
ensure_user dstack-nosudo
# `ubuntu`: the default user of the emulated cloud VMs (tests/oracle/test_cli_cloud_aws.py).
ensure_user ubuntu

sudoers=/etc/sudoers.d/dstack-test
if [ ! -f "$sudoers" ] || ! grep -q NOPASSWD "$sudoers"; then
    printf 'dstack-test ALL=(ALL) NOPASSWD:ALL\n' >"$sudoers.tmp"
    chmod 440 "$sudoers.tmp"
    mv "$sudoers.tmp" "$sudoers"
fi
sudoers_vm=/etc/sudoers.d/dstack-test-ubuntu
if [ ! -f "$sudoers_vm" ]; then
    printf 'ubuntu ALL=(ALL) NOPASSWD:ALL\n' >"$sudoers_vm.tmp"
    chmod 440 "$sudoers_vm.tmp"
    mv "$sudoers_vm.tmp" "$sudoers_vm"
fi
# dstack-nosudo must not be able to sudo.
rm -f /etc/sudoers.d/dstack-nosudo
if id -nG dstack-nosudo | tr ' ' '\n' | grep -qx sudo; then
    gpasswd -d dstack-nosudo sudo >/dev/null
fi

echo "sshd-test-env.sh: ready ($(/usr/sbin/sshd -V 2>&1 | head -n1 || true))" >&2
