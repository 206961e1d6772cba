"""Ways in: the terminal REPL and the Telegram bot. Adapters know channels, not models."""
