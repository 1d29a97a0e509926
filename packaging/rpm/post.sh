# tunnelize: create the system user and its directories, make systemd see the units.
if command -v systemd-sysusers >/dev/null 2>&1; then
  systemd-sysusers tunnelize.conf
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
  systemd-tmpfiles --create tunnelize.conf || :
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || :
fi
