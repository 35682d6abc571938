"""Personas: the YAML persona catalog, the llama.cpp inference engine, and (later) the
router and adapter lookups. May import `memory` for the embedder only."""
