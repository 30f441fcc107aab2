"""jobhook's receiver: intake, storage and the command line."""
