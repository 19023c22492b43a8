"""Base models: resolved, converted, loaded (quantized with bitsandbytes), measured. The only folder importing
bitsandbytes."""
