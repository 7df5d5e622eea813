"""Parameter inheritance: initialise a small child from a larger parent by keeping its most important
layers, heads, FFN neurons, hidden channels and vocabulary rows (docs/inheritance.md)."""
