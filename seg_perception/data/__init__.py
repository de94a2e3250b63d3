"""seg_perception.data."""
