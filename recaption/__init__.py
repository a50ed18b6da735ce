"""Recaptioning with multimodal LLMs (vLLM engines in Ray actors) and caption cleaning."""
