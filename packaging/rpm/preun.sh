# tunnelize: stop the daemons on erase (not on upgrade: $1 is 0 only on erase).
if [ "$1" = 0 ] && [ -d /run/systemd/system ]; then
  systemctl stop tunnelize-hub.service tunnelize-tunnel.service 'tunnelize-tunnel@*.service' || :
fi
