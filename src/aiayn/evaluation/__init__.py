"""Stage 5, evaluation: metrics, decoding tuned on valid, pictures."""
