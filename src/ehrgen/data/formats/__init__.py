"""File formats: MEDS, JSON Lines, MIMIC-III/IV, OMOP CDM and the reference PromptEHR pickle."""
