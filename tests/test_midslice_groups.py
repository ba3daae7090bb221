"""Mapping predicted ages to the mid-slice example's age groups."""

import numpy as np

from midslice_classifier.from_brain_age import age_to_group
from midslice_classifier.train import CLASS_NAMES


def test_age_to_group_cutpoints():
    ages = np.array([3.5, 6.49, 6.5, 12.0, 14.99, 15.0, 39.0])
    assert [CLASS_NAMES[i] for i in age_to_group(ages)] == [
        "Ages3-5", "Ages3-5", "Ages7-12", "Ages7-12", "Ages7-12", "Adults", "Adults"]
