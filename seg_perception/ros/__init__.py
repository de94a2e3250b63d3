"""seg_perception.ros."""
