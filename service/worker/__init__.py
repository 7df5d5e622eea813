"""Workers: claim queued jobs with leases and run their stages through launchers."""
