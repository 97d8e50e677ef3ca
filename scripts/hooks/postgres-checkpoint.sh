#!/bin/sh
# Pre-freeze hook: ask a PostgreSQL server (reached over ssh) for a CHECKPOINT, so that
# a base backup or WAL archive written to kura is as complete as it gets before the
# freeze. Nothing is held on the server afterwards, so there is no post-thaw half.
#   [volume.pg]
#   pre_freeze = "scripts/hooks/postgres-checkpoint.sh"
# env: PG_HOST (ssh target, default db1), PG_USER (default postgres)
set -eu
ssh -o BatchMode=yes -o ConnectTimeout=10 "${PG_HOST:-db1}" \
  "psql -U '${PG_USER:-postgres}' -X -q -c CHECKPOINT"
echo "checkpoint on ${PG_HOST:-db1} before $KURA_VOLUME@$KURA_SNAPSHOT"
