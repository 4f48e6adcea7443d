"""Evaluation: the HEAR and SUPERB harnesses, results files and their statistics, tables and plots."""
