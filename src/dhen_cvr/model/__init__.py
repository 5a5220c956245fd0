"""Model: feature tokens, sequence encoders, crossing modules, DHEN backbone, heads."""
