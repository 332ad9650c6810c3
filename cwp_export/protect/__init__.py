"""Protection made loadable by llama.cpp (DESIGN.md section 4): mixed per-tensor types,
importance-weighted rounding and outlier tensors written as a LoRA adapter."""
