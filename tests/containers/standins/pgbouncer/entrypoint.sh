#!/bin/sh
# Write /etc/pgbouncer/pgbouncer.ini and userlist.txt from the environment, then run PgBouncer.
#   DATABASE_URL  postgres://user:password@host:port/dbname (required)
#   POOL_MODE, AUTH_TYPE, MAX_CLIENT_CONN, DEFAULT_POOL_SIZE, IGNORE_STARTUP_PARAMETERS,
#   LISTEN_PORT (5432)
set -eu

url=${DATABASE_URL:?pgbouncer stand-in: DATABASE_URL is not set}
rest=${url#*://}
credentials=${rest%%@*}
location=${rest#*@}
user=${credentials%%:*}
password=${credentials#*:}
address=${location%%/*}
dbname=${location#*/}
dbname=${dbname%%\?*}
host=${address%%:*}
port=5432
case $address in *:*) port=${address#*:} ;; esac
if [ "$credentials" = "$rest" ] || [ "$password" = "$credentials" ]; then
  echo "pgbouncer stand-in: DATABASE_URL must name a user and a password" >&2
  exit 1
fi

config=/etc/pgbouncer
# scram-sha-256 and plain need the password itself; md5 takes its hash.
secret=$password
if [ "${AUTH_TYPE:-md5}" = md5 ]; then
  secret=md5$(printf '%s%s' "$password" "$user" | md5sum | cut -d' ' -f1)
fi
printf '"%s" "%s"\n' "$user" "$secret" >"$config/userlist.txt"
cat >"$config/pgbouncer.ini" <<INI
[databases]
$dbname = host=$host port=$port
[pgbouncer]
listen_addr = 0.0.0.0
listen_port = ${LISTEN_PORT:-5432}
unix_socket_dir =
auth_type = ${AUTH_TYPE:-md5}
auth_file = $config/userlist.txt
pool_mode = ${POOL_MODE:-session}
max_client_conn = ${MAX_CLIENT_CONN:-100}
default_pool_size = ${DEFAULT_POOL_SIZE:-20}
ignore_startup_parameters = ${IGNORE_STARTUP_PARAMETERS:-extra_float_digits}
admin_users = $user
INI
echo "pgbouncer stand-in: $dbname -> $host:$port, pool_mode ${POOL_MODE:-session}" >&2
exec "$@"
