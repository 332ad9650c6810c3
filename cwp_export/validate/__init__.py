"""On-device validation (DESIGN.md section 5): run exported GGUF files in llama-cpp-python and
score bias and safety per language, side by side with the reference and a plain quantization."""
