"""Client dialects: OpenAI chat completions, responses and embeddings, Anthropic messages.
Each turns request JSON into core values and core results back into its own JSON and event
streams."""
