"""What a trial trains on: batches, loss, evaluation and metrics of each task (classification, instruction)."""
