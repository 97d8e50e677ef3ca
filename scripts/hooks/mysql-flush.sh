#!/bin/sh
# Pre-freeze hook: make a MySQL/MariaDB server (over ssh) write its tables and binary
# log out before the freeze: FLUSH TABLES flushes, FLUSH BINARY LOGS closes the current
# binlog so that the file kura snapshots is complete. Holds no lock afterwards (a read
# lock would end with the ssh session anyway), so there is no post-thaw half.
#   [volume.mysql]
#   pre_freeze = "scripts/hooks/mysql-flush.sh"
# env: MYSQL_HOST (ssh target, default db1)
set -eu
ssh -o BatchMode=yes -o ConnectTimeout=10 "${MYSQL_HOST:-db1}" \
  "mysql -e 'FLUSH TABLES; FLUSH BINARY LOGS;'"
echo "flushed ${MYSQL_HOST:-db1} before $KURA_VOLUME@$KURA_SNAPSHOT"
