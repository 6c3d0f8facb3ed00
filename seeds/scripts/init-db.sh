#!/bin/sh
# Restore the latest pytest-dbsnap dump of $DBSNAP_ENV into $POSTGRES_DB on the first start of the official
# postgres image, which runs /docker-entrypoint-initdb.d/* once, on an empty data volume, while a temporary
# server listens on its unix socket only. Mounted by docker-compose.dev.yml; see seeds/README.md.
#
# Store layout: $DBSNAP_DUMPS_DIR/<env>/<name>.dump, <name>.json (metadata with "sha256" and "size_bytes") and
# <env>/latest (the name). Only what the image ships is used: POSIX sh, coreutils, sed, grep, awk, pg_restore and
# psql.
# A dump that cannot be verified is refused before the database is touched, and the restore runs in one
# transaction, so the database ends up restored or empty, never half-restored.
#
# `init-db.sh stage DEST` (the `dumps` service of docker-compose.dev.yml, as root) only picks the dump the same
# way and copies it, its metadata and a `latest` pointer into DEST/<env>/, owned by the server's account
# ($DBSNAP_DUMPS_OWNER, default postgres) and private to it: the store writes its files 0600, and the server
# runs as its own account, which could not read them where they are (e.g. when they belong to root).
set -eu
# Byte-wise globs and character ranges, whatever locale the image sets.
LC_ALL=C
export LC_ALL

mode=restore
if [ "${1:-}" = stage ]; then
    mode=stage
    stage_dir=${2:?usage: init-db.sh stage DEST}
fi
dumps_dir=${DBSNAP_DUMPS_DIR:-/dumps}
env_name=${DBSNAP_ENV:-dev}
db_user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$db_user}

log() {
    printf 'init-db: %s\n' "$*"
}

# The image marks the volume as initialised even when this script fails, hence "down -v" in the advice.
refuse() {
    printf 'init-db: refusing to restore: %s. Nothing was restored; fix this, then run "docker compose -f docker-compose.dev.yml down -v" and start again (without -v the next start skips this script and serves an empty database).\n' "$1" >&2
    exit 1
}

# The same names the dump store accepts: no '/', and no leading '.' (so no '..') or '-'.
is_plain_name() {
    case $1 in
        '' | [!A-Za-z0-9]* | *[!A-Za-z0-9_.-]*) return 1 ;;
    esac
    return 0
}

refuse_unreadable() {
    refuse "cannot read $1 as uid $(id -u) (it belongs to uid $(stat -c %u "$1"), mode $(stat -c %a "$1")): with docker-compose.dev.yml the dumps service stages the chosen dump for the server's account, so mount the dumps volume it fills at $dumps_dir; a server run by hand must run as the files' owner"
}

# The distinct values of "key": VALUE in the metadata, where VALUE matches the pattern. DumpMeta writes one
# key per line, but a nested map may hold a key of the same name: callers refuse anything but one value.
json_values() {
    grep -o "\"$1\"[[:space:]]*:[[:space:]]*$2" "$meta" | sed "s/^\"$1\"[[:space:]]*:[[:space:]]*//; s/\"//g" | sort -u
}

if ! is_plain_name "$env_name"; then
    refuse "DBSNAP_ENV='$env_name' is not a plain environment name (letters, digits, '_', '-', '.'; no '/', no leading '.'): it names one folder of $dumps_dir"
fi
env_dir=$dumps_dir/$env_name
# A folder we cannot list would look like "no dump" and start an empty database without a word.
for folder in "$dumps_dir" "$env_dir"; do
    if [ -d "$folder" ] && { [ ! -r "$folder" ] || [ ! -x "$folder" ]; }; then
        refuse_unreadable "$folder"
    fi
done

# Which dump: the one `latest` names, else the last metadata file by name (names start with their UTC time),
# as the plugin and the dbsnap command choose.
if [ -f "$env_dir/latest" ]; then
    [ -r "$env_dir/latest" ] || refuse_unreadable "$env_dir/latest"
    name=$(sed -n '1{s/^[[:space:]]*//; s/[[:space:]]*$//; p;}' "$env_dir/latest")
    chosen_by="$env_dir/latest"
    if ! is_plain_name "$name"; then
        refuse "$env_dir/latest holds '$name', which is not a dump name; write the name of a dump of $env_dir into it, or remove it to use the newest dump"
    fi
