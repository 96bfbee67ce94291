"""The torch-free base every other part reads: errors, vocabulary, config schemas, paths,
statistics, metric names, progress, and the study record (`hpo.core.record`).

Nothing here imports torch or transformers (a test checks it in a fresh interpreter)."""
