"""The study runner: one resumable command from a study config to its report (``run``), with its config
(``config``), the compute plan shown before anything runs (``plan``), progress and ETA (``progress``), the
pre-trainings (``pretraining``), the seeds axis (``seed_axis``), the detect-filter-retrain stage
(``filtering``) and the data-rate estimate the plan uses (``data_rate``)."""
