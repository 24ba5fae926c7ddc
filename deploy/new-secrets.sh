#!/bin/sh
# Writes the secrets that compose.yaml reads, with fresh random values: postgres.env (the database
# password) and opampd.env (the database URL with that password, an admin API key and a collector
# token). Usage: sh deploy/new-secrets.sh [DIR] (default: the directory of compose.yaml). It never
# overwrites an existing file, so running it twice keeps the first secrets.
set -eu
dir=${1:-$(dirname "$0")/..}
random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
for f in postgres.env opampd.env; do
  if [ -e "$dir/$f" ]; then
    echo "new-secrets: $dir/$f exists; remove it to make new secrets" >&2
    exit 1
  fi
done
password=$(random)
umask 077
printf 'POSTGRES_PASSWORD=%s\n' "$password" >"$dir/postgres.env"
cat >"$dir/opampd.env" <<END
OPAMPD_DATABASE__URL=postgres://opampd:$password@postgres:5432/opampd
OPAMPD_API__KEYS=[{name="ops",key="$(random)",role="admin"}]
OPAMPD_OPAMP__AUTH__TOKENS=["$(random)"]
END
echo "new-secrets: wrote $dir/postgres.env and $dir/opampd.env"
