"""Banana bot: a Discord image bot backed by Gemini 3.1 Flash Image."""
