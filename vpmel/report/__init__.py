"""What the report shows: zero-shot baselines, tables, figures and contact sheets."""
