"""What the shared pipeline needs to convert, verify and report text teachers (the data side:
images and text differ in data only): sentence corpora and their held-out split, BERT teachers
and their graph's cost, sentence-embedding quality. Their report is ``archnet.report.text``."""
