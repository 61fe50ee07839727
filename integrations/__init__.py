"""Integrations: LangChain v1 agent middleware (and, later, an OpenAI-compatible front)."""
