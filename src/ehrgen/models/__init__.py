"""Generators: PromptEHR and the baselines, behind one interface."""
