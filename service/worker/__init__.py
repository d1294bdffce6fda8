"""What one worker process runs: the runtime, config and hot reload, admin state, the model slot, the link to the drift process."""
