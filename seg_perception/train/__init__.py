"""seg_perception.train."""
