"""The main job: real fine-tuning and pruning comparisons on data that installs offline."""
