"""`sweep serve`: the engine (one base, many adapters, micro-batched mixed-adapter forwards) and its HTTP app."""
