#!/bin/sh
# Freeze an application server's filesystem (over ssh) around kura's own freeze, so that
# what it has written to kura and its local state agree (the literal KCPS pattern). Use
# the same script for both phases; the thaw always runs, even after a failed snapshot.
#   [volume.app]
#   pre_freeze = "scripts/hooks/fsfreeze-app.sh"
#   post_thaw = "scripts/hooks/fsfreeze-app.sh"
#   freeze_limit_secs = 10
# env: APP_HOST (ssh target, default app1), APP_FS (mount point, default /srv/data)
set -eu
host=${APP_HOST:-app1}
fs=${APP_FS:-/srv/data}
case "$KURA_PHASE" in
  pre-freeze)
    # fsfreeze -f flushes and blocks writers on the application server. If ssh dies
    # halfway the filesystem stays frozen there, so give the thaw a watchdog too.
    ssh -o BatchMode=yes -o ConnectTimeout=10 "$host" \
      "sync -f '$fs' && fsfreeze -f '$fs' && { nohup sh -c 'sleep 60; fsfreeze -u $fs' >/dev/null 2>&1 & }"
    echo "froze $host:$fs" ;;
  post-thaw)
    ssh -o BatchMode=yes -o ConnectTimeout=10 "$host" "fsfreeze -u '$fs' 2>/dev/null || true"
    echo "thawed $host:$fs ($KURA_RESULT)" ;;
esac
