"""Configuration files shipped with the platform: defaults (utp.yaml), the demo, the systemd unit."""
