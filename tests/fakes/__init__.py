"""Loopback doubles of the outside world (Gemini, Discord) speaking the real wire formats."""
