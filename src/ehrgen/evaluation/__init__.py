"""Evaluation: perplexity (lpl, mpl), privacy, fidelity, utility, and the report."""
