"""Voxgate: a real-time voice AI gateway (browser mic -> STT -> LLM -> TTS -> speaker)."""
