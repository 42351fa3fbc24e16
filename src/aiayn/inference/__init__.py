"""Stage 4, inference: search over a step function, packed and int8 layers, the fused step, Translator."""
