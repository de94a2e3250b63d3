"""seg_perception.eval."""
