"""Training orchestration, callbacks and checkpointing."""