else
    name=
    for candidate in "$env_dir"/*.json; do
        [ -f "$candidate" ] || continue
        candidate=${candidate##*/}
        name=${candidate%.json}
    done
    if [ -z "$name" ]; then
        for orphan in "$env_dir"/*.dump; do
            [ -f "$orphan" ] || continue
            log "ignoring $orphan: it has no metadata (wrap it with: dbsnap import FILE --env $env_name)"
        done
        if [ "$mode" = stage ]; then
            rm -rf "${stage_dir:?}/$env_name"
            log "no dump for environment $env_name in $dumps_dir; nothing to stage"
        else
            log "no dump for environment $env_name in $dumps_dir; leaving the empty database for migrations"
        fi
        exit 0
    fi
    chosen_by="the newest metadata file (there is no $env_dir/latest)"
fi

dump=$env_dir/$name.dump
meta=$env_dir/$name.json
if [ ! -f "$meta" ]; then
    refuse "the metadata $meta of dump $name (chosen by $chosen_by) is missing, and a dump without it cannot be verified; regenerate the dump (dbsnap generate --env $env_name) or wrap the file with dbsnap import"
fi
[ -r "$meta" ] || refuse_unreadable "$meta"
if [ ! -f "$dump" ]; then
    refuse "the dump file $dump is missing although its metadata $meta exists; copy it again or regenerate it (dbsnap generate --env $env_name)"
fi
[ -r "$dump" ] || refuse_unreadable "$dump"

if [ "$mode" = stage ]; then
    # The copy is checked when it is restored; here only what the server needs is handed over, privately.
    owner=${DBSNAP_DUMPS_OWNER:-postgres}
    target=$stage_dir/$env_name
    rm -rf "${stage_dir:?}/$env_name"
    umask 077
    mkdir -p "$target"
    cp "$dump" "$target/$name.dump.part"
    mv "$target/$name.dump.part" "$target/$name.dump"
    cp "$meta" "$target/$name.json"
    printf '%s\n' "$name" >"$target/latest"
    chown -R "$owner:$owner" "$stage_dir"
    chmod 0700 "$stage_dir"
    log "staged dump $name of environment $env_name (chosen by $chosen_by) for $owner in $target"
    exit 0
fi

expected_sha=$(json_values sha256 '"[0-9a-f]*"')
expected_size=$(json_values size_bytes '[0-9][0-9]*')
case $expected_sha in
    *[!0-9a-f]* | '') refuse "the metadata $meta has no single valid \"sha256\" (expected 64 hex digits), so $dump cannot be verified; regenerate the dump (dbsnap generate --env $env_name) or re-import it (dbsnap import)" ;;
esac
if [ "${#expected_sha}" -ne 64 ]; then
    refuse "the metadata $meta has no single valid \"sha256\" (expected 64 hex digits, got '$expected_sha'), so $dump cannot be verified; regenerate the dump (dbsnap generate --env $env_name) or re-import it (dbsnap import)"
fi
case $expected_size in
    *[!0-9]* | '') refuse "the metadata $meta has no single valid \"size_bytes\", so $dump cannot be verified; regenerate the dump (dbsnap generate --env $env_name) or re-import it (dbsnap import)" ;;
esac

# A newer pg_dump writes archives an older pg_restore cannot read: say so before anything else (the same check
# as check_readable in pytest_dbsnap/dumps/restore.py, for this image's pg_restore).
dumped_by=$(json_values pg_dump_version '"[^"]*"')
restorer_version=$(pg_restore --version | sed -n 's/^[^0-9]*\([0-9][0-9.]*\).*/\1/p')
restorer=${restorer_version%%.*}
dumped_major=${dumped_by%%[!0-9]*}
if [ -n "$dumped_major" ] && [ -n "$restorer" ] && [ "$dumped_major" -gt "$restorer" ] 2>/dev/null; then
    refuse "the dump $env_name/$name ($dump) was written by pg_dump $dumped_by, and the pg_restore of this image is PostgreSQL $restorer_version, which cannot read archives of a newer pg_dump; use an image of PostgreSQL $dumped_major or newer (postgres:$dumped_major) for the dumps and postgres services in docker-compose.dev.yml, or make a dump this image can read (dbsnap generate --env $env_name with PostgreSQL $restorer)"
fi

