"""Copy for recommendations: prompt, PII removal, answer checks, templates, LLM client.

Broker-free; ``streams.copy_pool`` runs it asynchronously beside the stream.
"""
