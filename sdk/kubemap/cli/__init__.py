"""The `kubemap` command."""
