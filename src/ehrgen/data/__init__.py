"""Cohorts and the readers and writers that bring them in and out of ehrgen."""
