"""Stage redteam's library: the attacks (attacks), exact ground-truth scoring with bootstrap
intervals (scoring) and the one batched generation pass over every attack (run)."""
