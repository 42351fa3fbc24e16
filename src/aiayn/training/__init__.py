"""Stage 3, training: loss, schedule, precision, the update, checkpoints, the loop (§5)."""
