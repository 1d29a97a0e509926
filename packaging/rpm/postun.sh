# tunnelize: on an upgrade ($1 is 1 or more), restart the running daemons onto the new
# binaries; on erase, the runtime directory of the stopped daemons goes.
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || :
  if [ "$1" -ge 1 ] 2>/dev/null; then
    systemctl try-restart tunnelize-hub.service tunnelize-tunnel.service 'tunnelize-tunnel@*.service' || :
  fi
fi
if [ "$1" = 0 ]; then
  rm -rf /run/tunnelize
fi
