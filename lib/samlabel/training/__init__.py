"""The sam_adapter trainer: click-simulation training of SAM adapters and decoder."""
