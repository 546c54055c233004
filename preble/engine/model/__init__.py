"""Llama-family decoders loaded from Hugging Face folders."""
