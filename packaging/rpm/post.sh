# tunnelize: create the system user and its directories, make systemd see the units.
if command -v systemd-sysusers >/dev/null 2>&1; then
  systemd-sysusers tunnelize.conf
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
  systemd-tmpfiles --create tunnelize.conf || :
fi
# The configuration holds keys: readable by root and the daemons' group only. rpm writes the
# directory and a new config file as root:root; an operator's own choice is left as it is.
for path in /etc/tunnelize /etc/tunnelize/hub.toml /etc/tunnelize/tunnel.toml; do
  if [ -e "$path" ] && [ "$(stat -c %g "$path")" = 0 ]; then
    chgrp tunnelize "$path" || :
    if [ -d "$path" ]; then chmod 0750 "$path"; else chmod 0640 "$path"; fi
  fi
done
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || :
fi
