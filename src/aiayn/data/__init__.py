"""Stage 1, the data: corpus checks, readers, tokenizer, batches."""
