"""Baseline brain-age methods: the OASIS ResBlock regressor, VGG16 features + SVR, ROI ridge."""
