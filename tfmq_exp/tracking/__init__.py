"""Run tracking: summary.json, W&B logging conventions, plots and the sweep report."""
