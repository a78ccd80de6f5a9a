"""The `aurora` command: one front door to the installer, pack05's plugins and pack04's launcher."""
