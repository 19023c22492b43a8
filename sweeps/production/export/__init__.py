"""`sweep export`: an adapter merged into its base, written as a standalone model (and as GGUF for llama.cpp)."""
