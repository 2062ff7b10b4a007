"""Text-side inputs of the Transformer path: sentence corpora, tokenization, BERT teachers."""
