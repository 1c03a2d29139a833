#!/bin/sh
# Stand-in for `minio server DIR [--address :PORT]`: moto's S3 server on that port (9000).
# It keeps objects in memory, not in DIR, and accepts any keys.
set -eu
if [ "${1:-}" != server ]; then
  echo "minio stand-in: only 'minio server DIR' is supported, got: $*" >&2
  exit 2
fi
shift
port=9000
while [ $# -gt 0 ]; do
  case $1 in
    --address) port=${2##*:}; shift 2 ;;
    --address=*) port=${1##*:}; shift ;;
    *) shift ;;
  esac
done
exec /opt/moto/bin/moto_server -H 0.0.0.0 -p "$port"
