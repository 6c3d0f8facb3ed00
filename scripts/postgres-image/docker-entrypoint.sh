#!/usr/bin/env bash
# Entrypoint of the postgres images (18 from the server wheel, 15 from Debian's packages) that
# scripts/container-engine.sh builds on machines that reach no image registry. It follows the official postgres
# image's documented contract, so docker-compose.dev.yml and seeds/scripts/init-db.sh behave the same with these
# images as with the official ones:
#   - POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_USER (postgres),
#     POSTGRES_DB (= POSTGRES_USER), POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (scram-sha-256), PGDATA
#     (the image's default: /var/lib/postgresql/data up to 17, /var/lib/postgresql/<major>/docker from 18);
#   - from 18, with the default PGDATA and no cluster in it, it refuses to start (exit 1) when it finds a cluster
#     of the old layout (/var/lib/postgresql, /var/lib/postgresql/data, /var/lib/postgresql/*/docker) or a
#     mount at /var/lib/postgresql/data ("unused mount/volume"): the volume belongs at /var/lib/postgresql;
#   - started as root it prepares the folders and drops to the image's postgres account; started with an
#     arbitrary --user it runs as that uid (initdb gets a passwd entry through nss_wrapper);
#   - on the first start (no PG_VERSION in PGDATA) it runs initdb (UTF8), starts a server on the unix socket
#     only, creates POSTGRES_DB, runs /docker-entrypoint-initdb.d/*.sh (executable: run; else sourced) and
#     *.sql / *.sql.gz with psql in file name order, stops that server, and only then starts the real one.
# A failing init file stops the container with its exit code, like the official image.
set -Eeuo pipefail

log() {
    printf 'entrypoint: %s\n' "$*" >&2
}

if [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi
if [ "$1" != 'postgres' ]; then
    exec "$@"
fi

export PGDATA=${PGDATA:-/var/lib/postgresql/data}
pg_major=${PG_MAJOR:-0}
export POSTGRES_USER=${POSTGRES_USER:-postgres}
export POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}

mkdir -p "$PGDATA"
chmod 00700 "$PGDATA" || :
mkdir -p /var/run/postgresql || :
chmod 03775 /var/run/postgresql || :

if [ "$(id -u)" = '0' ]; then
    # Postgres refuses root: hand the folders to the image's account and start again as it.
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    find /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

psql_init() {
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

# From 18 the default PGDATA is a folder per major under the volume; data of the old layout, or a volume still
# mounted where the old layout had it, would be silently ignored, so the official image refuses to start.
old_layout=()
if [ ! -s "$PGDATA/PG_VERSION" ] && [ "$pg_major" -ge 18 ] && [ "$PGDATA" = "/var/lib/postgresql/$pg_major/docker" ]; then
    for folder in /var/lib/postgresql /var/lib/postgresql/data /var/lib/postgresql/*/docker; do
        if [ -s "$folder/PG_VERSION" ]; then
            old_layout+=("$folder")
        fi
    done
    if [ "${#old_layout[@]}" -eq 0 ] && mountpoint -q /var/lib/postgresql/data; then
        old_layout+=("/var/lib/postgresql/data (unused mount/volume)")
    fi
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ "${#old_layout[@]}" -gt 0 ]; then
        log "Error: from PostgreSQL 18 this image keeps its data in $PGDATA (a folder per major, as pg_ctlcluster does), but there appears to be PostgreSQL data in: ${old_layout[*]}. Mount the data volume at /var/lib/postgresql (not /var/lib/postgresql/data), or upgrade the old cluster with pg_upgrade."
        exit 1
    fi
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != 'trust' ]; then
        log "Database is uninitialized and superuser password is not specified. Set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password)."
        exit 1
    fi
    if ! getent passwd "$(id -u)" >/dev/null; then
        # An arbitrary --user has no account here, and initdb wants one.
        wrapper=$(find /usr/lib -name libnss_wrapper.so -print -quit)
        NSS_WRAPPER_PASSWD=$(mktemp)
        NSS_WRAPPER_GROUP=$(mktemp)
        printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$(id -u)" "$(id -g)" "$PGDATA" >"$NSS_WRAPPER_PASSWD"
        printf 'postgres:x:%s:\n' "$(id -g)" >"$NSS_WRAPPER_GROUP"
        export NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP LD_PRELOAD=$wrapper
    fi
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments, as in the official image
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 ${POSTGRES_INITDB_ARGS:-}
    rm -f "$pwfile"
    if [ -n "${LD_PRELOAD:-}" ]; then
        rm -f "$NSS_WRAPPER_PASSWD" "$NSS_WRAPPER_GROUP"
        unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
    fi
    printf '\nhost all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"

    # The init files talk to a server that listens on its unix socket only, so nothing outside sees a
    # half-initialised database (a TCP health check stays unhealthy until the real server starts).
    export PGUSER=$POSTGRES_USER PGPASSWORD=${POSTGRES_PASSWORD:-}
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
    if [ "$POSTGRES_DB" != 'postgres' ]; then
        psql_init --dbname postgres --set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db";
		EOSQL
    fi
    for file in /docker-entrypoint-initdb.d/*; do
        case $file in
            *.sh)
                if [ -x "$file" ]; then
                    log "running $file"
                    "$file"
                else
                    log "sourcing $file"
                    # shellcheck disable=SC1090
                    . "$file"
                fi
                ;;
            *.sql)
                log "running $file"
                psql_init --dbname "$POSTGRES_DB" -f "$file"
                ;;
            *.sql.gz)
                log "running $file"
                gunzip -c "$file" | psql_init --dbname "$POSTGRES_DB"
                ;;
            *)
                if [ -e "$file" ]; then log "ignoring $file"; fi
                ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD
    log "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
