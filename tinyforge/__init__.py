"""The `tinyforge` console command (engine and service subcommands)."""
