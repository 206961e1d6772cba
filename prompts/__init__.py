"""Prompt files (Markdown) the language model reads; loaded with :func:`assistant.prompts.load`."""
