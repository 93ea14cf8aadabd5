"""File formats: MEDS, JSON Lines, MIMIC-III/IV, OMOP CDM, the PromptEHR pickle."""
