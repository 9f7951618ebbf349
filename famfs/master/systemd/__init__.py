"""The systemd units famfsctl install-units writes (package data: *.service)."""
