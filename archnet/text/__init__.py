"""What the shared pipeline needs to convert, verify and report text teachers: sentence corpora
and their held-out split, BERT teachers and their graph's cost, embedding quality, the text report."""
