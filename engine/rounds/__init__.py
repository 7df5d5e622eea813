"""Multiple-round training with hard-sample replay (PanGu-pi Pro, arXiv 2402.02791 section 5):
score every batch of round 1 with the frozen model, draw the next round's batches with
probability softmax(loss / T) without replacement, train on them, repeat."""
