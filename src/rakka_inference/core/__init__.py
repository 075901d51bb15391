"""Pure values and errors. This package imports nothing else of rakka_inference."""
