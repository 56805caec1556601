"""The shipped Hydra configs (found through ``pkg://metaseg_pgn.conf``, also from a wheel)."""
