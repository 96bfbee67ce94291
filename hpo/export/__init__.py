"""Shipping the winner: selection (export rules, Pareto front), test-split measurement, the
bundle writer and loader, llama.cpp's control vector and the model card."""
