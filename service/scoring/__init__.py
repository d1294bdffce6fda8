"""Answering rows: the guarded pipeline, the router, the model behind its protocol, its call under a deadline."""