# Size first: a truncated copy is refused without reading it whole.
actual_size=$(wc -c <"$dump" | tr -d ' ')
if [ "$actual_size" != "$expected_size" ]; then
    refuse "the dump $dump has $actual_size bytes but its metadata $meta records $expected_size: the file is truncated or was replaced; copy it again or regenerate it (dbsnap generate --env $env_name)"
fi
actual_sha=$(sha256sum <"$dump" | sed 's/[[:space:]].*//')
if [ "$actual_sha" != "$expected_sha" ]; then
    refuse "the dump $dump does not match the sha256 in its metadata $meta (expected $expected_sha, got $actual_sha): the file is corrupt; copy it again or regenerate it (dbsnap generate --env $env_name)"
fi

schema_version=$(json_values schema_version '"[^"]*"')
created_at=$(json_values created_at '"[^"]*"')
log "restoring dump $name of environment $env_name (chosen by $chosen_by; $actual_size bytes, sha256 verified) into database $database"
# Row-level security policies that name roles this server lacks (a dump of staging or prod: Supabase's
# `authenticated`, an app's reader) would stop the restore: they are left out and named, as pytest-dbsnap's own
# restores do (pytest_dbsnap/dumps/policies.py). Their roles are read from the post-data SQL, where each
# CREATE POLICY follows the "-- TOC entry N" comment of its entry.
listing=$(mktemp)
trap 'rm -f "$listing" "$listing.kept"' EXIT
pg_restore -l "$dump" >"$listing" || refuse "pg_restore cannot read the table of contents of $dump (its error is above); copy it again or regenerate it (dbsnap generate --env $env_name)"
only=
if grep -q '^[0-9]*; [0-9]* [0-9]* POLICY ' "$listing"; then
    roles=$(psql -X -A -t -U "$db_user" -d "$database" -c 'SELECT rolname FROM pg_roles') || refuse "psql could not list the roles of this server (its error is above)"
    absent=$(pg_restore --schema-only --section=post-data --verbose -f - "$dump" 2>/dev/null | awk -v roles="$roles" '
        BEGIN { n = split(roles, r, "\n"); for (i = 1; i <= n; i++) have[r[i]] = 1
                id = "(\"([^\"]|\"\")*\"|[^ \".,;()]+)" }
        /^-- TOC entry [0-9]+ / { entry = $4; next }
        /^CREATE POLICY / && entry != "" {
            if (!match($0, "^CREATE POLICY " id " ON " id "[.]" id "( AS [A-Za-z]+)?( FOR [A-Za-z]+)? TO ")) next
            rest = substr($0, RSTART + RLENGTH); missing = 0
            while (match(rest, "^" id)) {
                role = substr(rest, 1, RLENGTH); rest = substr(rest, RLENGTH + 1)
                if (role ~ /^"/) { role = substr(role, 2, length(role) - 2); gsub(/""/, "\"", role) }
                else if (role == "PUBLIC") role = ""
                if (role != "" && !(role in have)) missing = 1
                if (substr(rest, 1, 2) != ", ") break
                rest = substr(rest, 3)
            }
            if (missing) print entry
            entry = ""
        }')
    if [ -n "$absent" ]; then
        awk -v drop="$absent" 'BEGIN { n = split(drop, d, "\n"); for (i = 1; i <= n; i++) skip[d[i] ";"] = 1 }
            !($1 in skip && $4 == "POLICY")' "$listing" >"$listing.kept"
        named=$(printf '%s\n' "$absent" | while read -r entry; do sed -n "s/^$entry; [0-9]* [0-9]* POLICY \(.*\) [^ ]*$/\1/p" "$listing"; done | paste -sd ';' -)
        log "leaving out the row-level security policies $named (schema, table, policy): they name roles this server does not have"
        only=$listing.kept
    fi
fi
# One transaction: if any statement fails, nothing of the dump stays behind.
if ! pg_restore --no-owner --no-acl --exit-on-error --single-transaction ${only:+-L "$only"} -d "$database" -U "$db_user" "$dump"; then
    refuse "pg_restore could not restore $dump into database $database (its error is above); it ran in one transaction, so the database is left as it was, empty on a first start"
fi
log "restored dump $name of environment $env_name into database $database: $actual_size bytes, sha256 $(printf '%.16s' "$actual_sha")..., schema version ${schema_version:-unknown}, created ${created_at:-unknown}"
