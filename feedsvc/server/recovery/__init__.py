"""Gap recovery: the window of recent frames per symbol and the handler answering requests
for missed ranges (docs/recovery-protocol.md)."""
